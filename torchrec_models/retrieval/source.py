"""Batches of (user, positive item) pairs from a ``preprocess movielens`` directory.

Features, in table order (``cat_0`` ...): user_id, age, gender, occupation (the user tower),
item_id, genre (the item tower; several genres an item, sum-pooled). A batch's labels are the
positive items' indices (the in-batch softmax needs them); its dense features are empty.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from torchrec_models.config import Config, ConfigError, feature_names
from torchrec_models.data import torchrec_types as tr
from torchrec_models.data.criteo_reader import RowOrder
from torchrec_models.retrieval.metrics import Pairs
from torchrec_models.retrieval.preprocess import META

if TYPE_CHECKING:
    from torchrec.datasets.utils import Batch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

FEATURES = ("user_id", "age", "gender", "occupation", "item_id", "genre")
NEGATIVES_STREAM = 7  # the extra negatives' random stream, apart from any other use of the seed
USER_SIDE = 4


def read_meta(path: str | Path) -> dict:
    meta = Path(path) / META
    if not meta.is_file():
        raise ConfigError("data.path", f"{str(path)!r} has no {META} (run `preprocess movielens` first)")
    try:
        return json.loads(meta.read_text())
    except ValueError as exc:
        raise ConfigError("data.path", f"{meta}: not valid JSON ({exc})") from None


def fill_tables_from_data(cfg: Config) -> None:
    """The tables are the data's: sizes from meta.json (or checked against it when given)."""
    meta = read_meta(cfg.data.path)
    sizes = [int(meta["tables"][name]) for name in FEATURES]
    model = cfg.model
    if model.num_embeddings_per_feature and model.num_embeddings_per_feature != sizes:
        raise ConfigError("model.num_embeddings_per_feature", f"{model.num_embeddings_per_feature} differs from "
                          f"the tables of {cfg.data.path} ({sizes}); leave it empty to take the data's")
    genres = np.load(Path(cfg.data.path) / "item_genre_offsets.npy")
    model.num_embeddings_per_feature = sizes
    model.multi_hot_sizes = [1] * (len(FEATURES) - 1) + [max(1, round(float(np.diff(genres).mean())))]
    model.user_feature_count = USER_SIDE


class MovieLensSource:
    """Training pairs, each rank its slice of every global batch; the corpus and test users for evaluation."""

    def __init__(self, cfg: Config) -> None:
        root = Path(cfg.data.path)
        self.meta = read_meta(root)
        load = lambda name: np.load(root / f"{name}.npy")  # noqa: E731
        self.train_user, self.train_item = load("train_user"), load("train_item")
        self.user_features = load("user_features")
        self.genre_offsets, self.genre_values = load("item_genre_offsets"), load("item_genre_values")
        self.genre_counts = np.diff(self.genre_offsets)
        self.num_users, self.num_items = self.meta["users"], self.meta["items"]
        self.test = Pairs.group(load("test_user"), load("test_item"), self.num_users)
        self.seen = Pairs.group(load("seen_user"), load("seen_item"), self.num_users)
        self.test_users = np.flatnonzero(np.diff(self.test.offsets) > 0)
        self.order = RowOrder(0, len(self.train_user), cfg.train.seed if cfg.data.shuffle else None)
        self.keys = feature_names(len(FEATURES))
        self.extra_negatives, self.seed = cfg.model.extra_negatives, cfg.train.seed

    def train_batches(self, rank: int, world_size: int, batch_size: int, steps: range) -> Iterator[Batch]:
        for step in steps:
            rows = self.order.rows(step, rank, world_size, batch_size)
            yield self.pair_batch(self.train_user[rows], self.train_item[rows], self.negatives(step))

    def negatives(self, step: int) -> np.ndarray:
        """``model.extra_negatives`` items drawn uniformly for ``step``: the same on every rank."""
        rng = np.random.default_rng((self.seed, step, NEGATIVES_STREAM))
        return rng.integers(0, self.num_items, self.extra_negatives)

    def train_examples(self) -> int | None:
        return len(self.train_user)

    def eval_examples(self) -> int:
        return len(self.test_users)

    def label_rate(self) -> float | None:
        return None

    def item_log_q(self) -> torch.Tensor:
        """log of each item's share of the training positives (the in-batch sampling probability)."""
        counts = np.bincount(self.train_item, minlength=self.num_items).astype(np.float64)
        return torch.as_tensor(np.log(np.maximum(counts, 1.0) / counts.sum()), dtype=torch.float32)

    def pair_batch(self, users: np.ndarray, items: np.ndarray, negatives: np.ndarray | None = None) -> Batch:
        """Rows (user, positive item), then one row per extra negative with only its item features;
        labels: the positives' items, then the negatives'."""
        negatives = np.zeros(0, np.int64) if negatives is None else negatives
        all_items = np.concatenate([items, negatives])
        users_or_none = np.concatenate([users, np.full(len(negatives), -1)])
        return tr.Batch(dense_features=torch.zeros(len(all_items), 0),
                        sparse_features=self.features(users_or_none, all_items),
                        labels=torch.as_tensor(all_items, dtype=torch.long))

    def features(self, users: np.ndarray | None, items: np.ndarray | None) -> KeyedJaggedTensor:
        """All six features of rows (user, item); a side given as None, or a user of -1, has no ids."""
        n = len(users) if users is not None else len(items)
        users = np.full(n, -1) if users is None else users
        known = users >= 0
        values, lengths = [], []
        for j in range(USER_SIDE):
            ids = self.user_features[users[known], j - 1] if j else users[known]
            values.append(ids.astype(np.int64))
            lengths.append(known.astype(np.int64))
        if items is None:
            values += [np.zeros(0, np.int64)] * 2
            lengths += [np.zeros(n, np.int64)] * 2
        else:
            starts, counts = self.genre_offsets[items], self.genre_counts[items]
            values += [items, self.genre_values[_ranges(starts, counts)]]
            lengths += [np.ones(n, np.int64), counts]
        return tr.KeyedJaggedTensor.from_lengths_sync(
            keys=self.keys, values=torch.as_tensor(np.concatenate(values), dtype=torch.long),
            lengths=torch.as_tensor(np.concatenate(lengths), dtype=torch.long))


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(s, s + c)`` for each (s, c), without a Python loop."""
    first = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - first + np.repeat(starts, counts)
