"""Examples/s over measured windows of steps, warm-up left out."""
from __future__ import annotations

import statistics
import time

import torch


class ThroughputMeter:
    """Times windows of ``window`` steps after the first ``skip``; the device is synced at each edge."""

    def __init__(self, global_batch: int, skip: int, window: int, device: torch.device) -> None:
        self.global_batch = global_batch
        self.skip = skip
        self.window = max(1, window)
        self.device = device
        self.rates: list[float] = []
        self._start: float | None = None
        self._steps = 0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def step_done(self, step: int) -> None:
        """Call after step ``step`` (0-based) has run; the clock starts once warm-up is over."""
        if step + 1 < self.skip:
            return
        if self._start is None:
            self._start, self._steps = self._now(), 0
            return
        self._steps += 1
        if self._steps == self.window:
            now = self._now()
            self.rates.append(self.global_batch * self._steps / (now - self._start))
            self._start, self._steps = now, 0

    def pause(self) -> None:
        """Drops the open window (evaluation runs in between); the next step restarts the clock."""
        self._start, self._steps = None, 0

    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    def percentiles(self) -> dict[str, float | None]:
        if not self.rates:
            return {"p10": None, "p50": None, "p90": None}
        ordered = sorted(self.rates)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]
        return {"p10": pick(0.1), "p50": statistics.median(ordered), "p90": pick(0.9)}
