"""Compiling a kernel source of this package with torch's C++ extension builder (once per source and CPU)."""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Callable

from torchrec_models.config import ConfigError

log = logging.getLogger(__name__)

# -march=native: the lookup's and update's loops vectorize to the machine's own registers (the
# lookup ran 1.6x faster than its baseline x86-64 build on the benchmark machine); no FMA
# contraction, so sums round as written (and as FBGEMM's do). TORCHREC_MODELS_KERNEL_ARCH names
# another -march (`make test-avx2` builds for x86-64-v3, AVX2 with FMA, to test those code paths).
ARCH_VARIABLE = "TORCHREC_MODELS_KERNEL_ARCH"


def cflags() -> list[str]:
    return ["-O3", f"-march={os.environ.get(ARCH_VARIABLE) or 'native'}", "-ffp-contract=off", "-fopenmp"]


# at::parallel_for is an OpenMP loop compiled into the caller: without -fopenmp it runs on one
# thread. Linked against libgomp.so.1, which resolves to the copy torch has already loaded.
LDFLAGS = ["-fopenmp"]
_loaded: set[str] = set()  # builds this process has loaded: their ops register once per process


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags: a build for one CPU is never loaded on another."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return platform.machine() + "".join(sorted({line for line in lines if line.startswith(wanted)}))


def build_extension(source: Path) -> None:
    """Compiles and loads ``source`` (its ops register on load).

    Each build is kept as ~/.cache/torch_extensions/torchrec_models/NAME.so, NAME hashing the
    source and header content, flags, CPU, torch and Python versions: an edited source or another
    CPU never loads an old build, and every checkout and virtual environment with the same ones
    loads the same library without compiling (torch's builder alone recompiles whenever a path in
    its command line changes: ~25 s a kernel on 2 cores for each fresh clone).
    """
    import torch
    from torch.utils import cpp_extension

    name = _build_name(source)
    if name in _loaded:
        return
    root = Path(cpp_extension.get_default_build_root()) / "torchrec_models"
    library = root / f"{name}.so"
    if library.exists():
        torch.ops.load_library(str(library))
    else:
        _compile_and_load(source, name, root / name, library)
    _loaded.add(name)


def _build_name(source: Path) -> str:
    import torch

    headers = b"".join(path.read_bytes() for path in sorted(source.parent.glob("*.h")))  # the sources' includes
    key = b"\0".join([source.read_bytes(), headers, " ".join(cflags() + LDFLAGS).encode(), _cpu_signature().encode(),
                      torch.__version__.encode(), platform.python_version().encode()])
    return f"torchrec_models_{source.stem}_{hashlib.sha256(key).hexdigest()[:12]}"


def _compile_and_load(source: Path, name: str, build_dir: Path, library: Path) -> None:
    """Builds and loads ``source`` with torch's builder in ``build_dir``, then keeps the library as
    ``library``, put there in one rename: no process ever loads a half-written file."""
    import ninja  # torch's builder runs the `ninja` found on PATH: this interpreter's, even outside a venv shell
    from torch.utils import cpp_extension

    if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    build_dir.mkdir(parents=True, exist_ok=True)
    # copies: the builder appends its own flags to the lists it is given
    cpp_extension.load(name=name, sources=[str(source)], extra_cflags=cflags(), extra_ldflags=list(LDFLAGS),
                       build_directory=str(build_dir), is_python_module=False, verbose=False)
    staging = library.with_name(f".{library.name}.{os.getpid()}")
    shutil.copyfile(build_dir / f"{name}.so", staging)
    os.replace(staging, library)


def build_or_fall_back(build: Callable[[], None], required: bool, config_key: str, choices: str, what: str,
                       fallback: str) -> bool:
    """Runs ``build``; returns whether it succeeded. A failure raises a ConfigError naming
    ``config_key`` (and the other ``choices``) if the native kernel was ``required``, else logs that
    ``fallback`` is used."""
    try:
        build()
        return True
    except Exception as err:  # no compiler, no ninja, a read-only cache dir
        if required:
            raise ConfigError(config_key, f"'native' could not be built ({err}); use {choices}") from err
        log.warning("native %s not built (%s): %s is used", what, err, fallback)
        return False
