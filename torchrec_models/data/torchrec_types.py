"""torchrec's batch types (``Batch``, ``KeyedJaggedTensor``), imported when first used.

Importing torchrec takes 3-4 s. The CLI checks a run (config, data files, resume point) in its
own process before it starts the ranks, and makes no batch there: the data sources reach these
types through this module, so that check does not pay for importing torchrec.
"""
from __future__ import annotations

from typing import Any

_WHERE = {"Batch": "torchrec.datasets.utils", "KeyedJaggedTensor": "torchrec.sparse.jagged_tensor"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # later lookups find it without this function
    return value
