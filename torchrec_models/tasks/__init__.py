"""Model families as tasks: what the trainer asks of a family, and which family a config names.

The trainer, checkpoints and the harness are the same for every family; a family supplies its
batches, its data-dependent set-up, its evaluation and what a user must be warned about. A new
family is one module here implementing :class:`Task`, an entry in ``task_for`` and a preset.
"""
from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from torchrec_models.config import Config


class Task(Protocol):
    default_metric: str  # what "best evaluation" means unless train.best_metric says otherwise

    def lower_is_better(self, metric: str) -> bool: ...

    def prepare(self, model: nn.Module, source: Any, cfg: Config) -> None:
        """Data-dependent set-up of the unsharded model, identical on every rank."""

    def evaluate(self, trainer: Any) -> dict[str, float]:
        """The held-out metrics of ``trainer``'s model (a collective: every rank calls it)."""

    def describe(self, result: dict[str, float]) -> str:
        """One line for the log."""

    def warnings(self, result: dict[str, float]) -> list[str]:
        """What a user must not miss about the final model."""


def task_for(cfg: Config) -> Task:
    if cfg.model.arch == "two_tower":
        from torchrec_models.tasks.retrieval import RetrievalTask

        return RetrievalTask()
    from torchrec_models.tasks.ranking import RankingTask

    return RankingTask()
