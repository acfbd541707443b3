"""Two configurations of one row timed in turn in the same processes: ``python -m benchmarks ab``.

Separate runs of a row minutes apart can differ by 2x on a shared machine, which hides any lever
worth less than that. Here each rank builds both models (A: the row as it is; B: the row with extra
overrides) and alternates windows of steps between them, A then B, then B then A, so both see the
same machine state. Each pair of windows gives one ratio B/A; the lever's figure is the median
ratio with a distribution-free 90% interval for it (order statistics of the pairs), which narrows
as pairs are added even when single pairs scatter by +-10%.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from benchmarks.record import percentile
from benchmarks.rows import Row
from torchrec_models import runinfo
from torchrec_models.config import Config, ConfigError, load_config
from torchrec_models.runtime.quiet import quiet_library_noise

# settings that change the process for good once applied: they cannot differ between A and B
PROCESS_WIDE = ("train.cpu_keep_freed_memory",)


@dataclass(frozen=True)
class Plan:
    """``pairs`` pairs of ``window``-step windows after ``warmup`` steps of each arm."""

    pairs: int = 12
    window: int = 5
    warmup: int = 5

    @property
    def steps(self) -> int:
        return self.warmup + self.pairs * self.window


def arm_configs(row: Row, b_overrides: list[str], plan: Plan) -> tuple[Config, Config]:
    """Arm A is the row; arm B the row with ``b_overrides``. Raises ConfigError for a bad or
    process-wide key."""
    steps = [f"train.steps={plan.steps}"]
    a = load_config(row.config, [*row.overrides, *steps])
    b = load_config(row.config, [*row.overrides, *b_overrides, *steps])
    for key in PROCESS_WIDE:
        section, name = key.split(".")
        if getattr(getattr(a, section), name) != getattr(getattr(b, section), name):
            raise ConfigError(key, "applies to the whole process; it cannot differ between the two arms")
    if a.sharding.device != b.sharding.device:
        raise ConfigError("sharding.device", "must be the same in both arms")
    return a, b


class Arm:
    """One model of the pair, stepped a window at a time on its own stream of batches."""

    def __init__(self, cfg: Config, env) -> None:
        from torchrec_models.train.trainer import Trainer

        self.cfg, self.env = cfg, env
        self.trainer = Trainer(cfg, env, run_dir=None)
        self.batches: Iterator = self.trainer.train_batches(range(cfg.train.steps))
        self.step = 0

    def run(self, steps: int) -> float:
        """Runs ``steps`` steps with this arm's process settings in place; returns examples/s."""
        from torchrec_models.sharding import sharded_model

        sharded_model.apply_process_settings(self.cfg, self.env)
        _sync(self.env.device)
        if self.trainer.balancer is not None:
            self.trainer.balancer.restart()  # the other arm's window is not this arm's pace
        start = time.perf_counter()
        for _ in range(steps):
            self.trainer.run_step(self.step, self.batches)
            self.step += 1
        _sync(self.env.device)
        return self.trainer.global_batch * steps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ab_worker(row: Row, b_overrides: list[str], plan: Plan) -> dict[str, Any]:
    """Each rank's examples/s per window of each arm, in pair order."""
    quiet_library_noise()
    from torchrec_models.runtime.distributed import process_group

    cfg_a, cfg_b = arm_configs(row, b_overrides, plan)
    with process_group(cfg_a.sharding.device) as env:
        arms = (Arm(cfg_a, env), Arm(cfg_b, env))
        for arm in arms:
            arm.run(plan.warmup)
        rates: tuple[list[float], list[float]] = ([], [])
        for pair in range(plan.pairs):
            for i in ((0, 1) if pair % 2 == 0 else (1, 0)):
                rates[i].append(arms[i].run(plan.window))
        for arm in arms:
            arm.trainer.close()
        return {"rank": env.rank, "a": rates[0], "b": rates[1], "threads": torch.get_num_threads()}


