"""The pooled embeddings' all-to-all over shared memory: torchrec's values and gradients bit for
bit (even and uneven batches and widths, fp32 and bf16, two and three ranks), installed in place
of torchrec's in a sharded model, and a whole training unchanged by it."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torchrec.distributed import comm_ops
from torchrec.distributed.dist_data import PooledEmbeddingsAllToAll
from torchrec.distributed.sharding.tw_sharding import TwPooledEmbeddingDist

from conftest import TINY, read_jsonl, run_cli
from torchrec_models.config import ConfigError, load_config
from torchrec_models.runtime import local_group, pooled_all_to_all
from torchrec_models.runtime.distributed import process_group
from torchrec_models.runtime.launcher import launch_local


def _round_trip(a2a: nn.Module, pooled: torch.Tensor, grad_seed: int, batches: list[int] | None):
    """(result, the pooled input's gradient) of one all-to-all and its backward."""
    pooled = pooled.clone().requires_grad_(True)
    result = a2a(pooled, batches).wait() if batches else a2a(pooled).wait()
    grad = torch.randn(result.shape, generator=torch.Generator().manual_seed(grad_seed)).to(result.dtype)
    result.backward(grad)
    return result.detach(), pooled.grad


def _compare(widths: list[int], batches: list[int] | None, dtype: torch.dtype, divide: bool) -> dict:
    with process_group("cpu") as env:
        group = local_group.new_local_group()
        rank, world = env.rank, env.world_size
        global_batch = sum(batches) if batches else 6 * world
        gen = torch.Generator().manual_seed(100 + rank)
        pooled = torch.randn(global_batch, widths[rank], generator=gen).to(dtype)
        comm_ops.set_gradient_division(divide)
        try:
            theirs = _round_trip(PooledEmbeddingsAllToAll(group, widths), pooled, 7 + rank, batches)
            ours = _round_trip(pooled_all_to_all.ShmPooledAllToAll(group, widths), pooled, 7 + rank, batches)
        finally:
            comm_ops.set_gradient_division(True)
        return {"result": torch.equal(ours[0], theirs[0]), "grad": torch.equal(ours[1], theirs[1]),
                "shape": list(ours[0].shape), "grad_nonzero": bool(ours[1].abs().sum() > 0)}


@pytest.mark.parametrize("world,widths,batches,dtype,divide", [
    (2, [16, 16], None, torch.float32, True),
    (2, [24, 8], [5, 9], torch.bfloat16, True),
    (3, [8, 0, 24], [4, 1, 6], torch.float32, True),
    (3, [16, 8, 8], None, torch.bfloat16, False),
])
def test_same_values_and_gradients_as_torchrec(world, widths, batches, dtype, divide) -> None:
    ranks = launch_local(_compare, (widths, batches, dtype, divide), world)
    for rank, r in ranks.items():
        assert r["result"] and r["grad"], f"rank {rank} differs from torchrec's all-to-all"
        assert r["shape"] == [batches[rank] if batches else 6, sum(widths)]
        assert r["grad_nonzero"] or widths[rank] == 0


def _requests_left(train: bool) -> int:
    """How many exchanges are still alive after their step, with the cyclic collector off (a
    reference cycle would keep each one's tensors until a collection)."""
    import gc
    import weakref

    with process_group("cpu") as env:
        group = local_group.new_local_group()
        a2a = pooled_all_to_all.ShmPooledAllToAll(group, [8] * env.world_size)
        alive = []
        gc.disable()
        try:
            for _ in range(3):
                pooled = torch.randn(4 * env.world_size, 8, requires_grad=train)
                awaitable = a2a(pooled)
                alive.append(weakref.ref(awaitable._tensor_awaitable))
                result = awaitable.wait()
                if train:
                    result.sum().backward()
                del pooled, awaitable, result
            return sum(ref() is not None for ref in alive)
        finally:
            gc.enable()


@pytest.mark.parametrize("train", [True, False])
def test_a_finished_exchange_is_freed_at_once(train: bool) -> None:
    assert all(left == 0 for left in launch_local(_requests_left, (train,), 2).values())


class _Holder(nn.Module):
    def __init__(self, dist_module: nn.Module) -> None:
        super().__init__()
        self.output_dist = dist_module


def _install(choice: str) -> dict:
    with process_group("cpu") as env:
        shm = local_group.new_local_group()
        over_shm = _Holder(TwPooledEmbeddingDist(shm, [8, 8], [[8], [8]]))
        over_gloo = _Holder(TwPooledEmbeddingDist(torch.distributed.group.WORLD, [8, 8], [[8], [8]]))
        changed = pooled_all_to_all.install(nn.ModuleList([over_shm, over_gloo]), choice)
        pooled = torch.full((4, 8), float(env.rank))
        result = over_shm.output_dist(pooled).wait()  # the dist module's own call path
        return {"changed": changed, "shm": type(over_shm.output_dist._dist).__name__,
                "variable": type(over_shm.output_dist._variable_dist).__name__,
                "gloo": over_gloo.output_dist._dist is None, "result": result.tolist()}


def test_installed_only_over_shared_memory() -> None:
    for rank, r in launch_local(_install, ("auto",), 2).items():
        assert r["changed"] == 1 and r["shm"] == "ShmPooledAllToAll" and r["gloo"]
        assert r["variable"] == "VariableBatchPooledEmbeddingsAllToAll"  # torchrec's, for variable batches
        assert r["result"] == [[0.0] * 8 + [1.0] * 8] * 2  # rank 0's columns, then rank 1's
    for r in launch_local(_install, ("torchrec",), 2).values():
        assert r["changed"] == 0 and r["shm"] == "PooledEmbeddingsAllToAll"


def test_a_column_wise_training_is_unchanged(tmp_path) -> None:
    """Column-wise tables (torchrec's output dist with its permuting callbacks); table-wise ones
    are compared with gloo's all-to-all in test_local_group."""
    losses = {}
    for choice in ("auto", "torchrec"):
        run_dir = tmp_path / choice
        run_cli("train", "--config", TINY, "--nproc-per-node", "2", "--run-dir", str(run_dir),
                "--set", "train.steps=40", "--set", "train.eval_every=0", "--set", "train.log_every=10",
                "--set", "sharding.type=column_wise", "--set", f"sharding.cpu_pooled_all_to_all={choice}")
        losses[choice] = [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
        collectives = json.loads((run_dir / "summary.json").read_text())["collectives"]
        assert collectives == {"group": local_group.BACKEND,
                               "pooled_all_to_all": "shm_direct" if choice == "auto" else "torchrec"}
    assert len(losses["auto"]) == 4 and losses["auto"] == losses["torchrec"]


def test_bad_choice_names_the_key() -> None:
    with pytest.raises(ConfigError, match="sharding.cpu_pooled_all_to_all"):
        load_config(TINY, ["sharding.cpu_pooled_all_to_all=direct"])
