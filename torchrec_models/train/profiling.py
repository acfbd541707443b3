"""A torch.profiler window over a few training steps: a trace per rank and the ops that cost most.

The trace (``rank<R>.pt.trace.json``) opens in chrome://tracing or Perfetto, and TensorBoard's
profiler plugin reads the folder; ``top_ops_rank<R>.txt`` lists the ops by their own time.
Profiled steps run slower than the others: a profiled run's examples/s is not a benchmark.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile


class StepProfiler:
    """Profiles steps [first, first + count) of this rank; ``step_done`` after every step."""

    def __init__(self, directory: str | Path, first: int, count: int, rank: int, device: torch.device) -> None:
        self.directory, self.first, self.count = Path(directory), first, count
        self.rank, self.device = rank, device
        self._profile: profile | None = None
        self.done = False

    def step_done(self, step: int) -> None:
        """``step`` (0-based) has just run; starts before ``first`` and stops after the last one."""
        if self.done:
            return
        if self._profile is None and step + 1 == self.first:
            self._start()
        elif self._profile is not None and step + 1 == self.first + self.count:
            self._stop()

    def _start(self) -> None:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self._profile = profile(activities=activities, record_shapes=True)
        self._profile.__enter__()

    def _stop(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._profile.__exit__(None, None, None)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._profile.export_chrome_trace(str(self.directory / f"rank{self.rank}.pt.trace.json"))
        table = top_ops(self._profile, self.device, self.count)
        (self.directory / f"top_ops_rank{self.rank}.txt").write_text(table + "\n")
        if self.rank == 0:
            print(f"profile of {self.count} steps in {self.directory} (rank 0, ops by own time):\n{table}",
                  flush=True)
        self._profile, self.done = None, True


def top_ops(prof: profile, device: torch.device, steps: int, rows: int = 15) -> str:
    """The ops that took most of their own time over the profiled steps. On a GPU, by device time and
    by host time, which is what a step bound by the host (launches, syncs, data) spends."""
    averages = prof.key_averages()
    by_host = averages.table(sort_by="self_cpu_time_total", row_limit=rows)
    head = f"{steps} steps; totals over all of them\n"
    if device.type != "cuda":
        return head + by_host
    by_device = averages.table(sort_by="self_cuda_time_total", row_limit=rows)
    return f"{head}by device time:\n{by_device}\nby host time:\n{by_host}"
