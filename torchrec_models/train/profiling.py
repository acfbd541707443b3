"""A torch.profiler window over a few training steps: a trace per rank and the ops that cost most.

The trace (``rank<R>.pt.trace.json``) opens in chrome://tracing or Perfetto, and TensorBoard's
profiler plugin reads the folder; ``top_ops_rank<R>.txt`` lists the ops by their own time.
Profiled steps run slower than the others: a profiled run's examples/s is not a benchmark. On CPU
the summary ends with the profiled steps' page faults: the profiler's own allocations can keep a
step's freed buffers from being reused, and ops that write fresh memory then read slower than in
a run (a warmed-up step faults about never).
"""
from __future__ import annotations

import resource
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

FAULTS_WORTH_A_NOTE = 256  # a MiB of fresh 4 KiB pages a step


class StepProfiler:
    """Profiles steps [first, first + count) of this rank; ``step_done`` after every step."""

    def __init__(self, directory: str | Path, first: int, count: int, rank: int, device: torch.device) -> None:
        self.directory, self.first, self.count = Path(directory), first, count
        self.rank, self.device = rank, device
        self._profile: profile | None = None
        self.done = False
        self._faults_at_start = 0

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
        # no input shapes: with them every profiled call of the Criteo preset's lookup wrote fresh
        # memory (6,500 page faults, 2.7x its unprofiled time); without, some calls still do
        self._profile = profile(activities=activities, record_shapes=False)
        self._profile.__enter__()
        self._faults_at_start = page_faults()

    def _stop(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._profile.__exit__(None, None, None)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._profile.export_chrome_trace(str(self.directory / f"rank{self.rank}.pt.trace.json"))
        table = top_ops(self._profile, self.device, self.count)
        if self.device.type == "cpu":
            table += "\n" + fault_note(page_faults() - self._faults_at_start, self.count)
        (self.directory / f"top_ops_rank{self.rank}.txt").write_text(table + "\n")
        if self.rank == 0:
            print(f"profile of {self.count} steps in {self.directory} (rank 0, ops by own time):\n{table}",
                  flush=True)
        self._profile, self.done = None, True


def page_faults() -> int:
    """Minor page faults of this process so far (fresh memory touched for the first time)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def fault_note(faults_during: int, profiled: int) -> str:
    """A line on the profiled steps' page faults (module docstring; train.cpu_keep_freed_memory is
    what makes an unprofiled step fault about never)."""
    per_step = faults_during / profiled
    note = f"page faults: {per_step:,.0f} a step while profiled"
    if per_step > FAULTS_WORTH_A_NOTE:
        note += (f" (about {per_step * 4 / 1024:,.0f} MiB of fresh pages a step: ops that write large outputs "
                 "read slower here than in an unprofiled run)")
    return note


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
