"""The GPU path: the same code on cuda + NCCL, in a world of one (skipped without CUDA)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

from torchrec_models.config import load_config
from torchrec_models.runtime.distributed import process_group
from torchrec_models.serving.state import gather_full_state_dict
from torchrec_models.train.trainer import Trainer

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.toml")
BASE = ["sharding.device=cuda", "sharding.type=table_wise", "train.log_every=10", "train.eval_every=0"]


@contextmanager
def trainer_on_gpu(*overrides: str, run_dir: Path | None = None) -> Iterator[Trainer]:
    """A Trainer for the tiny preset on cuda:0 (NCCL), torn down afterwards."""
    cfg = load_config(TINY, [*BASE, *overrides])
    with process_group("cuda") as env:
        assert (env.device.type, env.backend) == ("cuda", "nccl")
        trainer = Trainer(cfg, env, run_dir)
        try:
            yield trainer
        finally:
            trainer.close()


def _table_shards(model: torch.nn.Module) -> list[torch.Tensor]:
    out = []
    for key, value in model.state_dict().items():
        if ".embedding_bags." in key and key.endswith(".weight"):
            out += [s.tensor for s in value.local_shards()] if hasattr(value, "local_shards") else [value]
    return out


def _table_kernels(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The FBGEMM modules under each sharded collection (its lookups are a plain list, which
    ``modules()`` does not walk)."""
    return [sub for m in model.modules() for lookup in getattr(m, "_lookups", []) for sub in lookup.modules()]


def _assert_learns(trainer: Trainer, steps: int = 60) -> None:
    trainer.train_steps(0, steps)
    assert all(math.isfinite(x) for x in trainer.losses)
    assert trainer.losses[-1] < trainer.losses[0]


@pytest.mark.parametrize("kernel", ["fused", "fused_uvm_caching"])
@pytest.mark.parametrize("arch", ["dlrm", "dcn"])
def test_train_steps(arch: str, kernel: str) -> None:
    with trainer_on_gpu(f"model.arch={arch}", f"sharding.kernel={kernel}") as trainer:
        assert {t["compute_kernel"] for t in trainer.plan.values()} == {kernel}
        _assert_learns(trainer)
        if kernel == "fused":
            assert all(t.is_cuda for t in _table_shards(trainer.model))


def test_uvm_cache_size_reaches_fbgemm() -> None:
    with trainer_on_gpu("sharding.kernel=fused_uvm_caching", "sharding.cache_load_factor=0.5") as trainer:
        plan = trainer.planned.plan.plan["model.sparse_arch.embedding_bag_collection"]
        assert {ps.cache_params.load_factor for ps in plan.values()} == {0.5}
        caches = [m.lxu_cache_weights for m in _table_kernels(trainer.model) if hasattr(m, "lxu_cache_weights")]
        rows = sum(trainer.cfg.model.table_rows())
        assert caches and 0.4 * rows <= sum(c.size(0) for c in caches) <= 0.6 * rows
        _assert_learns(trainer, 30)


def test_fp16_tables() -> None:
    with trainer_on_gpu("model.embedding_dtype=fp16") as trainer:
        shards = _table_shards(trainer.model)
        assert shards and {t.dtype for t in shards} == {torch.float16}
        assert all(t.abs().max() > 0 for t in shards)  # table_init wrote into the fp16 shards
        _assert_learns(trainer)


@pytest.mark.parametrize("qcomm", ["fp16", "bf16"])
def test_quantized_comms_with_bf16_dense(qcomm: str) -> None:
    with trainer_on_gpu(f"sharding.qcomm={qcomm}", "train.precision=bf16") as trainer:
        _assert_learns(trainer)


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_follows_the_config(tf32: bool) -> None:
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        with trainer_on_gpu(f"train.tf32={str(tf32).lower()}") as trainer:
            assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
            trainer.train_steps(0, 10)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    checkpoint = pytest.importorskip("torchrec_models.train.checkpoint")
    save, load = getattr(checkpoint, "save_checkpoint", None), getattr(checkpoint, "load_checkpoint", None)
    if save is None or load is None:
        pytest.skip("torchrec_models.train.checkpoint has no save_checkpoint / load_checkpoint")
    with trainer_on_gpu(run_dir=tmp_path / "run") as trainer:
        trainer.train_steps(0, 20)
        path = save(trainer, tmp_path / "ckpt", 20, 1)
        saved = gather_full_state_dict(trainer.model)
        trainer.train_steps(20, 40)
        moved = gather_full_state_dict(trainer.model)
        assert any(not torch.equal(saved[k], moved[k]) for k in saved)
        assert load(trainer, Path(path)) == 20
        restored = gather_full_state_dict(trainer.model)
        for key, value in saved.items():
            assert torch.equal(restored[key], value), key
        trainer.train_steps(20, 30)
        assert math.isfinite(trainer.losses[-1])


def test_cli_trains_on_cuda(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, "-m", "torchrec_models", "train", "--config", TINY, "--run-dir", str(run_dir),
         "--set", "sharding.device=cuda", "train.steps=60", "train.eval_every=0", "model.arch=dcn"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["backend"] == "nccl"
    assert summary["examples_per_sec"] > 0 and summary["eval"]["auc"] > 0.5


def test_compiled_dense_part_on_cuda() -> None:
    """train.compile on the GPU path: Inductor kernels for the dense part, the same loss curve as eager."""
    curves = {}
    for compiled in ("false", "true"):
        with trainer_on_gpu(f"train.compile={compiled}", "train.precision=bf16") as trainer:
            _assert_learns(trainer, 30)
            curves[compiled] = trainer.losses
    assert max(abs(a - b) for a, b in zip(curves["false"], curves["true"])) < 0.02


def test_two_tower_trains_and_evaluates_on_cuda(tmp_path: Path) -> None:
    """The retrieval family on cuda + NCCL: in-batch softmax with extra negatives, corpus evaluation."""
    from torchrec_models.retrieval.preprocess import SplitOptions, preprocess_raw
    from torchrec_models.retrieval.synthetic import synthetic_ratings

    data = tmp_path / "ml"
    preprocess_raw(synthetic_ratings(2000, 3000, 20), data, SplitOptions(), "test")
    cfg = load_config(str(ROOT / "configs" / "two_tower_movielens.toml"),
                      ["sharding.device=cuda", f"data.path={data}", "train.epochs=0", "train.steps=60",
                       "model.extra_negatives=64", "train.log_every=10"])
    with process_group("cuda") as env:
        trainer = Trainer(cfg, env, None)
        try:
            assert trainer.model.module.log_q.is_cuda
            _assert_learns(trainer)
            result = trainer.evaluate(60)
        finally:
            trainer.close()
    assert result["examples"] == 2000
    assert result["recall_at_100"] > result["popularity_baseline"]["recall_at_100"]


def test_profile_on_cuda(tmp_path: Path) -> None:
    """train.profile_dir on the GPU path: a trace, and the top ops by device time and by host time."""
    profile = tmp_path / "profile"
    with trainer_on_gpu(f"train.profile_dir={profile}", "train.profile_steps=3", "train.measure_after=2") as trainer:
        trainer.train_steps(0, 10)
    text = (profile / "top_ops_rank0.txt").read_text()
    assert "by device time" in text and "by host time" in text and "Self CUDA" in text
    assert (profile / "rank0.pt.trace.json").stat().st_size > 0
