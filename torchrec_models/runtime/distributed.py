"""The one place that chooses cuda+NCCL or cpu+gloo, and sets up / tears down the process group."""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, world size, device and backend."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def choose_device(requested: str, local_rank: int) -> tuple[torch.device, str]:
    """``auto`` picks CUDA when present; CUDA pairs with NCCL, CPU with gloo."""
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("sharding.device = 'cuda' but no CUDA device is visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), "nccl"
    return torch.device("cpu"), "gloo"


def set_dense_math(device: torch.device, tf32: bool) -> None:
    """On CUDA, lets fp32 matmuls and convolutions of the dense part run on TF32 tensor cores (or not)."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


@contextmanager
def process_group(requested_device: str = "auto") -> Iterator[DistEnv]:
    """Joins (or, run alone, creates) the default process group; always destroys it on exit.

    Under torchrun / torch elastic the rendezvous comes from the environment; a plain
    ``python`` run becomes a world of one on a free local port.
    """
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device, backend = choose_device(requested_device, local_rank)
    created = not dist.is_initialized()
    if created:
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend=backend, rank=rank, world_size=world, store=_restart_store(world))
        else:  # alone: a private port, not written into os.environ where child processes would inherit it
            dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                    init_method=f"tcp://127.0.0.1:{_free_port()}")
    try:
        yield DistEnv(rank, world, local_rank, local_world, device, backend)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _restart_store(world_size: int) -> dist.Store | None:
    """Under torch elastic, the agent's store with a prefix per restart attempt.

    The agent keeps one store across restarts; without a prefix, ranks of a restarted group
    can read the peer addresses their dead predecessors left there and fail to connect.
    None (the env:// default) outside elastic.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=False, timeout=timedelta(minutes=5))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"/torchrec_models/attempt_{attempt}", store)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
