"""The shared-memory group for CPU ranks on one host: same results as gloo, collectives left in
flight complete in order, everything it does not carry itself still works, nothing left behind."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist

from conftest import TINY, read_jsonl, run_cli
from torchrec_models.config import ConfigError
from torchrec_models.runtime import host_memory, local_group, shm_transport
from torchrec_models.runtime.distributed import process_group
from torchrec_models.runtime.launcher import launch_local


def _uneven_all_to_all(group: dist.ProcessGroup, rank: int, world: int, dtype: torch.dtype, seed: int):
    """Three all-to-alls with uneven (and some empty) splits, all issued before any wait."""
    gen = torch.Generator().manual_seed(seed)
    splits = torch.randint(0, 4, (world, world), generator=gen).tolist()  # splits[src][dst], rows
    posted = []
    for k in range(3):
        send = splits[rank]
        receive = [splits[src][rank] for src in range(world)]
        data = (torch.arange(sum(send) * 5).reshape(-1, 5) + 1000 * rank + 100 * k).to(dtype)
        out = torch.full((sum(receive), 5), -1).to(dtype)
        posted.append((out, dist.all_to_all_single(out, data, receive, send, group=group, async_op=True)))
    for out, work in posted:
        work.wait()
    return [out for out, _ in posted]


def _collectives() -> dict:
    with process_group("cpu") as env:
        shm = local_group.new_local_group()
        gloo = dist.group.WORLD
        rank, world = env.rank, env.world_size
        chosen = local_group.training_group("auto", "cpu", world, world)  # what a sharded model gets
        result = {"rank": rank, "backend": shm.getBackendName(), "auto": chosen.getBackendName()}
        for dtype in (torch.float32, torch.bfloat16, torch.int64):
            got = _uneven_all_to_all(shm, rank, world, dtype, seed=7)
            want = _uneven_all_to_all(gloo, rank, world, dtype, seed=7)
            result[f"all_to_all_{dtype}"] = all(torch.equal(g, w) for g, w in zip(got, want))
        grads = torch.randn(100_003, generator=torch.Generator().manual_seed(rank))
        by_shm, by_gloo = grads.clone(), grads.clone()
        dist.all_reduce(by_shm, group=shm)
        dist.all_reduce(by_gloo, group=gloo)
        result["sum"], result["sum_gloo"] = by_shm, by_gloo
        top = torch.tensor([float(rank)])
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=shm)  # not carried by shm: gloo's
        gathered = torch.empty(world * 2)
        dist.all_gather_into_tensor(gathered, torch.full((2,), float(rank)), group=shm)
        scattered = torch.empty(1)
        dist.reduce_scatter_tensor(scattered, torch.arange(float(world)) * (rank + 1), group=shm)
        result.update(max=top.item(), gathered=gathered.tolist(), scattered=scattered.item())
        for dtype in (torch.float32, torch.bfloat16):  # what row-wise tables exchange, fwd and bwd
            part = torch.randn(33, 5, generator=torch.Generator().manual_seed(rank)).to(dtype)
            by = {name: (torch.empty(world * 33, 5, dtype=dtype), torch.empty(33, 5, dtype=dtype))
                  for name in ("shm", "gloo")}
            for name, group in (("shm", shm), ("gloo", gloo)):
                gathered_rows, summed = by[name]
                dist.all_gather_into_tensor(gathered_rows, part, group=group)
                work = dist.reduce_scatter_tensor(summed, gathered_rows * (rank + 1), group=group, async_op=True)
                work.wait()
            result[f"gather_{dtype}"] = torch.equal(by["shm"][0], by["gloo"][0])
            result[f"scatter_{dtype}"] = by["shm"][1], by["gloo"][1]
        dist.barrier(group=shm)
        result["shm_entries"] = sorted(n for n in os.listdir("/dev/shm") if n.startswith(shm_transport.DIR_PREFIX))
        return result


@pytest.mark.parametrize("world", [2, 3])
def test_matches_gloo_and_leaves_nothing_behind(world: int) -> None:
    ranks = launch_local(_collectives, (), world)
    for r in ranks.values():
        assert r["backend"] == r["auto"] == local_group.BACKEND
        assert r["all_to_all_torch.float32"] and r["all_to_all_torch.bfloat16"] and r["all_to_all_torch.int64"]
        assert r["max"] == world - 1
        assert r["gathered"] == [float(i) for i in range(world) for _ in range(2)]
        assert r["scattered"] == sum(r["rank"] * (k + 1) for k in range(world))
        assert r["shm_entries"] == []  # names removed once every rank had them open
        assert torch.equal(r["sum"], ranks[0]["sum"])  # every rank holds the same bits
        for dtype in (torch.float32, torch.bfloat16):
            assert r[f"gather_{dtype}"]
            ours, gloos = r[f"scatter_{dtype}"]
            if world == 2:  # a + b: exactly what gloo computes
                assert torch.equal(ours, gloos)
            else:
                torch.testing.assert_close(ours, gloos, rtol=0.02, atol=0.05)
    if world == 2:  # a + b: exactly what gloo computes
        assert torch.equal(ranks[0]["sum"], ranks[0]["sum_gloo"])
    else:
        torch.testing.assert_close(ranks[0]["sum"], ranks[0]["sum_gloo"])


def _all_to_all_rss_growth() -> float:
    """MB of resident memory gained over 20 all-to-alls of fresh 8 MB tensors, with the cyclic
    garbage collector off (what a collective holds must be freed when its tensors are dropped).

    glibc's mmap threshold is pinned at 1 MiB: each tensor is mapped when made and unmapped when
    freed, so RSS shows what is still referenced rather than what malloc chose to keep."""
    import ctypes
    import ctypes.util
    import gc

    with process_group("cpu") as env:
        shm = local_group.new_local_group()
        rows = (8 << 20) // 4 // 64
        assert ctypes.CDLL(ctypes.util.find_library("c")).mallopt(host_memory.M_MMAP_THRESHOLD, 1 << 20)
        gc.disable()
        try:
            before = 0.0
            for i in range(24):
                if i == 4:  # the slots and the allocator's thresholds have grown to this size
                    before = _rss_mb()
                data = torch.full((rows, 64), float(env.rank))
                out = torch.empty_like(data)
                dist.all_to_all_single(out, data, group=shm, async_op=True).wait()
                del data, out
            growth = _rss_mb() - before
        finally:
            gc.enable()
        dist.barrier(group=shm)
        return growth


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_finished_all_to_all_holds_no_memory() -> None:
    for growth in launch_local(_all_to_all_rss_growth, (), 2).values():
        assert growth < 8, f"{growth:.0f} MB still held after 20 all-to-alls of 8 MB"


def test_training_group_choice() -> None:
    assert local_group.training_group("shm", "cuda", 2, 2) is dist.group.WORLD
    assert local_group.training_group("auto", "cpu", 1, 1) is dist.group.WORLD
    assert local_group.training_group("gloo", "cpu", 2, 2) is dist.group.WORLD
    assert local_group.training_group("auto", "cpu", 4, 2) is dist.group.WORLD  # two hosts: gloo
    with pytest.raises(ConfigError, match="sharding.cpu_transport"):
        local_group.training_group("shm", "cpu", 4, 2)


def test_a_small_dev_shm_sends_the_slots_to_the_temp_directory(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(shm_transport, "MIN_SHM_FREE", 1 << 62)
    monkeypatch.setattr(shm_transport.tempfile, "tempdir", str(tmp_path))
    path = shm_transport.make_shared_dir(3)
    try:
        assert os.path.dirname(path) == str(tmp_path)
        assert len([n for n in os.listdir(path) if n.startswith("bell_")]) == 6
    finally:
        shm_transport.remove_shared_dir(path)
    assert not os.path.exists(path)


@pytest.mark.parametrize("sharding", ["planner", "row_wise"])  # all-to-alls; reduce-scatters and all-gathers
def test_two_ranks_train_the_same_bits_over_shared_memory_as_over_gloo(tmp_path, sharding: str) -> None:
    runs = {}
    forced = [] if sharding == "planner" else [f"sharding.type={sharding}"]
    for transport in ("shm", "gloo"):
        run_dir = tmp_path / transport
        out = run_cli("train", "--config", TINY, "--nproc-per-node", "2", "--run-dir", str(run_dir), "--set",
                      "train.steps=60", "train.eval_every=30", "train.log_every=10", "train.precision=bf16",
                      f"sharding.cpu_transport={transport}", *forced)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[transport] = read_jsonl(run_dir / "metrics.jsonl")
        assert json.loads((run_dir / "config.json").read_text())["sharding"]["cpu_transport"] == transport
        pooled = "none" if sharding == "row_wise" else "shm_direct" if transport == "shm" else "torchrec"
        assert json.loads((run_dir / "summary.json").read_text())["collectives"] == {
            "group": local_group.BACKEND if transport == "shm" else "gloo", "pooled_all_to_all": pooled}
    timing = {"examples_per_sec", "elapsed_s"}
    curves = {t: [{k: v for k, v in r.items() if k not in timing} for r in rows] for t, rows in runs.items()}
    assert [r["kind"] for r in curves["shm"]].count("eval") == 2 and len(curves["shm"]) >= 8
    assert curves["shm"] == curves["gloo"]  # losses, AUC, NE: the same bits