def _binomial_below(k: int, n: int) -> float:
    """P(X < k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k)) / 2 ** n


def median_interval(values: list[float], level: float = 0.9) -> tuple[float, float]:
    """A distribution-free interval holding the median ratio with probability >= ``level``: the
    k-th smallest and k-th largest values, k the largest with P(Binomial(n, 1/2) < k) <= (1 - level) / 2.
    Too few values for that level give the whole range."""
    ordered, n = sorted(values), len(values)
    k = 1
    while k < n // 2 and _binomial_below(k + 1, n) <= (1 - level) / 2:
        k += 1
    return ordered[k - 1], ordered[n - k]


def summarize(a: list[float], b: list[float]) -> dict[str, Any]:
    """The per-pair ratios B/A: their median, a 90% interval for it, p10-p90, how many pairs B won."""
    ratios = [rb / ra for ra, rb in zip(a, b)]
    low, high = median_interval(ratios)
    return {
        "a_examples_per_sec": statistics.median(a), "b_examples_per_sec": statistics.median(b),
        "ratio_median": statistics.median(ratios), "ratio_median_90ci": [low, high],
        "ratio_p10": percentile(ratios, 0.1), "ratio_p90": percentile(ratios, 0.9),
        "b_faster_pairs": sum(r > 1 for r in ratios), "pairs": len(ratios), "ratios": ratios,
    }


def verdict(summary: dict[str, Any]) -> str:
    """'B faster' / 'B slower' when the 90% interval of the median ratio excludes 1.0, else 'within noise'."""
    low, high = summary["ratio_median_90ci"]
    if low > 1.0:
        return "B faster"
    if high < 1.0:
        return "B slower"
    return "within noise"


def run_ab(row: Row, b_overrides: list[str], plan: Plan, out_dir: Path | None) -> dict[str, Any]:
    """Launches the row's ranks once, both arms in each; rank 0's windows make the record."""
    from torchrec_models.runtime.launcher import launch_local

    arm_configs(row, b_overrides, plan)  # a bad key fails here, before any rank starts
    ranks = launch_local(ab_worker, (row, b_overrides, plan), row.world_size)
    record = {
        "row": row.name, "world_size": row.world_size, "a_overrides": list(row.overrides),
        "b_overrides": list(b_overrides), "plan": plan.__dict__, "threads": ranks[0]["threads"],
        "a": ranks[0]["a"], "b": ranks[0]["b"], **summarize(ranks[0]["a"], ranks[0]["b"]),
    }
    return finish_record(record, out_dir, "ab.jsonl")


def finish_record(record: dict[str, Any], out_dir: Path | None, filename: str) -> dict[str, Any]:
    """Adds the machine, the sha and the verdict; appends the record to OUT_DIR/FILENAME if given."""
    record = {**record, "hardware": runinfo.hardware(), "git_sha": runinfo.git_sha()}
    record["verdict"] = verdict(record)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / filename).open("a") as sink:
            sink.write(json.dumps(record) + "\n")
    return record


def ratio_text(record: dict[str, Any]) -> str:
    """``A 1,000 ex/s, B 900 ex/s; B/A median 0.900 (90% interval ...``: the figures of a summary."""
    ci = record["ratio_median_90ci"]
    return (f"A {record['a_examples_per_sec']:,.0f} ex/s, B {record['b_examples_per_sec']:,.0f} ex/s; "
            f"B/A median {record['ratio_median']:.3f} (90% interval {ci[0]:.3f}-{ci[1]:.3f}")


def format_record(record: dict[str, Any]) -> str:
    return (f"{record['row']} B = {' '.join(record['b_overrides']) or '(A again)'}: {ratio_text(record)}; "
            f"pairs p10-p90 {record['ratio_p10']:.3f}-{record['ratio_p90']:.3f}), "
            f"B faster in {record['b_faster_pairs']}/{record['pairs']} pairs: {record['verdict']}")
