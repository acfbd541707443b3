"""How evenly a machine's cores keep pace with each other: what work done in lockstep pays.

Ranks that meet at every step's collectives, like threads that meet at every parallel region,
move at the pace of whichever core is slowest at the moment; processes that never meet do not.
On a virtual machine whose vCPUs share physical cores with other guests that pace differs from
core to core and from second to second. The probe runs one single-thread GEMM loop pinned to each
core, all at once, and compares their rates interval by interval: the mean of slowest over
fastest is the share of its speed a lockstep pair of ranks keeps on this machine.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import statistics
import time
from typing import Any

_SIDE = 384  # a 384 x 384 fp32 product: ~1 ms on one core, in cache


def _gemm_loop(core: int, seconds: float, barrier: Any, out: Any) -> None:
    """On ``core`` alone: (wall time, GFLOP/s) of back-to-back GEMM bursts for ``seconds``."""
    import torch

    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    a, b = torch.randn(_SIDE, _SIDE), torch.randn(_SIDE, _SIDE)
    for _ in range(20):
        torch.mm(a, b)
    barrier.wait()
    samples, end = [], time.time() + seconds
    while time.time() < end:
        start = time.perf_counter()
        for _ in range(8):
            torch.mm(a, b)
        samples.append((time.time(), 8 * 2 * _SIDE ** 3 / (time.perf_counter() - start) / 1e9))
    out.put((core, samples))


def measure_core_pace(seconds: float = 6.0, interval: float = 0.25,
                      cores: list[int] | None = None) -> dict[str, float] | None:
    """Per ``interval``, the slowest core's GEMM rate over the fastest's, all cores running at
    once: mean, p10 and the number of intervals. None with fewer than two cores to pin to, or when
    a loop could not run on its core."""
    if cores is None:
        if not hasattr(os, "sched_getaffinity"):
            return None
        cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    ctx = multiprocessing.get_context("spawn")  # no OpenMP state inherited from this process
    barrier, out = ctx.Barrier(len(cores)), ctx.Queue()
    workers = [ctx.Process(target=_gemm_loop, args=(c, seconds, barrier, out)) for c in cores]
    for w in workers:
        w.start()
    by_core = _collect(out, workers, deadline=time.monotonic() + seconds + 120)
    if len(by_core) < len(cores):  # the loops still waiting for the failed one's start
        for w in workers:
            w.terminate()
    for w in workers:
        w.join()
    if len(by_core) < len(cores):
        return None
    ratios = _interval_ratios(by_core, interval)
    if not ratios:
        return None
    ratios.sort()
    return {"core_pace_mean": statistics.fmean(ratios), "core_pace_p10": ratios[len(ratios) // 10],
            "core_pace_intervals": float(len(ratios))}


def _collect(out: Any, workers: list[Any], deadline: float) -> dict[int, list[tuple[float, float]]]:
    """Each loop's samples by core; stops early once a loop has failed (a core this process may
    not use, say), leaving that core out."""
    by_core: dict[int, list[tuple[float, float]]] = {}
    while len(by_core) < len(workers) and time.monotonic() < deadline:
        try:
            core, samples = out.get(timeout=0.5)
            by_core[core] = samples
        except queue.Empty:
            if any(w.exitcode not in (None, 0) for w in workers):
                break
    return by_core


def _interval_ratios(by_core: dict[int, list[tuple[float, float]]], interval: float) -> list[float]:
    """min over max of the cores' median rates, for each interval in which every core has a sample."""
    medians: dict[int, dict[int, float]] = {}
    for core, samples in by_core.items():
        buckets: dict[int, list[float]] = {}
        for wall, rate in samples:
            buckets.setdefault(int(wall / interval), []).append(rate)
        medians[core] = {k: statistics.median(v) for k, v in buckets.items()}
    shared = set.intersection(*(set(m) for m in medians.values()))
    return [min(m[k] for m in medians.values()) / max(m[k] for m in medians.values()) for k in sorted(shared)]
