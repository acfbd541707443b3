"""torchx components (no postponed annotations: torchx reads the types): the same ``python -m torchrec_models`` entry point, launched anywhere.

    torchx run -s local_cwd launch/components.py:train --nproc_per_node 2 -- \\
        --config configs/tiny.toml --run-dir runs/x

Each is a typed function returning an AppDef built on torchx's ``dist.ddp`` (torchrun under
the hood), so ranks get RANK / WORLD_SIZE / LOCAL_RANK and the train command runs as a worker.
"""

from typing import Dict, Optional, Tuple

import torchx.specs as specs
from torchx.components import dist

MODULE = "torchrec_models"
DEFAULT_IMAGE = "ghcr.io/pytorch/torchx:latest"


def _ddp(
    command: str,
    script_args: Tuple[str, ...],
    name: str,
    nnodes: int,
    nproc_per_node: int,
    image: str,
    h: Optional[str],
    cpu: int,
    gpu: int,
    memMB: int,
    max_retries: int,
    env: Optional[Dict[str, str]],
) -> specs.AppDef:
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nnodes and nproc_per_node must be >= 1, got {nnodes} x {nproc_per_node}")
    return dist.ddp(
        command, *script_args, m=MODULE, name=name, image=image, h=h, cpu=cpu, gpu=gpu, memMB=memMB,
        j=f"{nnodes}x{nproc_per_node}", max_retries=max_retries, env=env,
    )


def train(
    *script_args: str,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    image: str = DEFAULT_IMAGE,
    name: str = "torchrec-train",
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
) -> specs.AppDef:
    """Trains a sharded ranker: ``script_args`` go to ``python -m torchrec_models train``.

    Args:
        script_args: train arguments, e.g. --config configs/tiny.toml --run-dir runs/x
        nnodes: number of nodes
        nproc_per_node: ranks per node (one per GPU on GPU hosts)
        image: container image (ignored by local_cwd)
        name: job name
        h: a named resource (e.g. a scheduler-registered host type); overrides cpu/gpu/memMB
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: host memory per node in MB
        max_retries: whole-job restarts the scheduler may make after a failure
        env: extra environment variables
    """
    return _ddp("train", script_args, name, nnodes, nproc_per_node, image, h, cpu, gpu, memMB, max_retries, env)


def bench(
    *script_args: str,
    image: str = DEFAULT_IMAGE,
    name: str = "torchrec-bench",
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 16384,
    env: Optional[Dict[str, str]] = None,
) -> specs.AppDef:
    """Runs the benchmark harness on one host: ``script_args`` go to ``python -m benchmarks``.

    The harness starts each row's ranks itself, so this is one process, not a ddp job.

    Args:
        script_args: harness arguments, e.g. --suite smoke --out runs/bench
        image: container image (ignored by local_cwd)
        name: job name
        h: a named resource; overrides cpu/gpu/memMB
        cpu: CPUs
        gpu: GPUs
        memMB: host memory in MB
        env: extra environment variables
    """
    resource = specs.resource(cpu=cpu, gpu=gpu, memMB=memMB, h=h)
    role = specs.Role(
        name="bench", image=image, entrypoint="python", args=["-m", "benchmarks", *script_args],
        num_replicas=1, resource=resource, env=dict(env or {}),
    )
    return specs.AppDef(name=name, roles=[role])
