"""The torchx train component: the AppDef it builds, and one real local_cwd run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY
from launch.components import train


def test_appdef_carries_counts_resources_and_command() -> None:
    app = train("--config", TINY, "--run-dir", "runs/x", nnodes=2, nproc_per_node=4, gpu=4, cpu=32,
                memMB=64000, max_retries=3)
    (role,) = app.roles
    cmd = " ".join(role.args)
    assert role.num_replicas == 2 and role.max_retries == 3
    assert (role.resource.gpu, role.resource.cpu, role.resource.memMB) == (4, 32, 64000)
    assert "--nnodes 2" in cmd and "--nproc_per_node 4" in cmd
    assert "-m torchrec_models train --config" in cmd and "--run-dir runs/x" in cmd


def test_named_resource_and_bad_counts() -> None:
    from torchx.specs import named_resources

    app = train("--run-dir", "runs/x", h="aws_p4d.24xlarge")
    assert app.roles[0].resource == named_resources["aws_p4d.24xlarge"]
    assert app.roles[0].resource.gpu == 8
    with pytest.raises(ValueError, match="nproc_per_node"):
        train("--run-dir", "runs/x", nproc_per_node=0)


@pytest.mark.slow
def test_local_cwd_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    out = subprocess.run(
        [os.path.join(bin_dir, "torchx"), "run", "-s", "local_cwd", "launch/components.py:train",
         "--nproc_per_node", "2", "--", "--config", TINY, "--run-dir", str(run_dir),
         "--set", "train.steps=40", "train.eval_every=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 40


def test_bench_component_runs_the_harness() -> None:
    from launch.components import bench

    app = bench("--suite", "smoke", "--out", "runs/bench", gpu=1, cpu=16)
    (role,) = app.roles
    assert role.entrypoint == "python" and role.args[:2] == ["-m", "benchmarks"]
    assert role.args[2:] == ["--suite", "smoke", "--out", "runs/bench"]
    assert role.num_replicas == 1 and (role.resource.gpu, role.resource.cpu) == (1, 16)
