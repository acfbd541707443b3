"""Starts N local ranks through torch elastic, or runs this process as one rank of a launched job."""
from __future__ import annotations

import os
import uuid
from typing import Any, Callable

from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from torchrec_models.runtime import rank_server
from torchrec_models.runtime.environment import added_to_environment, rank_environment


def launch_local(
    entrypoint: Callable[..., Any], args: tuple[Any, ...], nproc: int, max_restarts: int = 0,
    env: dict[str, str] | None = None,
) -> dict[int, Any]:
    """Runs ``entrypoint(*args)`` on ``nproc`` local ranks; returns each rank's return value.

    Each rank gets ``rank_environment(nproc)`` and ``env`` added to its environment. Ranks are
    forks of the rank server while one runs (see rank_server), fresh interpreters otherwise.
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
        monitor_interval=0.1,
        start_method="forkserver" if rank_server.serving() else "spawn",
    )
    added = {**rank_environment(nproc), **(env or {})}
    with added_to_environment(added):  # what a spawned interpreter starts with
        return elastic_launch(config, _rank_main)(added, entrypoint, *args)


def _rank_main(added: dict[str, str], entrypoint: Callable[..., Any], *args: Any) -> Any:
    """A rank's first code: a forked rank did not start with ``added`` in its environment, so it is
    applied here (thread count and crash stacks included), then ``entrypoint(*args)`` runs."""
    os.environ.update(added)
    if os.environ.get("PYTHONFAULTHANDLER"):
        import faulthandler

        faulthandler.enable()
    if "OMP_NUM_THREADS" in os.environ:
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return entrypoint(*args)
