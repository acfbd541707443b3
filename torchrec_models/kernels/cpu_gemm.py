"""Which library runs the fp32 GEMMs of the CPU MLP layers: torch's (MKL) or OpenBLAS (numpy's).

torch's CPU wheels do fp32 matrix products in MKL, which on an AMD EPYC reaches about half of the
fp32 peak and 70-85% of what OpenBLAS, shipped inside numpy, reaches on the MLP layers' shapes; on
Intel CPUs MKL is the faster one. ``train.cpu_gemm`` chooses: ``torch``, ``openblas``, or ``auto``
(OpenBLAS on AMD CPUs, torch's elsewhere). Only the fp32 products of the MLP kernel's layers
(``kernels/linear_relu.py``) move; OpenBLAS runs single-threaded inside torch's threads
(``blas_gemm_cpu.cpp``). Its sums are another library's, so values differ from torch's in the last bits.
"""
from __future__ import annotations

import ctypes
import functools
import importlib
import platform
from pathlib import Path

import torch

from torchrec_models import runinfo
from torchrec_models.kernels.build import build_extension, build_or_fall_back

SOURCE = Path(__file__).with_name("blas_gemm_cpu.cpp")
# cblas_sgemm as OpenBLAS builds name it: numpy's own (ILP64, prefixed), then plain builds
SGEMM_SYMBOLS = (("scipy_cblas_sgemm64_", True), ("cblas_sgemm64_", True), ("scipy_cblas_sgemm", False),
                 ("cblas_sgemm", False))
_state = {"engine": "torch", "bound": False}


@functools.lru_cache(maxsize=None)
def cpu_vendor() -> str:
    """The x86 vendor string (``AuthenticAMD``, ``GenuineIntel``), or '' where it is not known."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ""
    return runinfo.cpuinfo_field("vendor_id") or ""


def resolve(setting: str) -> str:
    """The engine ``setting`` stands for on this machine."""
    if setting == "auto":
        return "openblas" if cpu_vendor() == "AuthenticAMD" else "torch"
    return setting


def apply(setting: str, device_type: str) -> None:
    """Makes ``setting`` the engine of this process's CPU MLP products (torch's on other devices);
    OpenBLAS that cannot be bound raises for 'openblas' and falls back to torch's for 'auto'."""
    engine = resolve(setting) if device_type == "cpu" else "torch"
    if engine == "openblas" and not _set_up(required=setting == "openblas"):
        engine = "torch"
    _state["engine"] = engine


def engine() -> str:
    return _state["engine"]


def openblas_ready() -> bool:
    """Whether OpenBLAS products can run in this process (set up if needed; the engine unchanged)."""
    return _set_up(required=False)


def _set_up(required: bool) -> bool:
    """Binds OpenBLAS once; a failure raises a ConfigError if ``required``, else logs and returns False."""
    return build_or_fall_back(_bind_openblas, required, "train.cpu_gemm", "'auto' or 'torch'", "OpenBLAS GEMM",
                              "torch's GEMM")


def uses_openblas(*tensors: torch.Tensor) -> bool:
    """Whether a product of ``tensors`` goes to OpenBLAS: the engine is chosen and all are fp32 CPU."""
    return _state["engine"] == "openblas" and all(
        t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)


def _openblas_library() -> str:
    """The file of numpy's OpenBLAS (loaded with numpy), asked for one thread of its own."""
    from threadpoolctl import ThreadpoolController, threadpool_info

    importlib.import_module("numpy")  # loads the library
    found = [lib["filepath"] for lib in threadpool_info() if lib.get("internal_api") == "openblas"]
    if not found:
        raise RuntimeError("no OpenBLAS loaded with numpy")
    path = next((p for p in found if "numpy" in p), found[0])
    ThreadpoolController().select(filepath=path).limit(limits=1)  # other BLAS libraries keep theirs
    return path


def _bind_openblas() -> None:
    if _state["bound"]:
        return
    path = _openblas_library()
    library = ctypes.CDLL(path)
    symbol, int64 = next(((name, wide) for name, wide in SGEMM_SYMBOLS if hasattr(library, name)), (None, False))
    if symbol is None:
        raise RuntimeError(f"{path} exports no cblas_sgemm")
    build_extension(SOURCE)
    torch.ops.torchrec_models_blas.bind(path, symbol, int64)
    _state["bound"] = True


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D fp32 CPU tensors (transposed views pass as BLAS flags, not copies)."""
    return torch.ops.torchrec_models_blas.mm(a, b)


def linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``relu(x weight^T + bias)`` with the bias and ReLU applied to each block of rows in cache."""
    return torch.ops.torchrec_models_blas.linear_relu(x, weight, bias)
