"""Chooses the batch source named by ``data.kind`` and hands each rank its slice."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Protocol

import torch

from torchrec_models.config import Config, ConfigError
from torchrec_models.data.synthetic import EVAL_STREAM, TRAIN_STREAM, SyntheticData, SyntheticSpec, rank_batches

if TYPE_CHECKING:
    from torchrec.datasets.utils import Batch


class BatchSource(Protocol):
    """What the trainer reads from: rank ``rank`` of ``world_size`` gets its slice of each
    step's global batch (``world_size * batch_size`` examples). A step number fully fixes the
    batch, so the step is the data position a checkpoint needs."""

    def train_batches(self, rank: int, world_size: int, batch_size: int, steps: range) -> Iterator[Batch]: ...

    def eval_batches(self, rank: int, world_size: int, batch_size: int, steps: range) -> Iterator[Batch]: ...

    def train_span(self, step: int, global_batch: int, start: int, stop: int) -> Batch:
        """Rows [start, stop) of the training batch of ``step`` (``global_batch`` examples in all):
        a rank's share when ranks take uneven shares (``sharding.cpu_balance``)."""

    def train_examples(self) -> int | None:
        """Examples in one pass over the training data (None: an endless stream)."""

    def eval_examples(self) -> int:
        """Examples in the held-out set; positions past it repeat earlier ones and are padding."""

    def label_rate(self) -> float | None:
        """The positive fraction of the training data where it can be read up front, else None."""


class SyntheticSource:
    """Train and eval streams of the synthetic generator, made directly on the training device
    (on a GPU, a batch costs a few kernels instead of a host-side generation and a copy)."""

    def __init__(self, cfg: Config, device: torch.device | str = "cpu") -> None:
        self.data = SyntheticData(SyntheticSpec.from_config(cfg), device)
        self.eval_size = cfg.data.eval_examples

    def train_batches(self, rank: int, world_size: int, batch_size: int, steps: range) -> Iterator[Batch]:
        return rank_batches(self.data, rank, batch_size, steps, TRAIN_STREAM)

    def eval_batches(self, rank: int, world_size: int, batch_size: int, steps: range) -> Iterator[Batch]:
        return rank_batches(self.data, rank, batch_size, steps, EVAL_STREAM)

    def train_span(self, step: int, global_batch: int, start: int, stop: int) -> Batch:
        return self.data.batch(step, start, stop, TRAIN_STREAM)

    def train_examples(self) -> int | None:
        return None

    def eval_examples(self) -> int:
        return self.eval_size

    def label_rate(self) -> float | None:
        return None  # an endless stream: its rate is not read ahead


def make_source(cfg: Config, device: torch.device | str = "cpu") -> BatchSource:
    """The config's batch source; generated data is made on ``device``, files are read on the host."""
    if cfg.data.kind == "synthetic":
        return SyntheticSource(cfg, device)
    if cfg.data.kind == "criteo":
        from torchrec_models.data.criteo_reader import CriteoSource

        return CriteoSource(cfg)
    if cfg.data.kind == "movielens":
        from torchrec_models.retrieval.source import MovieLensSource

        return MovieLensSource(cfg)
    raise ConfigError("data.kind", f"{cfg.data.kind!r} has no reader in this build")
