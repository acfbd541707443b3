"""Processes of their own (launched ranks, the CLI) freeze their long-lived objects; library callers do not."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, TINY

FREEZE_COUNTS = f"""
import gc, os, sys, tempfile
from torchrec_models.runtime.worker import train_worker
overrides = ("train.steps=2", "train.eval_steps=0")
with tempfile.TemporaryDirectory() as run_dir:
    train_worker({TINY!r}, overrides, run_dir + "/a", "none")  # a library call in someone's process
    print("frozen", gc.get_freeze_count())
    os.environ.update(LOCAL_RANK="0", WORLD_SIZE="1")  # as torchrun / torch elastic start a rank
    train_worker({TINY!r}, overrides, run_dir + "/b", "none")
    print("frozen", gc.get_freeze_count())
"""


def test_a_launched_rank_freezes_what_its_imports_made_and_a_library_call_does_not():
    out = subprocess.run([sys.executable, "-c", FREEZE_COUNTS], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    in_library, launched = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("frozen ")]
    assert in_library == 0
    assert launched > 100_000  # torch's and torchrec's modules, functions and classes


def test_the_cli_exits_with_its_objects_frozen():
    script = ("import gc, sys; from torchrec_models.__main__ import main; "
              f"sys.argv = ['torchrec-models', 'plan', '--config', {TINY!r}]; main(); print('frozen', gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.splitlines()[-1].removeprefix("frozen ")) > 10_000
