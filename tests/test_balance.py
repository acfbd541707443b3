"""Pace balancing (``sharding.cpu_balance``): shares that add up to the global batch, batches that
are its rows whatever the split, a loss whose gradient is the global mean, shares that follow the
faster rank, and a two-rank run that trains as the equal split does."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import TINY, read_jsonl, run_cli
from torchrec_models.config import ConfigError, load_config
from torchrec_models.data.source import SyntheticSource
from torchrec_models.models.dlrm import build_ranker
from torchrec_models.train.balance import PaceBalancer, ShareSchedule, balanced_batches, split_rows


def test_split_rows_follows_the_weights_in_granules_within_bounds() -> None:
    assert split_rows(4096, [1.0, 1.0], 32, 1024, 3072) == (2048, 2048)
    faster = split_rows(4096, [1.0, 0.8], 32, 1024, 3072)
    assert sum(faster) == 4096 and faster[0] > faster[1] and all(s % 32 == 0 for s in faster)
    assert abs(faster[0] - 4096 / 1.8) <= 32
    assert split_rows(4096, [1.0, 0.0], 32, 1024, 3072) == (3072, 1024)  # held at the bounds
    odd = split_rows(200, [1.0, 0.7, 0.2], 32, 33, 100)
    assert sum(odd) == 200 and all(33 <= s <= 100 for s in odd)
    with pytest.raises(ValueError):
        split_rows(400, [1.0, 1.0], 32, 0, 100)


def test_schedule_spans_tile_the_global_batch_and_change_only_unmade_steps() -> None:
    schedule = ShareSchedule(world_size=3, batch_size=100)
    schedule.change(5, (120, 90, 90))
    for step in (0, 4, 5, 9):
        spans = [schedule.span(step, r) for r in range(3)]
        assert spans[0][0] == 0 and spans[-1][1] == 300
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert schedule.shares(4) == (100, 100, 100) and schedule.shares(5) == (120, 90, 90)
    assert schedule.rows_trained(0, range(3, 7)) == 100 + 100 + 120 + 120
    schedule.made_through = 6
    with pytest.raises(RuntimeError, match="after its batch was made"):
        schedule.change(6, (100, 100, 100))
    with pytest.raises(ValueError, match="do not add up"):
        schedule.change(7, (100, 100, 99))


def test_uneven_shares_are_the_rows_of_the_one_process_batch() -> None:
    cfg = load_config(TINY, [])
    source = SyntheticSource(cfg)
    schedule = ShareSchedule(world_size=2, batch_size=64)
    schedule.change(1, (32, 96))
    parts = [list(balanced_batches(source, schedule, rank, range(3))) for rank in range(2)]
    assert schedule.made_through == 2
    assert [p.labels.numel() for p in parts[0]] == [64, 32, 32]
    for step in range(3):
        whole = source.data.batch(step, 0, 128)
        for field in ("dense_features", "labels"):
            joined = torch.cat([getattr(parts[r][step], field) for r in range(2)])
            assert torch.equal(joined, getattr(whole, field))
        for key in whole.sparse_features.keys():
            joined = torch.cat([parts[r][step].sparse_features[key].values() for r in range(2)])
            assert torch.equal(joined, whole.sparse_features[key].values())


def test_criteo_spans_are_the_rows_of_the_equal_slices() -> None:
    """Criteo's row order (shuffled, wrapping past the end of the data) split at any row."""
    from torchrec_models.data.criteo_reader import RowOrder

    order = RowOrder(first=10, count=1000, shuffle_seed=3)
    for step in (0, 3, 7):  # step 3 wraps into a second pass
        equal = np.concatenate([order.rows(step, r, 2, 128) for r in range(2)])
        uneven = np.concatenate([order.span(step, 256, 0, 100), order.span(step, 256, 100, 256)])
        assert np.array_equal(uneven, equal)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_scaled_losses_of_uneven_shares_give_the_global_mean_gradient() -> None:
    """What DDP averages over two ranks with 48 and 144 of 192 rows equals one process's mean."""
    cfg = load_config(TINY, [])
    model = build_ranker(cfg.model, torch.device("cpu"), 0, None, "cpu")
    data = SyntheticSource(cfg).data
    model(data.batch(0, 0, 192))[0].backward()
    whole = _grads(model)
    model.zero_grad()
    model.nominal_rows = 96
    (model(data.batch(0, 0, 48))[0] / 2).backward()
    (model(data.batch(0, 48, 192))[0] / 2).backward()
    split = _grads(model)
    assert whole.keys() == split.keys() and whole
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-5, atol=1e-7, msg=name)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_balancer_moves_rows_to_the_faster_rank_from_the_next_unmade_step() -> None:
    """Rank 0 of two trains 2,048 rows in 0.1 s of work; rank 1 reports half that pace."""
    schedule, clock = ShareSchedule(world_size=2, batch_size=2048), _Clock()
    blocked = [0.0]

    def exchange(report: torch.Tensor) -> None:  # rank 1's numbers added, as the all-reduce would
        report[1] = report[0] / 2
        report[3] = report[2]

    balancer = PaceBalancer(schedule, rank=0, every=4, exchange=exchange, blocked_seconds=lambda: blocked[0],
                            clock=clock)
    for step in range(4):
        balancer.before_step(step)
        schedule.made_through = step + 2  # the pipeline has made two batches ahead
        clock.now += 0.15
        blocked[0] += 0.05  # a third of each step spent waiting: 0.1 s of work
    assert balancer.updates == 0
    balancer.before_step(4)
    assert balancer.updates == 1
    assert schedule.made_through == 5 and schedule.shares(5) == (2048, 2048)  # made already: unchanged
    shares = schedule.shares(6)
    assert sum(shares) == 4096 and abs(shares[0] - 4096 * 2 / 3) <= 32
    for step in range(4, 8):  # the same paces again: the split is where they want it
        balancer.before_step(step)
        schedule.made_through = step + 2
        clock.now += 0.15
        blocked[0] += 0.05
    balancer.before_step(8)
    assert balancer.updates == 1 and schedule.shares(10) == shares
    balancer.restart()
    clock.now += 100.0  # time outside training: not counted once the window restarts
    balancer.before_step(12)
    assert balancer.updates == 1


