"""Local ranks forked from the rank server start with the imports done and the environment of
their launch; without a server they are fresh interpreters; a server never outlives its block."""
from __future__ import annotations

import os
import sys

import pytest

from torchrec_models.runtime import rank_server
from torchrec_models.runtime.environment import rank_environment
from torchrec_models.runtime.launcher import launch_local

pytestmark = pytest.mark.slow


def _rank_facts() -> dict:
    import torch

    return {"parent": os.getppid(), "torchrec_imported": "torchrec" in sys.modules,
            "threads": torch.get_num_threads(), "marker": os.environ.get("RANK_SERVER_TEST")}


def _expected_threads(nproc: int) -> int:
    return int(rank_environment(nproc).get("OMP_NUM_THREADS") or os.environ["OMP_NUM_THREADS"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ranks_fork_from_the_server_with_its_imports_done_and_their_own_thread_share() -> None:
    with rank_server.rank_server(rank_environment(2)) as server:
        assert rank_server.serving()
        two = launch_local(_rank_facts, (), 2, env={"RANK_SERVER_TEST": "two"})
        one = launch_local(_rank_facts, (), 1, env={"RANK_SERVER_TEST": "one"})  # the server started for 2
    assert not rank_server.serving() and not _alive(server)
    for facts, nproc, marker in [(two[0], 2, "two"), (two[1], 2, "two"), (one[0], 1, "one")]:
        assert facts["parent"] == server
        assert facts["torchrec_imported"]
        assert facts["threads"] == _expected_threads(nproc)
        assert facts["marker"] == marker
    assert "RANK_SERVER_TEST" not in os.environ


def test_without_a_server_ranks_are_fresh_interpreters() -> None:
    ranks = launch_local(_rank_facts, (), 2, env={"RANK_SERVER_TEST": "spawned"})
    for facts in ranks.values():
        assert facts["parent"] == os.getpid()
        assert not facts["torchrec_imported"]
        assert facts["threads"] == _expected_threads(2)
        assert facts["marker"] == "spawned"


def test_a_block_that_fails_stops_the_server() -> None:
    with pytest.raises(RuntimeError, match="bad input"):
        with rank_server.rank_server(rank_environment(2)) as server:
            raise RuntimeError("bad input")
    assert not rank_server.serving() and not _alive(server)
