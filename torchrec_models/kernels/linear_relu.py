"""An MLP layer, relu(x W^T + b), with no element-wise pass of its own, on the CPU.

torch's composition ``relu(linear(x))`` writes the ReLU's output as a second [B, N] tensor, and in
backward makes the masked gradient in one pass and sums it for the bias in another. Here the
forward is one library call that applies bias and ReLU inside the GEMM (oneDNN's fused linear in
bf16, where torch's bf16 ``addmm`` is the slower path; ``addmm`` and an in-place ReLU in fp32), so
fp32 values are torch's bit for bit (bf16 ones are the same fp32 sums rounded once, equal to torch's
where oneDNN picks the same GEMM kernel for both), and the backward masks and sums in one pass
(``linear_relu_cpu.cpp``). The GEMMs are the libraries': in fp32 torch's, or OpenBLAS's with the
bias and ReLU applied per block of rows where ``train.cpu_gemm`` picks it (``cpu_gemm.py``). Other
devices and compiled graphs keep the composition.
"""
from __future__ import annotations

from pathlib import Path

import torch

from torchrec_models.kernels import cpu_gemm
from torchrec_models.kernels.build import build_extension
from torchrec_models.kernels.switch import KernelSwitch
from torchrec_models.runtime.precision_support import native_bf16_matmul

SOURCE = Path(__file__).with_name("linear_relu_cpu.cpp")
DTYPES = (torch.float32, torch.bfloat16)
# in use for CPU runs unless train.cpu_mlp is "torch" (sharding/sharded_model.py applies it)
SWITCH = KernelSwitch(lambda: build_extension(SOURCE), "train.cpu_mlp", "MLP bias and ReLU")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a CPU linear layer computes ``x`` in: autocast's when it is on, else ``x``'s own."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def usable(x: torch.Tensor) -> bool:
    """Whether a layer with input ``x`` goes through the kernel."""
    return (SWITCH.enabled() and x.device.type == "cpu" and compute_dtype(x) in DTYPES and x.dim() == 2
            and not torch.compiler.is_compiling())


class LinearReLU(torch.autograd.Function):
    """(x [B, K], weight [N, K], bias [N]) -> relu(x weight^T + bias), all of one dtype."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and native_bf16_matmul(x.device):
            out = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu", [], "")
        elif cpu_gemm.uses_openblas(x):
            out = cpu_gemm.linear_relu(x, weight, bias)
        else:
            out = torch.addmm(bias, x, weight.t()).relu_()
        ctx.save_for_backward(x, weight, out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, out = ctx.saved_tensors
        grad_pre, grad_bias = torch.ops.torchrec_models_linear.relu_bias_backward(grad_out, out)
        mm = cpu_gemm.mm if cpu_gemm.uses_openblas(x) else torch.mm
        grad_x = mm(grad_pre, weight) if ctx.needs_input_grad[0] else None
        grad_weight = mm(grad_pre.t(), x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight, grad_bias if ctx.needs_input_grad[2] else None


def linear_relu(x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """``relu(linear(x))`` through the kernel, in autocast's dtype when autocast is on (the weight
    and bias cast as autocast would cast them; their gradients flow back to the fp32 parameters)."""
    dtype = compute_dtype(x)
    with torch.autocast("cpu", enabled=False):
        return LinearReLU.apply(x.to(dtype), linear.weight.to(dtype), linear.bias.to(dtype))
