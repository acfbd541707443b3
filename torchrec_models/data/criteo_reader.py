"""Batches from preprocessed Criteo directories: memory-mapped, sliced per rank, vectorized.

Rank r of W at step s reads positions [s*W*B + r*B, s*W*B + (r+1)*B) of the row order,
wrapping around at the end of the data (one pass = one epoch). With ``data.shuffle`` the
order within each epoch is a pseudo-random permutation keyed by (train.seed, epoch),
computed on the fly (a Feistel network with cycle walking), so no permutation array is
held however many rows there are. Each batch is one gather from the memory-mapped arrays.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from torchrec_models.config import Config, ConfigError, feature_names, table_names
from torchrec_models.data import torchrec_types as tr
from torchrec_models.data.criteo_preprocess import (
    CAT_FEATURES, DENSE_FEATURES, CriteoDataError, array_path, dense_name, read_meta,
)

if TYPE_CHECKING:
    from torchrec.datasets.utils import Batch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

LABEL_RATE_ROWS = 1_000_000  # rows read for the label rate the output bias starts at
MULTI_HOT_SEED = 0  # the synthesized multi-hot ids are a property of the data set, not of the run


@dataclass
class CriteoFiles:
    """The memory-mapped arrays of one preprocessed directory, in file order."""

    directory: Path
    stems: list[str]
    dense: list[np.ndarray]
    sparse: list[np.ndarray]
    labels: list[np.ndarray]
    starts: np.ndarray  # first global row of each file, plus the total at the end

    @property
    def rows(self) -> int:
        return int(self.starts[-1])

    @classmethod
    def open(cls, directory: str | Path, key: str) -> "CriteoFiles":
        """Opens every file set listed in ``meta.json`` (else every ``*_dense.npy``, in natural order)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigError(key, f"{str(directory)!r} is not a directory (run `preprocess criteo` first)")
        meta = read_meta(directory)
        stems = _stems(directory, meta)
        if not stems:
            raise ConfigError(key, f"{str(directory)!r} holds no preprocessed Criteo files (*_dense.npy)")
        arrays = {a: [] for a in ("dense", "sparse", "labels")}
        for stem in stems:
            for name, arr in _open_set(directory, stem, key).items():
                arrays[name].append(arr)
        if meta is not None:
            _check_meta_rows(directory, meta, arrays["dense"])
        starts = np.concatenate(([0], np.cumsum([len(d) for d in arrays["dense"]]))).astype(np.int64)
        if starts[-1] == 0:
            raise ConfigError(key, f"{str(directory)!r} holds no rows")
        return cls(directory, stems, arrays["dense"], arrays["sparse"], arrays["labels"], starts)

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dense [B, 13], sparse [B, 26], labels [B]) of global rows, one gather per file touched."""
        file_of = np.searchsorted(self.starts, rows, side="right") - 1
        if file_of[0] == file_of[-1] and (file_of == file_of[0]).all():
            return self._take(int(file_of[0]), rows - self.starts[file_of[0]])
        parts = [(k, np.flatnonzero(file_of == k)) for k in np.unique(file_of)]
        dense = np.empty((len(rows), self.dense[0].shape[1]), dtype=np.float32)
        sparse = np.empty((len(rows), self.sparse[0].shape[1]), dtype=np.int64)
        labels = np.empty(len(rows), dtype=np.int64)
        for k, where in parts:
            dense[where], sparse[where], labels[where] = self._take(int(k), rows[where] - self.starts[k])
        return dense, sparse, labels

    def labels_of(self, rows: np.ndarray) -> np.ndarray:
        """Labels of sorted global rows, without reading their features."""
        file_of = np.searchsorted(self.starts, rows, side="right") - 1
        return np.concatenate([np.asarray(self.labels[k][rows[file_of == k] - self.starts[k]]).reshape(-1)
                               for k in np.unique(file_of)])

    def _take(self, k: int, local: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of rows ``local`` of file ``k``: a slice when they are one contiguous run."""
        lo = int(local[0])
        if local[-1] - lo == len(local) - 1 and (np.diff(local) == 1).all():
            index: slice | np.ndarray = slice(lo, lo + len(local))
        else:
            index = local
        return (np.array(self.dense[k][index], dtype=np.float32),
                np.array(self.sparse[k][index], dtype=np.int64),
                np.array(self.labels[k][index], dtype=np.int64).reshape(-1))

    def locate(self, row: int) -> tuple[str, int]:
        """(file name of the sparse array, row within it) of a global row, for messages."""
        k = int(np.searchsorted(self.starts, row, side="right") - 1)
        return str(array_path(self.directory, self.stems[k], "sparse")), int(row - self.starts[k])


