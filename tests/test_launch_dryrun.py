"""torchx dry runs of the train component on slurm and kubernetes (Volcano), with .torchxconfig."""
from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT

DCN = "configs/dlrm_dcnv2_mlperf.toml"
TRAIN_ARGS = ("--", "--config", DCN, "--run-dir", "runs/x")
WORKER = f"-m torchrec_models train --config {DCN} --run-dir runs/x"


def dryrun(scheduler: str, *options: str) -> str:
    """``torchx run --dryrun`` for 2 nodes x 8 GPUs; returns the scheduler request it would submit."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": str(bin_dir) + os.pathsep + os.environ.get("PATH", "")}
    out = subprocess.run(
        [str(bin_dir / "torchx"), "run", "--dryrun", "-s", scheduler, *options, "launch/components.py:train",
         "--nnodes", "2", "--nproc_per_node", "8", "--gpu", "8", *TRAIN_ARGS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    marker = "=== SCHEDULER REQUEST ==="
    assert marker in out.stdout, out.stdout[-2000:]
    return out.stdout.split(marker, 1)[1]


def _torchrun_command(text: str) -> str:
    return " ".join(text.split())


def test_torchxconfig_options_exist() -> None:
    from torchx.schedulers import get_scheduler_factories

    parser = configparser.ConfigParser()
    assert parser.read(ROOT / ".torchxconfig")
    factories = get_scheduler_factories()
    for scheduler in ("kubernetes", "slurm"):
        known = {name for name, _ in factories[scheduler]("test").run_opts()}
        assert set(parser[scheduler]) <= known, scheduler
    assert parser["kubernetes"]["queue"]
    assert parser["slurm"]["partition"] and parser["slurm"]["time"]


def test_slurm_sbatch_script() -> None:
    script = dryrun("slurm")
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".torchxconfig")
    groups = re.findall(r"^#SBATCH (--job-name=.*)$", script, flags=re.M)
    assert len(groups) == 2  # one heterogeneous group per node
    for line in groups:
        assert "--ntasks-per-node=1" in line and "--gpus-per-task=8" in line
        assert f"--partition={cfg['slurm']['partition']}" in line and f"--time={cfg['slurm']['time']}" in line
    command = _torchrun_command(script)
    assert command.count("torchrun ") == 2
    assert "--nnodes 2 --nproc_per_node 8" in command and WORKER in command


def test_slurm_command_line_options_win_over_torchxconfig() -> None:
    script = dryrun("slurm", "-cfg", "partition=h100,time=30")
    assert "--partition=h100" in script and "--time=30 " in script


def test_kubernetes_volcano_job() -> None:
    job = yaml.safe_load(dryrun("kubernetes", "--workspace", ""))
    assert job["apiVersion"].startswith("batch.volcano.sh/") and job["kind"] == "Job"
    assert job["spec"]["schedulerName"] == "volcano" and job["spec"]["queue"] == "default"
    tasks = job["spec"]["tasks"]
    assert len(tasks) == 2 and all(t["replicas"] == 1 for t in tasks)
    for task in tasks:
        (container,) = task["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        command = _torchrun_command(" ".join(container["command"]))
        assert "--nnodes 2 --nproc_per_node 8" in command and WORKER in command


def test_kubernetes_queue_from_the_command_line() -> None:
    job = yaml.safe_load(dryrun("kubernetes", "--workspace", "", "-cfg", "queue=research"))
    assert job["spec"]["queue"] == "research"
