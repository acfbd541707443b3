"""Python's cyclic garbage collector kept off the objects that live as long as the process.

torch, torchrec and their dependencies leave ~300k objects the collector tracks. Every full
collection walks all of them (0.2 s each on a 2-core EPYC, four of them in a 100-step Criteo run:
a stalled step on one rank stalls every rank at the next collective), and so does the
interpreter's final collection at exit (0.5-1 s per process, on every launch). Frozen once a
process has imported what it runs with, they are out of the collector's sight;
objects made afterwards are collected as usual.
"""
from __future__ import annotations

import gc


def freeze_long_lived() -> int:
    """Moves every object the collector tracks now into its permanent generation; their count."""
    gc.freeze()
    return gc.get_freeze_count()
