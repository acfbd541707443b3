"""Uneven shares of each global batch for CPU ranks that run at different paces.

Ranks in lockstep all move at the slowest one's pace. With ``sharding.cpu_balance`` every rank
reports, every ``sharding.cpu_balance_every`` steps, how many rows it trained per second of its own
work (wall time less the time it waited for peers in the shared-memory transport); the steps not
yet made are then split in proportion, in whole granules, so the ranks finish their shares
together. A step's global batch is the same rows whatever the split, and each rank's loss is
scaled (``RankingModel.nominal_rows``) so the gradient stays the global batch's mean. Each local
rank is pinned to its own cores, so its pace is theirs from one window to the next.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

from torchrec_models.config import ConfigError
from torchrec_models.runtime import local_group
from torchrec_models.runtime.environment import pin_local_rank

GRANULE = 32  # shares move in whole multiples of this many rows
BOUNDS = (0.5, 1.5)  # a share stays within these fractions of the equal share
KEPT_CHANGES = 64  # past splits remembered: more than any open window spans
SMOOTHING = 0.5  # weight of the newest window in each rank's pace


def split_rows(total: int, weights: list[float], granule: int, low: int, high: int) -> tuple[int, ...]:
    """``total`` rows in proportion to ``weights``, each share within [low, high] and a multiple of
    ``granule`` (but for one remainder when ``total`` is not); needs low * n <= total <= high * n."""
    n = len(weights)
    whole = sum(weights)
    ideal = [total * w / whole for w in weights] if whole > 0 else [total / n] * n
    shares = [min(max(round(x / granule) * granule, low), high) for x in ideal]
    while (missing := total - sum(shares)) != 0:
        move = max(-granule, min(granule, missing))
        fits = [r for r in range(n) if low <= shares[r] + move <= high]
        if not fits:
            raise ValueError(f"{total} rows cannot be split into {n} shares within [{low}, {high}]")
        # the share furthest below its ideal grows, the one furthest above it shrinks
        r = max(fits, key=lambda q: (ideal[q] - shares[q]) * (1 if move > 0 else -1))
        shares[r] += move
    return tuple(shares)


class ShareSchedule:
    """Each step's per-rank row counts: equal at first, then as the balancer decides, from a step
    no batch has been made for yet."""

    def __init__(self, world_size: int, batch_size: int) -> None:
        self.equal = (batch_size,) * world_size
        self.global_batch = batch_size * world_size
        self._changes: list[tuple[int, tuple[int, ...]]] = [(0, self.equal)]
        self.made_through = -1  # the last step a batch was made for

    def shares(self, step: int) -> tuple[int, ...]:
        for first, shares in reversed(self._changes):
            if step >= first:
                return shares
        return self.equal

    def span(self, step: int, rank: int) -> tuple[int, int]:
        """Rows [start, stop) of step ``step``'s global batch that ``rank`` trains."""
        shares = self.shares(step)
        start = sum(shares[:rank])
        return start, start + shares[rank]

    def change(self, first: int, shares: tuple[int, ...]) -> None:
        if first <= self.made_through:
            raise RuntimeError(f"shares for step {first} changed after its batch was made")
        if sum(shares) != self.global_batch:
            raise ValueError(f"shares {shares} do not add up to the global batch {self.global_batch}")
        self._changes = [c for c in self._changes if c[0] < first][-KEPT_CHANGES:] + [(first, tuple(shares))]

    def rows_trained(self, rank: int, steps: range) -> int:
        return sum(self.shares(s)[rank] for s in steps)


def balanced_batches(source: Any, schedule: ShareSchedule, rank: int, steps: range) -> Iterator[Any]:
    """This rank's share of each step's training batch, as the schedule says when it is made."""
    for step in steps:
        start, stop = schedule.span(step, rank)
        schedule.made_through = step
        yield source.train_span(step, schedule.global_batch, start, stop)


