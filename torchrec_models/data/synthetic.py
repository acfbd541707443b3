"""The embedded default data set: deterministic, Zipf-skewed, with labels from a planted teacher.

Every value is a function of (seed, stream, step, global example index, slot), so rank r
of W makes rows [r*B, (r+1)*B) of the global batch of step s, and one process with batch
W*B makes the same global batch. Labels come from a fixed teacher (per-id scores, dense
weights and pairwise feature interactions), so there is something to learn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

from torchrec_models.config import Config, feature_names
from torchrec_models.data import torchrec_types as tr
from torchrec_models.data.hashing import hash_coords, uniform, uniform_extended

if TYPE_CHECKING:
    from torchrec.datasets.utils import Batch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

TRAIN_STREAM, EVAL_STREAM = 0, 1
_ID_SCRAMBLE = 2654435761  # prime; makes hot ids land anywhere in a table
_MAX_SCORE_TABLE_ROWS = 1 << 24  # up to 128 MiB of float64 teacher scores per process


@dataclass(frozen=True)
class SyntheticSpec:
    """What the generator needs to know, taken from the run config."""

    seed: int
    table_rows: tuple[int, ...]
    pooling: tuple[int, ...]
    dense_features: int
    zipf_exponent: float
    variable_pooling: bool
    label_noise: float

    @classmethod
    def from_config(cls, cfg: Config) -> "SyntheticSpec":
        return cls(
            seed=cfg.train.seed,
            table_rows=tuple(cfg.model.table_rows()),
            pooling=tuple(cfg.model.multi_hot_sizes),
            dense_features=cfg.model.dense_in_features,
            zipf_exponent=cfg.data.zipf_exponent,
            variable_pooling=cfg.data.variable_pooling,
            label_noise=cfg.data.label_noise,
        )


class SyntheticData:
    """Makes any row range of the global batch of any step, train or eval stream."""

    def __init__(self, spec: SyntheticSpec, device: torch.device | str = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.keys = feature_names(len(spec.table_rows))
        teacher = torch.Generator().manual_seed(spec.seed * 7919 + 17)
        f = len(spec.table_rows)
        self._id_weight = torch.randn(f, generator=teacher, dtype=torch.float64) * 2.0 / math.sqrt(f)
        self._dense_weight = torch.randn(spec.dense_features, generator=teacher, dtype=torch.float64)
        self._dense_weight *= 1.5 / math.sqrt(spec.dense_features)
        self._pair_weight = torch.randn(f, generator=teacher, dtype=torch.float64) * 1.5 / math.sqrt(f)
        self._id_weight, self._dense_weight, self._pair_weight = (
            w.to(self.device) for w in (self._id_weight, self._dense_weight, self._pair_weight))
        self._score_table, self._score_offsets = self._score_lookup()
        self._slots = None if spec.variable_pooling else _SlotLayout(spec, self.device)

    def _score_lookup(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Every id's teacher score, precomputed once when all tables together are small enough
        (the same values the hash gives, read back faster than they are recomputed)."""
        rows = list(self.spec.table_rows)
        if sum(rows) > _MAX_SCORE_TABLE_ROWS:
            return None, None
        offsets = torch.tensor([0] + rows[:-1], device=self.device).cumsum(0)
        # float32 holds these scores exactly ((2k + 1 - 2**24) / 2**24), in half the bytes to gather from
        table = torch.cat([(uniform(self.spec.seed, 3, f, torch.arange(n, device=self.device)) * 2.0 - 1.0).float()
                           for f, n in enumerate(rows)])
        return table, offsets

    def batch(self, step: int, start: int, stop: int, stream: int = TRAIN_STREAM) -> Batch:
        """Rows [start, stop) of the global batch of ``step``, made on this generator's device."""
        rows = torch.arange(start, stop, dtype=torch.int64, device=self.device)
        key = (self.spec.seed, stream, step)
        dense = self._dense(key, rows)
        if self._slots is not None:
            kjt, pooled_scores = self._sparse_fixed(key, rows)
        else:
            lengths, ids, pooled_scores = self._sparse(key, rows)
            kjt = tr.KeyedJaggedTensor.from_lengths_sync(keys=self.keys, values=ids, lengths=lengths)
        labels = self._labels(key, rows, dense, pooled_scores)
        return tr.Batch(dense_features=dense.float(), sparse_features=kjt, labels=labels)

    def _sparse_fixed(self, key, rows) -> tuple[KeyedJaggedTensor, torch.Tensor]:
        """The ids and mean teacher scores of every feature drawn as one [rows, slots] grid: the
        same values as ``_sparse`` (the hash of (feature, row) is made once per feature and
        gathered to its slots), in a few dozen tensor ops instead of a few dozen per pooling size."""
        layout = self._slots
        per_feature = hash_coords(*key, 2, layout.features[None, :], rows[:, None])  # [rows, features], layout order
        per_slot = per_feature.to(torch.int32)  # same 32 bits
        if not layout.one_hot:
            per_slot = per_slot.repeat_interleave(layout.feature_slots, dim=1)
        u = uniform_extended(per_slot, layout.slot_index[None, :])
        ids = self._zipf_ids(u, layout.slot_rows[None, :])  # [rows, slots], slots grouped by pooling size
        id_scores = self._id_scores(layout.slot_feature[None, :], ids)
        scores = self._mean_scores(id_scores)
        values, lengths, per_key = layout.key_major(ids)
        kjt = tr.KeyedJaggedTensor(keys=self.keys, values=values, lengths=lengths, stride=len(rows),
                                   length_per_key=per_key)
        return kjt, scores

    def _mean_scores(self, id_scores: torch.Tensor) -> torch.Tensor:
        """Each feature's mean teacher score over its slots, [rows, features], from a one-grid draw."""
        rows = id_scores.size(0)
        means = [_mean_over_slots(id_scores[:, start:start + len(group) * pooling], pooling)
                 for start, pooling, group in self._slots.groups]
        if self._slots.one_group_in_feature_order:
            return means[0]  # one pooling size: the grid is already in feature order
        scores = torch.empty(rows, len(self.keys), dtype=torch.float64, device=self.device)
        for (_, _, group), mean in zip(self._slots.groups, means):
            scores[:, group] = mean
        return scores

    def _dense(self, key: tuple[int, int, int], rows: torch.Tensor) -> torch.Tensor:
        cols = torch.arange(self.spec.dense_features, device=self.device)
        u = uniform(*key, 0, rows[:, None], cols[None, :])
        return torch.log1p(-torch.log(u))  # log(1 + Exp(1)) counts, like Criteo's transformed dense

    def _sparse(self, key, rows):
        """Key-major lengths and ids, and each example's mean teacher score per feature.

        Features that share a pooling size are drawn together, as one [rows, features, slots] grid.
        """
        num_features = len(self.spec.table_rows)
        lengths_by_f: list = [None] * num_features
        ids_by_f: list = [None] * num_features
        on = {"device": self.device}
        scores = torch.empty(len(rows), num_features, dtype=torch.float64, **on)
        for pooling, group in _pooling_groups(self.spec.pooling):
            f = torch.tensor(group, **on)[None, :, None]
            n_rows = torch.tensor([self.spec.table_rows[i] for i in group], **on)[None, :, None]
            slots = torch.arange(pooling, **on)[None, None, :]
            r = rows[:, None, None]
            if self.spec.variable_pooling:
                lengths = 1 + hash_coords(*key, 1, f, r) % pooling  # [rows, group, 1]
            else:
                lengths = torch.full((len(rows), len(group), 1), pooling, dtype=torch.int64, **on)
            ids = self._zipf_ids(uniform(*key, 2, f, r, slots), n_rows)
            id_scores = self._id_scores(f, ids)
            mask = slots < lengths if self.spec.variable_pooling else None
            if mask is not None:
                id_scores = id_scores * mask
            scores[:, group] = id_scores.sum(2) / lengths[..., 0]
            for j, feature in enumerate(group):
                lengths_by_f[feature] = lengths[:, j, 0]
                ids_by_f[feature] = ids[:, j].reshape(-1) if mask is None else ids[:, j][mask[:, j]]
        return torch.cat(lengths_by_f), torch.cat(ids_by_f), scores

    def _id_scores(self, f: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The teacher's score in [-1, 1) of each id: looked up where the tables are small, else hashed."""
        if self._score_table is None:
            return uniform(self.spec.seed, 3, f, ids) * 2.0 - 1.0
        flat = (self._score_offsets[f] + ids).reshape(-1)
        return self._score_table.index_select(0, flat).view(ids.shape).double()

    def _zipf_ids(self, u: torch.Tensor, n_rows: torch.Tensor) -> torch.Tensor:
        """Inverse-CDF draw from a continuous power law over [1, n+1), then a fixed scramble."""
        a = self.spec.zipf_exponent
        n = n_rows.double()
        if abs(a - 1.0) < 1e-9:
            x = torch.pow(n + 1.0, u)
        else:
            top = torch.pow(n + 1.0, 1.0 - a)
            x = torch.pow((top - 1.0) * u + 1.0, 1.0 / (1.0 - a))
        rank = torch.minimum((x.floor().long() - 1).clamp_(min=0), n_rows - 1)
        return (rank * _ID_SCRAMBLE + 12345) % n_rows

    def _labels(self, key, rows, dense, scores) -> torch.Tensor:
        logit = scores @ self._id_weight + (dense - dense.new_tensor(0.6)) @ self._dense_weight
        logit = logit + (scores * scores.roll(1, dims=1)) @ self._pair_weight * 4.0
        label = (uniform(*key, 4, rows) < torch.sigmoid(logit)).long()
        if self.spec.label_noise:
            flip = uniform(*key, 5, rows) < self.spec.label_noise
            label = torch.where(flip, 1 - label, label)
        return label


class _SlotLayout:
    """Where each feature's slots sit in the one-grid draw (fixed pooling): grouped by pooling
    size as ``_sparse`` draws them, and how to read them back key-major for the KJT."""

    def __init__(self, spec: SyntheticSpec, device: torch.device) -> None:
        self.groups: list[tuple[int, int, list[int]]] = []  # (first slot, pooling, features)
        slot_feature, slot_index, start = [], [], 0
        for pooling, group in _pooling_groups(spec.pooling):
            self.groups.append((start, pooling, group))
            for feature in group:
                slot_feature += [feature] * pooling
                slot_index += list(range(pooling))
            start += len(group) * pooling
        self.first_slot = {f: s + group.index(f) * p for s, p, group in self.groups for f in group}
        self.pooling = list(spec.pooling)
        on = {"device": device, "dtype": torch.int64}
        in_layout = [f for _, _, group in self.groups for f in group]
        self.features = torch.tensor(in_layout, **on)
        self.feature_slots = torch.tensor([spec.pooling[f] for f in in_layout], **on)
        self.one_hot = all(p == 1 for p in spec.pooling)
        self.one_group_in_feature_order = in_layout == list(range(len(spec.pooling))) and len(self.groups) == 1
        self.slot_feature = torch.tensor(slot_feature, **on)
        self.slot_index = torch.tensor(slot_index, **on)
        self.slot_rows = torch.tensor([spec.table_rows[f] for f in slot_feature], **on)
        self._by_rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # row count -> (index, lengths)

    def key_major(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(values, lengths, values per key) of a [rows, slots] grid in the KJT's key-major order:
        one gather (a launch, not one copy per feature, on a GPU) through an index kept per row count."""
        rows = ids.size(0)
        if rows not in self._by_rows:
            self._by_rows[rows] = self._key_major_index(rows, ids.device)
        index, lengths = self._by_rows[rows]
        per_key = [rows * p for p in self.pooling]
        if self.one_group_in_feature_order and self.pooling[0] > 1:
            # one pooling size: key-major is the grid's transpose, a copy of runs of ``pooling`` ids
            # (2048 rows x 8 features x 100: 0.6 ms against the gather's 2.9; one-hot: no faster)
            grid = ids.view(rows, len(self.pooling), self.pooling[0])
            return grid.transpose(0, 1).reshape(-1), lengths, per_key
        return ids.reshape(-1).index_select(0, index), lengths, per_key

    def _key_major_index(self, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each key-major value sits in the flattened [rows, slots] grid, and the lengths."""
        slots = sum(self.pooling)
        row_starts = torch.arange(rows, dtype=torch.int64, device=device)[:, None] * slots
        blocks = [(row_starts + torch.arange(self.first_slot[f], self.first_slot[f] + p, device=device)).reshape(-1)
                  for f, p in enumerate(self.pooling)]
        lengths = torch.cat([torch.full((rows,), p, dtype=torch.int64, device=device) for p in self.pooling])
        return torch.cat(blocks), lengths


def _mean_over_slots(grid: torch.Tensor, pooling: int) -> torch.Tensor:
    """[rows, features * pooling] -> [rows, features]: the mean of each feature's ``pooling`` slots."""
    if pooling == 1:
        return grid  # the mean of one value, without two passes over it
    return grid.reshape(grid.size(0), -1, pooling).sum(2) / pooling


def _pooling_groups(pooling: tuple[int, ...]) -> list[tuple[int, list[int]]]:
    """(pooling size, features with it), by pooling size."""
    groups: dict[int, list[int]] = {}
    for feature, size in enumerate(pooling):
        groups.setdefault(size, []).append(feature)
    return sorted(groups.items())


def rank_batches(
    data: SyntheticData, rank: int, batch_size: int, steps: range, stream: int = TRAIN_STREAM
) -> Iterator[Batch]:
    """This rank's slice of the global batch for each step."""
    for step in steps:
        yield data.batch(step, rank * batch_size, (rank + 1) * batch_size, stream)
