"""Whether one of this package's CPU kernels is in use: built on first use, then switched on or off."""
from __future__ import annotations

import threading
from typing import Callable

from torchrec_models.kernels.build import build_or_fall_back


class KernelSwitch:
    """The on/off state of a kernel that replaces a torch composition, chosen by ``config_key``
    (``auto``, ``native`` or ``torch``). ``build`` compiles and loads it; it runs once per process."""

    def __init__(self, build: Callable[[], None], config_key: str, what: str) -> None:
        self.build, self.config_key, self.what = build, config_key, what
        self.built = False
        self._on = False
        self._lock = threading.Lock()

    def enable(self, required: bool) -> bool:
        """Builds the kernel once and uses it from now on; a failed build raises if ``required``,
        else logs and keeps the torch composition. Returns whether it is in use."""
        with self._lock:
            if not self.built:
                if not build_or_fall_back(self.build, required, self.config_key, "'auto' or 'torch'", self.what,
                                          "the torch composition"):
                    return False
                self.built = True
            self._on = True
            return True

    def disable(self) -> None:
        self._on = False

    def enabled(self) -> bool:
        return self._on

    def apply(self, setting: str, device_type: str) -> None:
        """In use for a CPU run unless ``setting`` is 'torch'; 'native' makes a failed build an error."""
        if device_type == "cpu" and setting != "torch":
            self.enable(required=setting == "native")
        else:
            self.disable()
