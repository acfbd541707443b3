"""One of FBGEMM's CPU ops served by a kernel of this package while it is installed."""
from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Callable

import torch

from torchrec_models.kernels.build import build_extension, build_or_fall_back


class CpuOverride:
    """Registers ``impl`` as the CPU kernel of ``fbgemm::<op>`` after building ``source``; torchrec and
    FBGEMM's autograd functions then call it in place of FBGEMM's own. ``config_key`` names the
    setting that asked for it in errors."""

    def __init__(self, op: str, source: Path, impl: Callable, what: str, config_key: str):
        self.op, self.source, self.impl, self.what, self.config_key = op, source, impl, what, config_key
        self._lock = threading.Lock()
        self._library: torch.library.Library | None = None

    def build(self) -> None:
        build_extension(self.source)

    def install(self, required: bool) -> bool:
        """Returns whether it is in place; a failed build raises if ``required``, else logs and keeps FBGEMM's."""
        with self._lock:
            if self._library is not None:
                return True
            if not build_or_fall_back(self.build, required, self.config_key, "'auto' or 'fbgemm'", self.what,
                                      "FBGEMM's CPU kernel"):
                return False
            library = torch.library.Library("fbgemm", "IMPL")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Warning only once for all operators")
                library.impl(self.op, self.impl, "CPU")
            self._library = library
            return True

    def uninstall(self) -> None:
        """FBGEMM's own kernel again (the registration is dropped)."""
        with self._lock:
            if self._library is not None:
                self._library._destroy()
                self._library = None

    def installed(self) -> bool:
        return self._library is not None
