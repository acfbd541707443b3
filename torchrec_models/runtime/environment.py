"""The environment local ranks start with, and what a process can tell from its own."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


def under_launcher() -> bool:
    """True inside a rank started by torchrun / torch elastic / torchx."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank_environment(nproc: int) -> dict[str, str]:
    """What each of ``nproc`` local ranks gets unless the user set it: an even share of the cores
    (OMP_NUM_THREADS), and every thread's Python stack printed if it dies of a native crash."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    defaults = {"OMP_NUM_THREADS": str(max(1, cores // nproc)), "PYTHONFAULTHANDLER": "1"}
    return {k: v for k, v in defaults.items() if k not in os.environ}


@contextmanager
def added_to_environment(added: dict[str, str | None]) -> Iterator[None]:
    """``added`` in this process's environment (which child processes start with) for the block,
    a None value removing its key; the previous values after."""
    saved = {k: os.environ.get(k) for k in added}
    for key, value in added.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def pin_local_rank(local_rank: int, local_world: int) -> list[int] | None:
    """Pins every thread of this process to the local rank's even share of the allowed cores;
    None (nothing pinned) when there are fewer cores than local ranks."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    share = len(cpus) // local_world
    if share == 0:
        return None
    mine = cpus[local_rank * share:(local_rank + 1) * share]
    for thread in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread), mine)
        except OSError:  # a thread that ended in between
            pass
    return mine
