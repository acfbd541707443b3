"""Whether this machine has fast matrix kernels for the precision a run asks for."""
from __future__ import annotations

import functools

import torch


@functools.cache
def native_bf16_matmul(device: torch.device) -> bool:
    """bf16 matrix products on fast kernels: oneDNN's on a CPU with AVX-512 BF16 or AMX, tensor
    cores on a GPU. Without them (an AVX2-only CPU, say) torch runs bf16 GEMMs on a reference
    path, hundreds of times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def precision_warning(precision: str, device: torch.device) -> str | None:
    """A warning for a precision this device computes far slower than fp32, else None."""
    if precision == "bf16" and not native_bf16_matmul(device):
        return (f"train.precision='bf16': this {device.type.upper()} has no fast bf16 matrix kernels "
                f"(oneDNN reports no bf16 support), so the dense layers run far slower than in fp32; "
                f"use train.precision='fp32' on this machine")
    return None
