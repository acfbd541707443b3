"""What a run leaves in its directory: plan.json, config.json, metrics.jsonl, tb/, summary.json.

Only rank 0 writes. Files are written whole (temporary name, then rename), so a reader never
sees half a file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp_path)`` then rename, so a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_npy(path: Path, array: Any) -> None:
    """A numpy array as ``.npy``, written whole."""
    import numpy as np

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would add ".npy" to the temporary name
            np.save(fh, array)

    write_atomically(path, save)


def write_json(path: Path, obj: Any) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


class RunWriter:
    """metrics.jsonl lines and TensorBoard scalars for rank 0; a no-op elsewhere."""

    def __init__(self, run_dir: Path | None, enabled: bool) -> None:
        self.run_dir = run_dir
        self.enabled = enabled and run_dir is not None
        self._metrics = None
        self._tb = None
        if self.enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._metrics = (run_dir / "metrics.jsonl").open("a")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"))

    def log(self, step: int, kind: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._metrics.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        self._metrics.flush()
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self._tb.add_scalar(f"{kind}/{name}", value, step)

    def write(self, name: str, obj: Any) -> None:
        if self.enabled:
            write_json(self.run_dir / name, obj)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._tb.close()
