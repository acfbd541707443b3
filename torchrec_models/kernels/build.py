"""Compiling a kernel source of this package with torch's C++ extension builder (once per source and CPU)."""
from __future__ import annotations

import hashlib
import logging
import os
import platform
from pathlib import Path
from typing import Callable

from torchrec_models.config import ConfigError

log = logging.getLogger(__name__)

# -march=native: the lookup's and update's loops vectorize to the machine's own registers (the
# lookup ran 1.6x faster than its baseline x86-64 build on the benchmark machine); no FMA
# contraction, so sums round as written (and as FBGEMM's do).
CFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"]
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
    """Compiles and loads ``source`` (its ops register on load), cached under ~/.cache/torch_extensions
    in one folder per source and header content, flags and CPU, so an edited source or another CPU
    never loads an old build, and any checkout of the same source loads the same one."""
    import ninja  # torch's builder runs the `ninja` found on PATH: this interpreter's, even outside a venv shell
    from torch.utils import cpp_extension

    if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    headers = sorted(source.parent.glob("*.h"))  # the sources' includes
    key = (source.read_bytes() + b"".join(h.read_bytes() for h in headers) + " ".join(CFLAGS + LDFLAGS).encode()
           + _cpu_signature().encode())
    name = f"torchrec_models_{source.stem}_{hashlib.sha256(key).hexdigest()[:12]}"
    if name in _loaded:
        return
    folder = Path(cpp_extension.get_default_build_root()) / "torchrec_models_sources" / name
    copied = _copied_once([source, *headers], folder)
    # copies: the builder appends its own flags to the lists it is given
    cpp_extension.load(name=name, sources=[str(copied)], extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
                       is_python_module=False, verbose=False)
    _loaded.add(name)


def _copied_once(files: list[Path], folder: Path) -> Path:
    """``files`` copied into ``folder`` (named by their content) unless there already; the first's copy.

    The build compiles the copy, so its command line does not name this checkout: ninja rebuilds
    whenever a command changes, and every clone of the repository would otherwise recompile each
    kernel (~25 s apiece on 2 cores). A copy is made once and never rewritten (link, not replace):
    a newer file would make ninja rebuild a library another rank has loaded.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        target = folder / path.name
        if target.exists():
            continue
        staging = folder / f".{path.name}.{os.getpid()}"
        staging.write_bytes(path.read_bytes())
        try:
            os.link(staging, target)
        except FileExistsError:  # another rank made it first: the same content
            pass
        finally:
            staging.unlink()
    return folder / files[0].name


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
