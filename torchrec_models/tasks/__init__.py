"""Model families as tasks: what the trainer asks of a family, and which family a config names.

The trainer, checkpoints and the harness are the same for every family; a family supplies its
batches, its data-dependent set-up, its evaluation and what a user must be warned about. A new
family is one module here implementing :class:`Task`, an entry in ``task_for`` and a preset.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from torchrec_models.config import Config, ModelConfig


class Task(Protocol):
    default_metric: str  # what "best evaluation" means unless train.best_metric says otherwise
    predicts_rows: bool  # whether ``predict`` (one score per data row) applies
    autocasts_dense: bool  # whether train.precision = "bf16" runs its dense part in bf16 (its tables may then pool into bf16)

    def build_model(self, cfg: ModelConfig, dense_device: torch.device, seed: int,
                    autocast_dtype: torch.dtype | None, table_device: torch.device | str) -> nn.Module:
        """Tables on ``table_device`` (meta: the sharder materializes shards), dense part seeded."""

    def scoring_config(self, cfg: Config, data_dir: Path) -> Config:
        """A checkpoint's run config, set to evaluate (or predict) the data in ``data_dir``."""

    def export_extras(self, model: nn.Module, cfg: Config, out: Path) -> None:
        """Files ``export`` writes beside the state dict (none, or e.g. item vectors)."""

    def lower_is_better(self, metric: str) -> bool: ...

    def prepare(self, model: nn.Module, source: Any, cfg: Config) -> None:
        """Data-dependent set-up of the unsharded model, identical on every rank."""

    def evaluate(self, trainer: Any) -> dict[str, float]:
        """The held-out metrics of ``trainer``'s model (a collective: every rank calls it)."""

    def describe(self, result: dict[str, float]) -> str:
        """One line for the log."""

    def warnings(self, result: dict[str, float]) -> list[str]:
        """What a user must not miss about the final model."""


def task_for_arch(arch: str) -> Task:
    """The one place that maps a ``model.arch`` to its family."""
    if arch == "two_tower":
        from torchrec_models.tasks.retrieval import RetrievalTask

        return RetrievalTask()
    from torchrec_models.tasks.ranking import RankingTask

    return RankingTask()


def task_for(cfg: Config) -> Task:
    return task_for_arch(cfg.model.arch)
