"""Consolidating a sharded model's state into whole tensors (for comparison and export)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


def gather_full_state_dict(model: nn.Module, dst: int = 0) -> dict[str, torch.Tensor] | None:
    """Every entry of ``model.state_dict()`` as one whole CPU tensor on rank ``dst`` (None elsewhere).

    A collective: every rank must call it.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        full = _whole(value, rank, dst)
        if rank == dst:
            out[key] = full
    return out if rank == dst else None


def _collective_device() -> torch.device:
    """Where collectives take their tensors: the current GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _whole(value: torch.Tensor, rank: int, dst: int) -> torch.Tensor | None:
    if isinstance(value, ShardedTensor):
        device = _collective_device()
        full = torch.empty(value.size(), dtype=value.dtype, device=device) if rank == dst else None
        value.gather(dst=dst, out=full)
        return full.cpu() if full is not None else None
    if hasattr(value, "full_tensor"):  # DTensor
        return value.full_tensor().detach().cpu()
    return value.detach().cpu().clone()
