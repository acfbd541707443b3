"""Facts recorded with every run: library versions, git sha, hardware, peak memory."""
from __future__ import annotations

import os
import platform
import resource
import subprocess
from importlib import metadata
from pathlib import Path

import torch


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for name, dist in (("torchrec", "torchrec"), ("fbgemm", "fbgemm-gpu-cpu"), ("torchx", "torchx")):
        out[name] = _dist_version(dist)
    if out["fbgemm"] is None:
        out["fbgemm"] = _dist_version("fbgemm-gpu")
    return out


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_sha(root: Path | None = None) -> str | None:
    """HEAD's sha of ``root`` (this checkout by default), with ``-dirty`` appended when tracked
    files differ from it; None outside git."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return (f"{sha}-dirty" if changed.returncode == 1 else sha) or None


def cpuinfo_fields() -> dict[str, str]:
    """The first CPU's keys and values in /proc/cpuinfo (``model name``, ``vendor_id``, ``flags``);
    empty where there is none."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpuinfo_field(name: str) -> str | None:
    """The first value of the key ``name`` in /proc/cpuinfo, None without it."""
    return cpuinfo_fields().get(name)


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or "unknown"


BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_features() -> str:
    """The CPU's generation and what its kernels can use, e.g. ``family 25 model 17, AVX512,
    bf16: avx512_bf16``: model names alone do not tell two EPYC or Xeon generations apart."""
    fields = cpuinfo_fields()
    flags = set(fields.get("flags", "").split())
    bf16 = [f for f in BF16_FLAGS if f in flags]
    return (f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, "
            f"{torch.backends.cpu.get_cpu_capability()}, bf16: {'+'.join(bf16) or 'none'}")


def transparent_huge_pages(path: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> str | None:
    """The kernel's transparent huge page mode (``always``, ``madvise``, ``never``), None where
    there is none: ``train.cpu_huge_pages`` needs one other than ``never``."""
    try:
        with open(path) as f:
            words = f.read().split()
    except OSError:
        return None
    chosen = [w.strip("[]") for w in words if w.startswith("[")]
    return chosen[0] if chosen else None


def hardware() -> dict[str, object]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cpu_features": cpu_features(), "cores": cores, "gpu": gpu,
            "gpu_count": torch.cuda.device_count(), "transparent_huge_pages": transparent_huge_pages()}


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    Read from VmHWM, which belongs to this process image; getrusage's ru_maxrss survives
    exec and so can report the peak of the parent that spawned this rank.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def current_rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def peak_device_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
