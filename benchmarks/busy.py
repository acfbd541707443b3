"""Whether other processes are using the CPU when a benchmark starts.

On a 2-core machine one stray process (a test run, a training left running) halves what the
harness measures, and its rate probes as well, so the figures it writes are not comparable with
any other run. The harness sleeps for a second before its probes, reads how many cores' worth of
CPU time the machine spent meanwhile (``/proc/stat``), records it, and warns when it is not near 0.
"""
from __future__ import annotations

import os
import time

BUSY_WARNING = 0.2  # cores' worth of CPU time used by others; a quiet machine reads ~0.01


def _busy_ticks(stat_line: str) -> int:
    """Clock ticks spent working in the first line of /proc/stat ("cpu user nice system idle
    iowait irq softirq steal ..."): everything except idle and iowait (and steal, time the
    hypervisor gave to other guests, which shows up in the core pace instead)."""
    fields = [int(x) for x in stat_line.split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return user + nice + system + irq + softirq


def _read_stat_line() -> str:
    with open("/proc/stat") as stat:
        return stat.readline()


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores' worth of CPU time the machine spent while this process slept for ``seconds``;
    None where there is no /proc/stat."""
    try:
        before = _busy_ticks(_read_stat_line())
        start = time.monotonic()
        time.sleep(seconds)
        after = _busy_ticks(_read_stat_line())
    except (OSError, ValueError):
        return None
    return (after - before) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - start)


def warning(busy: float | None) -> str | None:
    """A line for the report when others were using the CPU at the start, else None."""
    if busy is None or busy < BUSY_WARNING:
        return None
    return (f"other processes kept {busy:.1f} cores busy when this run started: its probes and rows "
            "are slowed, and its figures compare with no other run")
