"""This project's DLRM dot interaction on the CPU: one pass over each example, forward and backward.

The torch composition (``models/interaction.py``) stacks the dense and sparse vectors into a
[B, N, D] tensor, multiplies it by its transpose into [B, N, N], gathers the upper triangle and
concatenates it after the dense vector; its backward scatters the triangle's gradient into a
symmetric [B, N, N] matrix and multiplies. The kernel in ``dot_interaction_cpu.cpp`` reads each
example's vectors once into an L1-resident block, writes its output row once, and returns the
dense and sparse gradients directly: none of those intermediates exist. Other devices (and
compiled graphs) keep the torch composition.
"""
from __future__ import annotations

import threading
from pathlib import Path

import torch

from torchrec_models.config import TrainConfig
from torchrec_models.kernels.build import build_extension, build_or_fall_back

SOURCE = Path(__file__).with_name("dot_interaction_cpu.cpp")
DTYPES = (torch.float32, torch.bfloat16)
_lock = threading.Lock()
_state = {"built": False, "enabled": False}


def enable(required: bool) -> bool:
    """Builds the kernel once and uses it from now on; a failed build raises if ``required``,
    else logs and keeps the torch composition. Returns whether it is in use."""
    with _lock:
        if not _state["built"]:
            if not build_or_fall_back(lambda: build_extension(SOURCE), required, "train.cpu_interaction",
                                      "'auto' or 'torch'", "dot interaction", "the torch composition"):
                return False
            _state["built"] = True
        _state["enabled"] = True
        return True


def disable() -> None:
    _state["enabled"] = False


def enabled() -> bool:
    return _state["enabled"]


def apply(cfg: TrainConfig, device_type: str) -> None:
    """In use for a CPU run unless ``train.cpu_interaction`` is 'torch'."""
    if device_type == "cpu" and cfg.cpu_interaction != "torch":
        enable(required=cfg.cpu_interaction == "native")
    else:
        disable()


def usable(dense: torch.Tensor, sparse: torch.Tensor) -> bool:
    """Whether these inputs (already in the compute dtype) go through the kernel."""
    return (_state["enabled"] and dense.device.type == "cpu" and dense.dtype in DTYPES
            and sparse.dtype == dense.dtype and not torch.compiler.is_compiling())


class NativeDotInteraction(torch.autograd.Function):
    """(dense [B, D], sparse [B, F, D], order) -> [B, D + N(N-1)/2]: the dense vector, then the dot
    products of the N = F + 1 vectors (dense, sparse[:, order[0]], ..., sparse[:, order[F-1]]), pairs
    i < j in row-major order (torchrec's). ``order`` None: the stored order."""

    @staticmethod
    def forward(ctx, dense: torch.Tensor, sparse: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        dense, sparse = dense.contiguous(), sparse.contiguous()
        ctx.save_for_backward(dense, sparse)
        ctx.order = order
        return torch.ops.torchrec_models_interaction.dot_interaction_forward(dense, sparse, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        dense, sparse = ctx.saved_tensors
        grad_dense, grad_sparse = torch.ops.torchrec_models_interaction.dot_interaction_backward(
            grad, dense, sparse, ctx.order)
        return grad_dense, grad_sparse, None
