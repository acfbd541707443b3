"""Shared helpers: the repo root, running the CLI in a subprocess, GPU skipping."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.toml")


@contextmanager
def kernel_switched_on(switch) -> Iterator[None]:
    """A kernel of ``torchrec_models.kernels`` in use (built if needed); the process's previous choice after."""
    was = switch.enabled()
    assert switch.enable(required=True)
    try:
        yield
    finally:
        if not was:
            switch.disable()


@pytest.fixture
def kernels_off_after():
    """An in-process run puts this project's CPU kernels in place process-wide; other tests
    count the torch composition's ops, so they are taken out again afterwards."""
    yield
    from types import SimpleNamespace

    from torchrec_models.config import load_config
    from torchrec_models.sharding.sharded_model import apply_process_settings

    off = load_config(TINY, ["train.cpu_interaction=torch", "train.cpu_mlp=torch", "train.cpu_table_update=fbgemm",
                             "train.cpu_gemm=torch"])
    apply_process_settings(off, SimpleNamespace(device=torch.device("cpu")))


@pytest.fixture(scope="module")
def rank_server_for_module():
    """In-process launches of the module's tests fork their ranks from one rank server (one set
    of imports for all of them) on a host without CUDA, as the CLI's do."""
    from torchrec_models.runtime import rank_server
    from torchrec_models.runtime.environment import rank_environment

    if rank_server.cuda_host():
        yield
        return
    with rank_server.rank_server(rank_environment(2)):
        yield


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m torchrec_models ARGS`` from the repo root; output captured as text."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "torchrec_models", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