def test_balance_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="sharding.cpu_balance_every"):
        load_config(TINY, ["sharding.cpu_balance_every=0"])
    with pytest.raises(ConfigError, match="sharding.cpu_balance"):
        load_config(TINY, ["sharding.cpu_balance=true", "sharding.cpu_transport=gloo"])


def test_two_balanced_ranks_train_like_equal_shares(tmp_path) -> None:
    runs = {}
    for balance in ("true", "false"):
        run_dir = tmp_path / balance
        out = run_cli("train", "--config", TINY, "--nproc-per-node", "2", "--run-dir", str(run_dir), "--set",
                      "train.steps=80", "train.eval_every=40", "train.log_every=10",
                      f"sharding.cpu_balance={balance}", "sharding.cpu_balance_every=2")
        assert out.returncode == 0, out.stderr[-3000:]
        runs[balance] = (read_jsonl(run_dir / "metrics.jsonl"), json.loads((run_dir / "summary.json").read_text()))
    summary = runs["true"][1]
    assert runs["false"][1]["cpu_balance"] is None
    assert summary["cpu_balance"]["updates"] <= 2 * 19  # at most every other step of [0, 40) and [40, 80)
    assert sum(summary["cpu_balance"]["last_shares"]) == 512
    cpus = summary["cpu_balance"]["cpus"]
    if len(os.sched_getaffinity(0)) >= 2:
        assert cpus and len(cpus) == len(os.sched_getaffinity(0)) // 2
    losses = {b: [r["loss"] for r in rows if r["kind"] == "train"] for b, (rows, _) in runs.items()}
    assert len(losses["true"]) == 8
    assert max(abs(a - b) for a, b in zip(losses["true"], losses["false"])) < 0.02
    assert abs(summary["eval"]["auc"] - runs["false"][1]["eval"]["auc"]) < 0.01
