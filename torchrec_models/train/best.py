"""The best evaluation so far: kept as its own checkpoint, and the count that ends a run early."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torchrec_models.train.checkpoint import complete_checkpoints, read_manifest, save_checkpoint

BEST_DIR = "best"


class BestTracker:
    """Compares each evaluation with the best so far (``train.best_metric``); with
    ``checkpoint.keep_best`` saves the model of each new best in ``<checkpoints>/best``, where
    only the latest (the best) is kept and ordinary pruning never looks."""

    def __init__(self, metric: str, lower_is_better: bool, patience: int, root: Path | None, keep: bool) -> None:
        self.metric, self.lower_is_better, self.patience = metric, lower_is_better, patience
        self.root = root / BEST_DIR if (root is not None and keep) else None
        self.best: dict[str, Any] | None = self._saved_best()
        self.evaluations_since_best = 0

    def _saved_best(self) -> dict[str, Any] | None:
        """A resumed run starts from the best its earlier part recorded."""
        found = complete_checkpoints(self.root) if self.root is not None else []
        return read_manifest(found[-1].path).get("best_eval") if found else None

    def better(self, evaluation: dict[str, float]) -> bool:
        if self.best is None:
            return True
        new, old = evaluation[self.metric], self.best[self.metric]
        return new < old if self.lower_is_better else new > old

    def update(self, trainer: Any, step: int, evaluation: dict[str, float], epoch: float | None) -> None:
        """Records ``evaluation`` at ``step``; saves the model when it is a new best (a collective)."""
        if not self.better(evaluation):
            self.evaluations_since_best += 1
            return
        self.evaluations_since_best = 0
        metrics = {k: v for k, v in evaluation.items() if isinstance(v, float)}
        self.best = {"step": step, "epoch": epoch, **metrics, "checkpoint": None}
        if self.root is not None:
            self.best["checkpoint"] = str(self.root / f"step_{step:08d}")
            save_checkpoint(trainer, self.root, step, keep=1, extra={"best_eval": self.best})

    def should_stop(self) -> bool:
        return bool(self.patience) and self.evaluations_since_best >= self.patience