def _stems(directory: Path, meta: dict | None) -> list[str]:
    if meta is not None:
        return [f["stem"] for f in meta["files"]]
    names = [p.name[: -len("_dense.npy")] for p in directory.glob("*_dense.npy")]
    return sorted(names, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])


def _map_array(path: Path) -> np.ndarray:
    """The memory-mapped array, or one error naming the file when it is cut short or not an array."""
    try:
        return np.load(path, mmap_mode="r")
    except ValueError as exc:
        if "mmap length is greater than file size" in str(exc):
            raise CriteoDataError(f"{path}: shorter than its header says (a copy cut short?); "
                                  "preprocess the input again") from None
        raise CriteoDataError(f"{path}: not a readable .npy array ({exc})") from None


def _check_meta_rows(directory: Path, meta: dict, dense: list[np.ndarray]) -> None:
    """Each file's rows in ``meta.json`` must be the rows its arrays hold."""
    for entry, arr in zip(meta["files"], dense):
        if entry["rows"] != len(arr):
            raise CriteoDataError(
                f"{directory / 'meta.json'}: says {entry['stem']} has {entry['rows']:,} rows but "
                f"{array_path(directory, entry['stem'], 'dense')} holds {len(arr):,}")


def _open_set(directory: Path, stem: str, key: str) -> dict[str, np.ndarray]:
    """One file set, memory-mapped, with its shapes checked."""
    out = {}
    for name, width in (("dense", DENSE_FEATURES), ("sparse", CAT_FEATURES), ("labels", 1)):
        path = array_path(directory, stem, name)
        if not path.is_file():
            raise ConfigError(key, f"{str(path)!r} is missing")
        arr = _map_array(path)
        shape_ok = arr.ndim == 2 and arr.shape[1] == width or (name == "labels" and arr.ndim == 1)
        if not shape_ok:
            raise CriteoDataError(f"{path}: shape {arr.shape}, expected [rows, {width}]")
        out[name] = arr
    lengths = {len(a) for a in out.values()}
    if len(lengths) != 1:
        raise CriteoDataError(f"{directory}/{stem}_*.npy: dense, sparse and labels differ in rows "
                              f"({', '.join(f'{n} {len(a)}' for n, a in out.items())})")
    if not np.issubdtype(out["sparse"].dtype, np.integer):
        raise CriteoDataError(f"{array_path(directory, stem, 'sparse')}: dtype {out['sparse'].dtype} is not integer")
    return out


# ---------------------------------------------------------------- row order


def feistel_permute(index: np.ndarray, n: int, key: tuple[int, ...], rounds: int = 4) -> np.ndarray:
    """A pseudo-random permutation of [0, n) applied to ``index``: a balanced Feistel network on
    the smallest even power of two >= n, cycle-walking until every value is below n."""
    bits = max(2, int(n - 1).bit_length() + (int(n - 1).bit_length() % 2))
    half, mask = bits // 2, np.uint64((1 << (bits // 2)) - 1)
    keys = _round_keys(key, rounds)
    out = index.astype(np.uint64)
    todo = np.ones(len(out), dtype=bool)
    while todo.any():
        x = out[todo]
        left, right = x >> np.uint64(half), x & mask
        for k in keys:
            left, right = right, left ^ (_mix64(right + np.uint64(k)) & mask)
        out[todo] = (left << np.uint64(half)) | right
        todo = out >= n
    return out.astype(np.int64)


def _round_keys(key: tuple[int, ...], rounds: int) -> list[int]:
    """Per-round 64-bit keys from the key tuple (splitmix64 on Python ints)."""
    state, out = 0x9E3779B97F4A7C15, []
    for part in (*key, rounds):
        state = _splitmix64(state ^ (part & 0xFFFFFFFFFFFFFFFF))
    for r in range(rounds):
        out.append(_splitmix64(state + r))
    return out


