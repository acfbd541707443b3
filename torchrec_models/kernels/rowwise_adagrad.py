"""This project's row-wise Adagrad table update on the CPU, in place of FBGEMM's.

FBGEMM's CPU backward for EXACT_ROWWISE_ADAGRAD runs its JIT-generated update at about 0.5 us a
row on the 2-core benchmark machines, 4-5x its own SGD update over the same rows. The kernel in
``rowwise_adagrad_cpu.cpp`` does the same arithmetic (each row's gradient summed in position order,
h += mean(g^2), w -= lr * g / (sqrt(h) + eps)) over rows in sorted order. It is compiled on first
use with torch's C++ extension builder (cached under ~/.cache/torch_extensions) and registered as
the CPU kernel of FBGEMM's op, so torchrec, the fused optimizer state and checkpoints are as before.
CUDA tables keep FBGEMM's kernels.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from torchrec_models.config import ConfigError, TrainConfig

FBGEMM_OP = "split_embedding_backward_codegen_rowwise_adagrad_cpu"
SOURCE = Path(__file__).with_name("rowwise_adagrad_cpu.cpp")
_lock = threading.Lock()
_state: dict[str, Any] = {"library": None}
log = logging.getLogger(__name__)


def _build() -> None:
    import ninja  # torch's builder runs the `ninja` found on PATH: this interpreter's, even outside a venv shell
    from torch.utils import cpp_extension

    if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]  # one build (and folder) per source
    cpp_extension.load(name=f"torchrec_models_rowwise_adagrad_{digest}", sources=[str(SOURCE)],
                       extra_cflags=["-O3"], is_python_module=False, verbose=False)


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


def install(required: bool) -> bool:
    """Build the kernel and make it FBGEMM's CPU row-wise Adagrad update in this process.
    Returns whether it is in place; a failed build raises if ``required``, else logs and keeps FBGEMM's."""
    with _lock:
        if _state["library"] is not None:
            return True
        try:
            _build()
        except Exception as err:  # no compiler, no ninja, a read-only cache dir
            if required:
                raise ConfigError("train.cpu_table_update", f"'native' could not be built ({err}); "
                                  "use 'auto' or 'fbgemm'") from err
            log.warning("native row-wise Adagrad kernel not built (%s): FBGEMM's CPU kernel is used", err)
            return False
        library = torch.library.Library("fbgemm", "IMPL")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Warning only once for all operators")
            library.impl(FBGEMM_OP, _native_update, "CPU")
        _state["library"] = library
        return True


def uninstall() -> None:
    """FBGEMM's own kernel again (the registration is dropped)."""
    with _lock:
        library = _state["library"]
        if library is not None:
            library._destroy()
            _state["library"] = None


def installed() -> bool:
    return _state["library"] is not None


def apply(cfg: TrainConfig, device_type: str) -> None:
    """Put the kernel ``train.cpu_table_update`` asks for in place, for a run on ``device_type``."""
    if device_type != "cpu" or cfg.embedding_optimizer != "rowwise_adagrad":
        return
    if cfg.cpu_table_update == "fbgemm":
        uninstall()
    else:
        install(required=cfg.cpu_table_update == "native")
