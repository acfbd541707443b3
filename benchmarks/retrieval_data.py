"""Generated MovieLens-layout data sets for the ``retrieval`` suite, made once and reused.

They live under ``$TORCHREC_MODELS_BENCH_DATA`` (default: the system temp folder), named by their
shape and seed, so a rerun of the suite does not regenerate them.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def bench_data_root() -> Path:
    return Path(os.environ.get("TORCHREC_MODELS_BENCH_DATA", Path(tempfile.gettempdir()) / "torchrec-models-bench"))


def synthetic_movielens(users: int, items: int, per_user: int, seed: int = 0) -> Path:
    """The preprocessed directory of ``synthetic_ratings(users, items, per_user, seed)``."""
    from torchrec_models.retrieval.preprocess import META, SplitOptions, preprocess_raw
    from torchrec_models.retrieval.synthetic import synthetic_ratings

    out = bench_data_root() / f"movielens-synthetic-u{users}-i{items}-k{per_user}-s{seed}"
    if not (out / META).is_file():
        raw = synthetic_ratings(users, items, per_user, seed)
        preprocess_raw(raw, out, SplitOptions(), f"synthetic seed {seed}")
    return out
