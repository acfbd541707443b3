"""Criteo-format TSV files with known structure, for tests, benchmarks and trying the pipeline.

Lines look like the real logs: label, 13 integer counts (log-normal, some negative, some
missing), 26 categorical features as 8-digit hex with Zipf-skewed frequencies, long-tailed
vocabularies and missing values. Labels come from a fixed teacher: per-category main
effects, dense weights and pairwise interactions between a few low-cardinality features
(dot products of per-category factors). A linear model over one-hot features sees only the
main effects; a DLRM, whose dot interaction matches the teacher's, can learn the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchrec_models.data.criteo_preprocess import CAT_FEATURES, DENSE_FEATURES

# Per-feature vocabulary sizes: a few tiny, several mid-size, several long-tailed.
VOCAB_SIZES = (
    1400, 550, 20000, 9000, 300, 20, 8000, 600, 3, 30000, 5000, 15000, 3000,
    25, 7000, 20000, 12, 4000, 2000, 4, 18000, 15, 100, 12000, 40, 9000,
)
INTERACTING = (5, 8, 13, 16, 19, 21)  # low-cardinality features whose factors interact


@dataclass(frozen=True)
class CriteoTeacher:
    """The fixed label model and feature distributions; ``teacher_seed`` fixes all of it."""

    teacher_seed: int = 0
    vocab_sizes: tuple[int, ...] = VOCAB_SIZES
    interacting: tuple[int, ...] = INTERACTING
    zipf_exponent: float = 1.1
    factor_dim: int = 4
    main_scale: float = 0.2
    dense_scale: float = 0.2
    interaction_scale: float = 2.0
    bias: float = -1.2
    params: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.teacher_seed)
        p = {
            "main": [rng.normal(0.0, self.main_scale, v + 1) for v in self.vocab_sizes],  # last = missing
            "factors": {f: rng.normal(0.0, 1.0, (self.vocab_sizes[f] + 1, self.factor_dim))
                        for f in self.interacting},
            "dense_w": rng.normal(0.0, self.dense_scale, DENSE_FEATURES),
            "dense_mu": rng.uniform(0.5, 4.0, DENSE_FEATURES),
            "dense_sigma": rng.uniform(0.5, 1.5, DENSE_FEATURES),
            "dense_missing": rng.uniform(0.0, 0.4, DENSE_FEATURES),
            "cat_missing": np.where(rng.uniform(size=CAT_FEATURES) < 0.3, rng.uniform(0.02, 0.4, CAT_FEATURES), 0.0),
            "hex_salt": rng.integers(1, 2**31, CAT_FEATURES) * 2 + 1,  # odd: ranks map to distinct values
        }
        pairs = len(self.interacting) * (len(self.interacting) - 1) / 2
        p["pair_scale"] = self.interaction_scale / np.sqrt(pairs * self.factor_dim)
        object.__setattr__(self, "params", p)

    def sample(self, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels int [rows], dense int64 [rows, 13] with missing = min int64, category ranks [rows, 26] with missing = -1)."""
        rng = np.random.default_rng([self.teacher_seed, seed])
        p = self.params
        dense = np.floor(np.exp(rng.normal(p["dense_mu"], p["dense_sigma"], (rows, DENSE_FEATURES)))).astype(np.int64) - 1
        dense[:, 1] -= rng.integers(0, 3, rows)  # like Criteo's I2, which has small negative counts
        cats = np.stack([self._zipf(rng, v, rows) for v in self.vocab_sizes], axis=1)
        cats[rng.uniform(size=cats.shape) < p["cat_missing"]] = -1
        logit = self._logit(dense, cats)
        labels = (rng.uniform(size=rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
        dense[rng.uniform(size=dense.shape) < p["dense_missing"]] = np.iinfo(np.int64).min
        return labels, dense, cats

    def _zipf(self, rng: np.random.Generator, vocab: int, rows: int) -> np.ndarray:
        weights = 1.0 / np.arange(1, vocab + 1) ** self.zipf_exponent
        return rng.choice(vocab, size=rows, p=weights / weights.sum())

    def _logit(self, dense: np.ndarray, cats: np.ndarray) -> np.ndarray:
        p = self.params
        x = (np.log1p(np.maximum(dense, 0)) - p["dense_mu"]) / p["dense_sigma"]
        logit = self.bias + x @ p["dense_w"]
        for f in range(CAT_FEATURES):
            logit += p["main"][f][cats[:, f]]  # index -1 is the "missing" entry
        v = np.stack([p["factors"][f][cats[:, f]] for f in self.interacting], axis=1)  # [rows, F, k]
        pair_sum = 0.5 * ((v.sum(axis=1) ** 2).sum(axis=1) - (v ** 2).sum(axis=(1, 2)))
        return logit + p["pair_scale"] * pair_sum * 2.0

    def logit(self, dense: np.ndarray, cats: np.ndarray) -> np.ndarray:
        """The teacher's log-odds for sampled rows (its own AUC is the ceiling a model can reach)."""
        return self._logit(dense, cats)

    def hex_values(self, feature: int, ranks: np.ndarray) -> np.ndarray:
        """The 32-bit value each category rank is written as (distinct per rank)."""
        salt = int(self.params["hex_salt"][feature])
        return ((ranks.astype(np.uint64) + np.uint64(feature * 7919 + 1)) * np.uint64(salt)) & np.uint64(0xFFFFFFFF)


def format_lines(teacher: CriteoTeacher, labels: np.ndarray, dense: np.ndarray, cats: np.ndarray) -> str:
    """Criteo TSV text for sampled rows: empty fields where values are missing."""
    columns = [labels.astype(str).tolist()]
    missing_int = np.iinfo(np.int64).min
    for j in range(DENSE_FEATURES):
        col = dense[:, j].astype(str)
        col[dense[:, j] == missing_int] = ""
        columns.append(col.tolist())
    for f in range(CAT_FEATURES):
        table = np.array([f"{v:08x}" for v in teacher.hex_values(f, np.arange(teacher.vocab_sizes[f]))] + [""])
        columns.append(table[cats[:, f]].tolist())  # rank -1 picks the trailing "" (missing)
    return "".join("\t".join(row) + "\n" for row in zip(*columns))


def write_criteo_tsv(path: Path | str, rows: int, seed: int = 0, teacher: CriteoTeacher | None = None,
                     chunk_rows: int = 100_000) -> Path:
    """Writes ``rows`` lines of Criteo-format TSV to ``path``; ``seed`` picks the sample, ``teacher`` the model."""
    teacher = teacher or CriteoTeacher()
    path = Path(path)
    with path.open("w") as fh:
        for chunk, start in enumerate(range(0, rows, chunk_rows)):
            n = min(chunk_rows, rows - start)
            fh.write(format_lines(teacher, *teacher.sample(n, seed * 1_000_003 + chunk)))
    return path
