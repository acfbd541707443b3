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

from pathlib import Path

import torch

from torchrec_models.kernels.build import build_extension
from torchrec_models.kernels.switch import KernelSwitch

SOURCE = Path(__file__).with_name("dot_interaction_cpu.cpp")
DTYPES = (torch.float32, torch.bfloat16)
# in use for CPU runs unless train.cpu_interaction is "torch" (sharding/sharded_model.py applies it)
SWITCH = KernelSwitch(lambda: build_extension(SOURCE), "train.cpu_interaction", "dot interaction")



def usable(dense: torch.Tensor, sparse: torch.Tensor) -> bool:
    """Whether these inputs (already in the compute dtype) go through the kernel."""
    return (SWITCH.enabled() and dense.device.type == "cpu" and dense.dtype in DTYPES
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
