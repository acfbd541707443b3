"""A process that imports what a rank runs once, then forks the ranks of each local launch.

A spawned rank is a fresh interpreter that imports torch, torchrec, torchrec.metrics and this
package before it does anything: ~7 s per launch on a 2-core EPYC. The rank server (Python's
multiprocessing fork server, with those modules preloaded) pays that once, in the background,
while the launching process checks the run, and every rank starts as a fork of it with all of it
imported. Only on hosts without CUDA: where an NVIDIA driver is loaded, the imports may
initialize CUDA, which a forked child cannot use, so ranks there are spawned.
"""
from __future__ import annotations

import glob
import multiprocessing
import multiprocessing.forkserver as forkserver
import os
import signal
from contextlib import contextmanager
from typing import Iterator

from torchrec_models.runtime.environment import added_to_environment

RANK_MODULES = (
    "torchrec_models.train.trainer",
    "torchrec_models.tasks.ranking",
    "torchrec_models.tasks.retrieval",
    "torchrec_models.serving.scoring",
)

_running = False  # whether ranks launched from this process now fork from the server


def cuda_host() -> bool:
    """An NVIDIA driver is loaded on this host (checked without importing torch)."""
    return os.path.isdir("/proc/driver/nvidia/gpus") or bool(glob.glob("/dev/nvidia[0-9]*"))


def serving() -> bool:
    """Whether this process's local launches fork their ranks from a rank server now."""
    return _running


@contextmanager
def rank_server(environment: dict[str, str], modules: tuple[str, ...] = RANK_MODULES) -> Iterator[int]:
    """Starts the server (it imports ``modules`` in the background, with ``environment`` added to
    this process's) and stops it when the block ends, however it ends; yields its process id."""
    global _running
    if _running:  # already serving: an inner block reuses it
        yield forkserver._forkserver._forkserver_pid
        return
    multiprocessing.set_forkserver_preload(list(modules))
    with added_to_environment(environment):  # the server's interpreter starts with it (thread counts are read then)
        forkserver.ensure_running()
    _running = True
    try:
        yield forkserver._forkserver._forkserver_pid
    finally:
        _running = False
        _stop()
        multiprocessing.set_forkserver_preload([])


def _stop() -> None:
    """Ends the server now, even mid-import (a run stopped by a bad input must not wait for it:
    it holds the caller's stdout and stderr open), and reaps it."""
    server = forkserver._forkserver
    if server._forkserver_pid is None:
        return
    try:
        os.kill(server._forkserver_pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    server._stop()  # closes its pipe, reaps it, forgets it: a later launch starts a fresh one
