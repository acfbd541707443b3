"""This project's row-wise Adagrad table update on the CPU, in place of FBGEMM's.

FBGEMM's CPU backward for EXACT_ROWWISE_ADAGRAD runs on one thread; on the Xeon and the AVX2 EPYC
benchmark machines its JIT-generated update took about 0.5 us a row, 4-5x its own SGD update over
the same rows (on an AMD Zen 4 it is 1.1-1.5x faster per thread than this kernel, which then gains
by its second thread only). The kernel in ``rowwise_adagrad_cpu.cpp`` does the same arithmetic
(each row's gradient summed in position order, h += mean(g^2), w -= lr * g / (sqrt(h) + eps)) over
rows in sorted order, split over the rank's threads by table. It is compiled on first
use with torch's C++ extension builder (cached under ~/.cache/torch_extensions) and registered as
the CPU kernel of FBGEMM's op, so torchrec, the fused optimizer state and checkpoints are as before.
CUDA tables keep FBGEMM's kernels.
"""
from __future__ import annotations

from pathlib import Path

import torch

from torchrec_models.config import TrainConfig
from torchrec_models.kernels.override import CpuOverride

FBGEMM_OP = "split_embedding_backward_codegen_rowwise_adagrad_cpu"
SOURCE = Path(__file__).with_name("rowwise_adagrad_cpu.cpp")


def _native_update(grad_output, host_weights, weights_placements, weights_offsets, D_offsets, max_D,
                   hash_size_cumsum, total_hash_size_bits, indices, offsets, pooling_mode, indice_weights,
                   stochastic_rounding, momentum1_host, momentum1_placements, momentum1_offsets,
                   learning_rate_tensor, eps=0.0, weight_decay=0.0, weight_decay_mode=0, max_norm=0.0,
                   output_dtype=0) -> None:
    """FBGEMM's op signature; weight decay and max-norm (which no config here sets) are refused."""
    if weight_decay or weight_decay_mode or max_norm:
        raise NotImplementedError("the native row-wise Adagrad table update has no weight decay or max norm; "
                                  "set train.cpu_table_update = 'fbgemm'")
    torch.ops.torchrec_models.rowwise_adagrad_backward(
        grad_output, host_weights, weights_offsets, D_offsets, hash_size_cumsum, indices, offsets,
        pooling_mode, indice_weights, momentum1_host, momentum1_offsets, float(learning_rate_tensor), eps)


OVERRIDE = CpuOverride(FBGEMM_OP, SOURCE, _native_update, "row-wise Adagrad table update", "train.cpu_table_update")
install, uninstall, installed = OVERRIDE.install, OVERRIDE.uninstall, OVERRIDE.installed


def apply(cfg: TrainConfig, device_type: str) -> None:
    """Put the kernel ``train.cpu_table_update`` asks for in place, for a run on ``device_type``."""
    if device_type != "cpu" or cfg.embedding_optimizer != "rowwise_adagrad":
        return
    if cfg.cpu_table_update == "fbgemm":
        uninstall()
    else:
        install(required=cfg.cpu_table_update == "native")