def _splitmix64(x: int) -> int:
    m = 0xFFFFFFFFFFFFFFFF
    x = (x + 0x9E3779B97F4A7C15) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (wrapping uint64 arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class RowOrder:
    """Maps positions in the stream to rows [first, first + count) of a ``CriteoFiles``."""

    first: int
    count: int
    shuffle_seed: int | None = None

    def rows(self, step: int, rank: int, world_size: int, batch_size: int) -> np.ndarray:
        return self.span(step, world_size * batch_size, rank * batch_size, (rank + 1) * batch_size)

    def span(self, step: int, global_batch: int, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the global batch of ``step``."""
        first = step * global_batch + start
        epoch, pos = np.divmod(np.arange(first, first + stop - start, dtype=np.int64), self.count)
        if self.shuffle_seed is not None:
            for e in np.unique(epoch):
                sel = epoch == e
                pos[sel] = feistel_permute(pos[sel], self.count, (self.shuffle_seed, int(e)))
        return self.first + pos


# ---------------------------------------------------------------- multi-hot


def multi_hot_ids(ids: np.ndarray, feature: int, rows: int, size: int, distribution: str) -> np.ndarray:
    """[B] one-hot ids -> [B, size] ids: slot 0 is the id itself; slot j > 0 is a fixed function of
    (feature, id, j), uniform over the table or Pareto(a=0.25) mod rows, as in the MLPerf DLRM-DCNv2
    reference (which materializes the same kind of lookup table; here it is hashed on the fly)."""
    if size == 1:
        return ids[:, None]
    slots = np.arange(1, size, dtype=np.uint64) + np.uint64((MULTI_HOT_SEED << 40) | (feature << 16))
    h = _mix64(ids.astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15)
               + slots[None, :] * np.uint64(0xD1B54A32D192ED03))
    if distribution == "uniform":
        extra = ((h >> np.uint64(32)) * np.uint64(rows)) >> np.uint64(32)
    else:
        u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        extra = np.minimum(u ** -4.0 - 1.0, 2.0**62).astype(np.int64) % rows
    return np.concatenate([ids[:, None], extra.astype(np.int64)], axis=1)


# ---------------------------------------------------------------- the source


class CriteoSource:
    """Train and eval batches from preprocessed Criteo data (``data.kind = "criteo"``)."""

    def __init__(self, cfg: Config) -> None:
        d = cfg.data
        self.cfg = cfg
        self.train_files = CriteoFiles.open(d.path, "data.path")
        self._check_shape(self.train_files, "data.path")
        if d.eval_path:
            self.eval_files = CriteoFiles.open(d.eval_path, "data.eval_path")
            self._check_shape(self.eval_files, "data.eval_path")
            self.train_order = RowOrder(0, self.train_files.rows)
            self.eval_order = RowOrder(0, self.eval_files.rows)
        else:
            self.eval_files = self.train_files
            self.train_order, self.eval_order = _hold_out(self.train_files.rows, d.eval_fraction)
        if d.shuffle:
            self.train_order.shuffle_seed = cfg.train.seed
        self.table_rows = np.array(cfg.model.table_rows(), dtype=np.int64)
        self.keys = feature_names(cfg.model.num_sparse_features)
        self.hashed_ids = np.zeros(len(self.keys), dtype=np.int64)  # per feature, with out_of_range = "hash"
        self._jagged: dict[int, dict] = {}

    def _check_shape(self, files: CriteoFiles, key: str) -> None:
        m = self.cfg.model
        if m.num_sparse_features != files.sparse[0].shape[1]:
            raise ConfigError("model.num_embeddings_per_feature",
                              f"has {m.num_sparse_features} tables but {key} has {files.sparse[0].shape[1]} "
                              "categorical features")
        if m.dense_in_features != files.dense[0].shape[1]:
            raise ConfigError("model.dense_in_features",
                              f"is {m.dense_in_features} but {key} has {files.dense[0].shape[1]} dense features")

    def train_batches(self, rank: int, world_size: int, batch_size: int, steps: range) -> Iterator[Batch]:
        for step in steps:
            yield self.batch(self.train_files, self.train_order.rows(step, rank, world_size, batch_size))

    def train_span(self, step: int, global_batch: int, start: int, stop: int) -> Batch:
        return self.batch(self.train_files, self.train_order.span(step, global_batch, start, stop))

    def train_examples(self) -> int | None:
        return self.train_order.count

    def eval_examples(self) -> int:
        return self.eval_order.count

    def label_rate(self) -> float | None:
        """The positive fraction of the first (up to LABEL_RATE_ROWS) training rows in file order."""
        first = self.train_order.first
        rows = np.arange(first, first + min(self.train_order.count, LABEL_RATE_ROWS), dtype=np.int64)
        return float(self.train_files.labels_of(rows).mean())

    def eval_batches(self, rank: int, world_size: int, batch_size: int, steps: range) -> Iterator[Batch]:
        for step in steps:
            yield self.batch(self.eval_files, self.eval_order.rows(step, rank, world_size, batch_size))

    def batch(self, files: CriteoFiles, rows: np.ndarray) -> Batch:
        """The batch of the given global rows of ``files``."""
        dense, sparse, labels = files.gather(rows)
        _check_dense(dense, files, rows)
        sparse = self._check_ids(sparse, files, rows)
        return tr.Batch(
            dense_features=torch.from_numpy(dense),
            sparse_features=self._kjt(sparse),
            labels=torch.from_numpy(labels),
        )

    def _check_ids(self, sparse: np.ndarray, files: CriteoFiles, rows: np.ndarray) -> np.ndarray:
        """Ids must be in [0, rows) of their table: an error naming the feature, or hashed and counted."""
        bad = (sparse < 0) | (sparse >= self.table_rows)
        if not bad.any():
            return sparse
        if self.cfg.data.out_of_range == "hash":
            self.hashed_ids += bad.sum(axis=0)
            if not getattr(self, "_warned", False):
                self._warned = True
                warnings.warn(f"data.out_of_range = 'hash': ids beyond their table's rows are hashed "
                              f"(first in {self.keys[int(np.argmax(bad.any(axis=0)))]}); "
                              "CriteoSource.hashed_ids counts them", stacklevel=2)
            return np.mod(sparse, self.table_rows)
        i, f = np.argwhere(bad)[0]
        path, row = files.locate(int(rows[i]))
        raise CriteoDataError(
            f"feature {self.keys[f]} (table {table_names(len(self.keys))[f]}) in {path} row {row}: "
            f"id {int(sparse[i, f])} is outside [0, {int(self.table_rows[f])}); preprocess with --config "
            "of this model, or set data.out_of_range=hash")

    def _kjt(self, sparse: np.ndarray) -> KeyedJaggedTensor:
        """Key-major KJT from [B, features] ids, one-hot or expanded to ``model.multi_hot_sizes``."""
        batch_size = len(sparse)
        sizes = self.cfg.model.multi_hot_sizes if self.cfg.data.multi_hot else [1] * len(self.keys)
        if self.cfg.data.multi_hot:
            rows, dist = self.table_rows, self.cfg.data.multi_hot_distribution
            values = torch.from_numpy(np.concatenate([
                multi_hot_ids(sparse[:, f], f, int(rows[f]), sizes[f], dist).reshape(-1)
                for f in range(len(self.keys))]))
        else:
            values = torch.from_numpy(np.ascontiguousarray(sparse.T).reshape(-1))
        j = self._jagged_parts(batch_size, sizes)
        return tr.KeyedJaggedTensor(keys=self.keys, values=values, lengths=j["lengths"], offsets=j["offsets"],
                                    stride=batch_size, length_per_key=j["length_per_key"],
                                    offset_per_key=j["offset_per_key"], index_per_key=j["index_per_key"])

    def _jagged_parts(self, batch_size: int, sizes: list[int]) -> dict:
        """Lengths and offsets are the same for every batch of a size: made once."""
        if batch_size not in self._jagged:
            lengths = torch.tensor(sizes, dtype=torch.int32).repeat_interleave(batch_size)
            per_key = [s * batch_size for s in sizes]
            self._jagged[batch_size] = {
                "lengths": lengths,
                "offsets": torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).int()]),
                "length_per_key": per_key,
                "offset_per_key": [0, *np.cumsum(per_key).tolist()],
                "index_per_key": {k: i for i, k in enumerate(self.keys)},
            }
        return self._jagged[batch_size]


def _hold_out(rows: int, fraction: float) -> tuple[RowOrder, RowOrder]:
    """The last ``fraction`` of the rows (in file order) for eval, the rest for training."""
    held = int(round(rows * fraction))
    if held < 1 or held >= rows:
        raise ConfigError("data.eval_fraction", f"{fraction} of {rows} rows leaves "
                          f"{rows - held} for training and {held} for eval; both need at least one")
    return RowOrder(0, rows - held), RowOrder(rows - held, held)


def _check_dense(dense: np.ndarray, files: CriteoFiles, rows: np.ndarray) -> None:
    """NaN or infinite dense values are an error naming the feature."""
    finite = np.isfinite(dense)
    if finite.all():
        return
    i, j = np.argwhere(~finite)[0]
    path, row = files.locate(int(rows[i]))
    path = path.replace("_sparse.npy", "_dense.npy")
    raise CriteoDataError(f"dense feature {dense_name(int(j))} in {path} row {row}: value {dense[i, j]} is not finite")
