"""Starts N local ranks through torch elastic, or runs this process as one rank of a launched job."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from torch.distributed.launcher.api import LaunchConfig, elastic_launch


def under_launcher() -> bool:
    """True inside a rank started by torchrun / torch elastic / torchx."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_local(
    entrypoint: Callable[..., Any], args: tuple[Any, ...], nproc: int, max_restarts: int = 0
) -> dict[int, Any]:
    """Runs ``entrypoint(*args)`` on ``nproc`` local ranks; returns each rank's return value.

    Each rank gets an even share of the cores (OMP_NUM_THREADS) unless the caller set it, and
    prints every thread's Python stack if it dies of a native crash (PYTHONFAULTHANDLER).
    A failed rank makes elastic restart the whole group up to ``max_restarts`` times.
    """
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"torchrec-models-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=max_restarts,
        monitor_interval=0.5,
        start_method="spawn",
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with _child_environment({"OMP_NUM_THREADS": str(max(1, cores // nproc)), "PYTHONFAULTHANDLER": "1"}):
        return elastic_launch(config, entrypoint)(*args)


@contextmanager
def _child_environment(defaults: dict[str, str]) -> Iterator[None]:
    """Spawned ranks inherit these variables, except those the user already set."""
    added = [k for k in defaults if k not in os.environ]
    os.environ.update({k: defaults[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            del os.environ[k]