class PaceBalancer:
    """Moves rows towards the ranks that train them faster, every ``every`` steps (a collective:
    every rank calls ``before_step`` with the same steps)."""

    def __init__(self, schedule: ShareSchedule, rank: int, every: int, exchange: Callable[[torch.Tensor], None],
                 blocked_seconds: Callable[[], float], clock: Callable[[], float] = time.perf_counter) -> None:
        """``exchange`` sums a tensor over the ranks in place; ``blocked_seconds`` is this rank's
        running total of time spent waiting for peers."""
        self.schedule, self.rank, self.every = schedule, rank, every
        self._exchange, self._blocked, self._clock = exchange, blocked_seconds, clock
        self._since: tuple[int, float, float] | None = None  # (step, wall, blocked) at the window's start
        self._pace: list[float] | None = None  # each rank's rows per second of work, smoothed
        self.updates = 0
        self.cpus: list[int] | None = None  # the cores this rank is pinned to

    def before_step(self, step: int) -> None:
        """Call before each step's ``progress``; rebalances at every ``every``-th step."""
        if self._since is not None and step % self.every == 0 and step > self._since[0]:
            self._rebalance(step)
        if self._since is None or step % self.every == 0:
            self._since = (step, self._clock(), self._blocked())

    def summary(self) -> dict[str, Any]:
        """How often the split moved and where it ended."""
        return {"updates": self.updates, "last_shares": list(self.schedule.shares(self.schedule.made_through)),
                "cpus": self.cpus}

    def restart(self) -> None:
        """Forget the open window (after an evaluation or checkpoint: time that was not training)."""
        self._since = None

    def _rebalance(self, step: int) -> None:
        rates, first_unmade = self._exchange_paces(step)
        if self._pace is not None:  # one window's pace is noisy: follow the trend, not each reading
            rates = [SMOOTHING * new + (1 - SMOOTHING) * old for new, old in zip(rates, self._pace)]
        self._pace = rates
        equal = self.schedule.equal[0]
        shares = split_rows(self.schedule.global_batch, rates, GRANULE,
                            int(equal * BOUNDS[0]), int(equal * BOUNDS[1]))
        current = self.schedule.shares(first_unmade)
        if max(abs(a - b) for a, b in zip(shares, current)) > GRANULE:  # within a granule: stay
            self.schedule.change(first_unmade, shares)
            self.updates += 1

    def _exchange_paces(self, step: int) -> tuple[list[float], int]:
        """Every rank's rows per second of work over the window ending at ``step``, and the first
        step no rank has made a batch for: the same on every rank."""
        first, wall, blocked = self._since
        busy = (self._clock() - wall) - (self._blocked() - blocked)
        rows = self.schedule.rows_trained(self.rank, range(first, step))
        world = len(self.schedule.equal)
        report = torch.zeros(2 * world, dtype=torch.float64)
        report[self.rank] = rows / max(busy, 1e-6)
        report[world + self.rank] = self.schedule.made_through
        self._exchange(report)
        return report[:world].tolist(), int(report[world:].max()) + 1


def make_balancer(cfg: Any, env: Any, source: Any, model: torch.nn.Module,
                  group: dist.ProcessGroup | None) -> PaceBalancer | None:
    """The run's balancer when ``sharding.cpu_balance`` asks for one and it applies (CPU ranks,
    more than one); its loss scaling set on the model."""
    if not cfg.sharding.cpu_balance or env.world_size == 1 or env.device.type != "cpu":
        return None
    if local_group.blocked_seconds() is None:  # auto chose gloo: the ranks span hosts
        raise ConfigError("sharding.cpu_balance", "needs the shared-memory transport, every rank on one host "
                          "(it times the ranks' waits there)")
    scaled = [m for m in model.modules() if hasattr(m, "nominal_rows")]
    if not hasattr(source, "train_span") or not scaled:
        raise ConfigError("sharding.cpu_balance", "applies to ranking models on synthetic or criteo data")
    for module in scaled:
        module.nominal_rows = cfg.train.batch_size
    schedule = ShareSchedule(env.world_size, cfg.train.batch_size)
    balancer = PaceBalancer(schedule, env.rank, cfg.sharding.cpu_balance_every,
                            lambda report: dist.all_reduce(report, group=group), local_group.blocked_seconds)
    balancer.cpus = pin_local_rank(env.local_rank, env.local_world_size)
    return balancer
