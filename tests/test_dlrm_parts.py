"""The DLRM parts replaced for speed compute what torchrec's own compute."""
from __future__ import annotations

import pytest
import torch
from torchrec.models.dlrm import DLRM, InteractionArch, SparseArch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from conftest import TINY
from torchrec_models.config import load_config
from torchrec_models.data.source import make_source
from torchrec_models.models import build_model
from torchrec_models.models.interaction import SymmetricInteractionArch
from torchrec_models.models.sparse_stack import StackedSparseArch, stack_pooled

B, F, D = 48, 6, 8


def _interaction_outputs(module, autocast: bool):
    torch.manual_seed(0)
    dense = torch.randn(B, D, requires_grad=True)
    sparse = torch.randn(B, F, D, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = module(torch.relu(dense * 1.5), sparse)
    (out.float() * torch.linspace(-1, 1, out.size(1))).sum().backward()
    return out.detach(), dense.grad, sparse.grad


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_symmetric_interaction_matches_torchrec(autocast):
    want = _interaction_outputs(InteractionArch(F), autocast)
    got = _interaction_outputs(SymmetricInteractionArch(F), autocast)
    assert got[0].dtype == want[0].dtype
    assert torch.equal(got[0], want[0])  # same products, same order: same values
    tol = dict(atol=0.1, rtol=0.02) if autocast else dict(atol=1e-5, rtol=1e-5)
    for g, w in zip(got[1:], want[1:]):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, w, **tol)


def _collection():
    tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=D, num_embeddings=20, feature_names=[f"f{i}"])
              for i in range(F)]
    torch.manual_seed(0)
    return EmbeddingBagCollection(tables=tables)


def test_stacked_sparse_arch_matches_torchrec():
    ebc = _collection()
    lengths = torch.randint(0, 3, (F * B,))
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=[f"f{i}" for i in range(F)], values=torch.randint(0, 20, (int(lengths.sum()),)), lengths=lengths)
    want, got = SparseArch(ebc)(kjt), StackedSparseArch(ebc)(kjt)
    assert torch.equal(got, want)


def test_stacking_follows_the_names_when_the_keys_are_in_another_order():
    names = [f"f{i}" for i in range(F)]
    values = torch.randn(B, F * D)
    pooled = KeyedTensor(keys=names[::-1], length_per_key=[D] * F, values=values)
    want = values.view(B, F, D).flip(1)
    assert torch.equal(stack_pooled(pooled, names, F, D), want)


def test_the_dlrm_is_built_with_both_parts():
    model = build_model(load_config(TINY).model, torch.device("cpu"), seed=0).model
    assert isinstance(model.inter_arch, SymmetricInteractionArch)
    assert isinstance(model.sparse_arch, StackedSparseArch)


@pytest.mark.parametrize("arch", ["dlrm", "dcn", "projection"])
def test_lookups_start_before_the_bottom_mlp_and_logits_are_torchrecs(arch):
    cfg = load_config(TINY, [f"model.arch={arch}"])
    model = build_model(cfg.model, torch.device("cpu"), seed=0, table_device="cpu").model
    batch = next(make_source(cfg).train_batches(0, 1, 8, range(1)))
    order = []
    model.sparse_arch.embedding_bag_collection.register_forward_pre_hook(lambda *_: order.append("lookup"))
    model.dense_arch.register_forward_pre_hook(lambda *_: order.append("bottom_mlp"))
    got = model(batch.dense_features, batch.sparse_features)
    assert order == ["lookup", "bottom_mlp"]
    assert torch.equal(got, DLRM.forward(model, batch.dense_features, batch.sparse_features))
