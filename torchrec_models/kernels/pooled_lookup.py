"""This project's pooled table lookup on the CPU, so that bf16 runs pool straight into bf16.

FBGEMM's CPU forward writes fp32 or fp16 only. A bf16 step then writes the fp32 pooled tensor,
casts it to bf16 for the interaction, and casts its bf16 gradient back to fp32 for the table
update: three passes over a [batch, features x dim] tensor that bf16 output removes (and two ranks
exchange half the bytes). The kernel in ``pooled_lookup_cpu.cpp`` sums each bag in fp32 in
position order and rounds once, as FBGEMM's fp32 output followed by a cast does. It serves
FBGEMM's forward op in bf16 CPU runs whose row-wise Adagrad update is this project's (that one
reads bf16 gradients); CUDA tables take bf16 output from FBGEMM's own kernels.
"""
from __future__ import annotations

from pathlib import Path

import torch

from torchrec_models.config import Config
from torchrec_models.kernels import rowwise_adagrad
from torchrec_models.kernels.override import CpuOverride
from torchrec_models.tasks import task_for

FBGEMM_OP = "split_embedding_codegen_forward_cpu"
SOURCE = Path(__file__).with_name("pooled_lookup_cpu.cpp")


def _native_lookup(weights, weights_offsets, D_offsets, total_D, hash_size_cumsum, indices, offsets,
                   pooling_mode, indice_weights, output_dtype):
    """FBGEMM's op signature."""
    return torch.ops.torchrec_models_lookup.pooled_lookup(
        weights, weights_offsets, D_offsets, total_D, hash_size_cumsum, indices, offsets, pooling_mode,
        indice_weights, output_dtype)


OVERRIDE = CpuOverride(FBGEMM_OP, SOURCE, _native_lookup, "bf16 pooled lookup", "train.cpu_table_update")
install, uninstall, installed = OVERRIDE.install, OVERRIDE.uninstall, OVERRIDE.installed


def _dense_in_bf16(cfg: Config) -> bool:
    return cfg.train.precision == "bf16" and task_for(cfg).autocasts_dense


def apply(cfg: Config, device_type: str) -> None:
    """In place for a CPU run whose dense part runs in bf16 and whose table update is this
    project's; FBGEMM's forward otherwise."""
    t = cfg.train
    if device_type == "cpu" and _dense_in_bf16(cfg) and rowwise_adagrad.installed() \
            and t.embedding_optimizer == "rowwise_adagrad" and t.cpu_table_update != "fbgemm":
        install(required=t.cpu_table_update == "native")
    else:
        uninstall()


def bf16_output(cfg: Config, device_type: str) -> bool:
    """Whether the tables pool into bf16: runs whose dense part is bf16, on CUDA, and on the CPU
    with this lookup in place."""
    return _dense_in_bf16(cfg) and (device_type == "cuda" or installed())
