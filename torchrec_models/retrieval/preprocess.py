"""``preprocess movielens``: ratings -> positives split by time per user, with feature ids.

Output directory (written under a temporary name, renamed when complete):

- ``train_user.npy`` / ``train_item.npy``  int64 [P]: positives (rating >= min_rating) of each
  user's earlier ratings, in time order;
- ``test_user.npy`` / ``test_item.npy``  int64 [T]: positives among each user's last ratings;
- ``seen_user.npy`` / ``seen_item.npy``  int64 [S]: every earlier rating (excluded when ranking);
- ``user_features.npy``  int64 [U, 3]: age, gender, occupation ids (0 = unknown);
- ``item_genre_offsets.npy`` / ``item_genre_values.npy``: genre ids per item (CSR, 0 = none);
- ``user_ids.npy`` / ``item_ids.npy``: the raw ids of indices 0..U-1 / 0..I-1;
- ``meta.json``: counts, the split, table sizes.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchrec_models.retrieval.movielens import USER_FEATURES, MovieLensDataError, RawRatings, read_movielens

META = "meta.json"


@dataclass(frozen=True)
class SplitOptions:
    min_rating: float = 4.0  # a rating at least this is a positive
    test_fraction: float = 0.2  # each user's last fraction of ratings (by time) is the test period


def time_split(user: np.ndarray, timestamps: np.ndarray, fraction: float) -> np.ndarray:
    """True for each user's last ``floor(n * fraction)`` ratings by time (ties by input order)."""
    order = np.lexsort((np.arange(len(user)), timestamps, user))
    counts = np.bincount(user)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(len(user), dtype=np.int64)
    rank[order] = np.arange(len(user)) - first[user[order]]
    return rank >= counts[user] - np.floor(counts[user] * fraction).astype(np.int64)


def _vocab(tokens: list[str]) -> dict[str, int]:
    """Token -> id from 1 in sorted order; 0 stays for unknown or missing."""
    return {t: i + 1 for i, t in enumerate(sorted({t for t in tokens if t}))}


def _user_features(raw: RawRatings, user_ids: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    features = np.zeros((len(user_ids), len(USER_FEATURES)), dtype=np.int64)
    sizes = {}
    for j, name in enumerate(USER_FEATURES):
        vocab = _vocab([row.get(name, "") for row in raw.user_features.values()])
        features[:, j] = [vocab.get(raw.user_features.get(u, {}).get(name, ""), 0) for u in user_ids]
        sizes[name] = len(vocab) + 1
    return features, sizes


def _item_genres(raw: RawRatings, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    vocab = _vocab([g for genres in raw.item_genres.values() for g in genres])
    per_item = [[vocab[g] for g in raw.item_genres.get(i, []) if g in vocab] or [0] for i in item_ids]
    offsets = np.concatenate(([0], np.cumsum([len(g) for g in per_item]))).astype(np.int64)
    return offsets, np.array([g for genres in per_item for g in genres], dtype=np.int64), len(vocab) + 1


def preprocess_movielens(source: Path, out: Path, options: SplitOptions = SplitOptions()) -> dict:
    """Reads ``source`` (any layout :func:`read_movielens` knows), writes ``out``; returns meta."""
    if not 0.0 < options.test_fraction < 1.0:
        raise MovieLensDataError(f"--test-fraction must be in (0, 1), got {options.test_fraction}")
    return preprocess_raw(read_movielens(source), out, options, str(source))


def preprocess_raw(raw: RawRatings, out: Path, options: SplitOptions, source: str) -> dict:
    """The split and the arrays of ratings already read (or generated); writes ``out``."""
    user_ids, user = np.unique(raw.users, return_inverse=True)
    catalogue = np.array(list(raw.item_genres), dtype=raw.items.dtype) if raw.item_genres else raw.items[:0]
    item_ids = np.unique(np.concatenate([raw.items, catalogue]))  # the corpus: rated or listed items
    item = np.searchsorted(item_ids, raw.items)
    test = time_split(user, raw.timestamps, options.test_fraction)
    positive = raw.ratings >= options.min_rating
    order = np.lexsort((np.arange(len(user)), raw.timestamps))  # time order for every output
    pick = {name: order[mask[order]] for name, mask in
            (("train", positive & ~test), ("test", positive & test), ("seen", ~test))}
    if not len(pick["train"]) or not len(pick["test"]):
        raise MovieLensDataError(f"{source}: the split leaves {len(pick['train'])} training and "
                                 f"{len(pick['test'])} test positives; both need some")
    features, feature_sizes = _user_features(raw, user_ids)
    offsets, genres, genre_size = _item_genres(raw, item_ids)
    arrays = {f"{name}_{side}": values[idx] for name, idx in pick.items()
              for side, values in (("user", user), ("item", item))}
    arrays |= {"user_features": features, "item_genre_offsets": offsets, "item_genre_values": genres,
               "user_ids": user_ids, "item_ids": item_ids}
    meta = {"layout": raw.layout, "source": source, "ratings": int(len(user)), "users": int(len(user_ids)),
            "items": int(len(item_ids)), "min_rating": options.min_rating, "test_fraction": options.test_fraction,
            "train_positives": int(len(pick["train"])), "test_positives": int(len(pick["test"])),
            "test_users": int(len(np.unique(arrays["test_user"]))),
            "tables": {"user_id": int(len(user_ids)), **feature_sizes, "item_id": int(len(item_ids)), "genre": genre_size}}
    _write_directory(out, arrays, meta)
    return meta


def _write_directory(out: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise MovieLensDataError(f"{out}: exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, value in arrays.items():
            np.save(tmp / f"{name}.npy", value)
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
