"""Each architecture trains unsharded, and bf16 autocast covers the dense part only."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY
from torchrec_models.config import load_config
from torchrec_models.data.synthetic import SyntheticData, SyntheticSpec
from torchrec_models.models import build_model


def _model_and_batch(*overrides: str, autocast=None):
    cfg = load_config(TINY, list(overrides))
    model = build_model(cfg.model, torch.device("cpu"), 0, autocast, table_device="cpu")
    batch = SyntheticData(SyntheticSpec.from_config(cfg)).batch(0, 0, 32)
    return model, batch


@pytest.mark.parametrize("arch", ["dlrm", "dcn", "projection"])
def test_forward_backward(arch: str) -> None:
    model, batch = _model_and_batch(f"model.arch={arch}")
    loss, (_, logits, labels) = model(batch)
    loss.backward()
    assert logits.shape == (32,) and torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_same_seed_same_dense_weights() -> None:
    a, _ = _model_and_batch()
    b, _ = _model_and_batch()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        if "embedding_bags" not in name:
            assert torch.equal(pa, pb), name


def test_bf16_autocast_on_dense_part_only() -> None:
    model, batch = _model_and_batch(autocast=torch.bfloat16)
    seen: dict[str, torch.dtype] = {}

    def record(name):
        def hook(module, inputs, output) -> None:
            seen[name] = output.dtype if isinstance(output, torch.Tensor) else output.values().dtype
        return hook

    model.model.over_arch.register_forward_hook(record("over"))
    model.model.sparse_arch.embedding_bag_collection.register_forward_hook(record("sparse"))
    loss, (_, logits, _) = model(batch)
    assert seen == {"over": torch.bfloat16, "sparse": torch.float32}
    assert loss.dtype == torch.float32 and logits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
