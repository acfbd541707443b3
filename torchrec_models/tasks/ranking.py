"""Ranking (DLRM, DCNv2, projection): click probability; AUC, NE and logloss on held-out examples."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchrec_models.config import Config
from torchrec_models.models import set_output_bias
from torchrec_models.train.metrics import EvalMetrics

METRICS = ("auc", "ne", "logloss")


class RankingTask:
    default_metric = "ne"

    def lower_is_better(self, metric: str) -> bool:
        return metric in ("ne", "logloss")

    def prepare(self, model: nn.Module, source: Any, cfg: Config) -> None:
        rate = source.label_rate()
        if rate is not None and cfg.model.output_bias == "label_rate":
            set_output_bias(model, rate)

    @torch.no_grad()
    def evaluate(self, trainer: Any) -> dict[str, float]:
        """Over the examples of ``trainer.eval_plan``; padding carries weight 0."""
        t, plan, env = trainer.cfg.train, trainer.eval_plan, trainer.env
        model = trainer.plain_model()
        model.eval()
        metrics = EvalMetrics(env.world_size, env.rank, t.batch_size, plan.steps, env.device)
        batches = trainer.source.eval_batches(env.rank, env.world_size, t.batch_size, range(plan.steps))
        for i, batch in enumerate(batches):
            _, (_, logits, labels) = model(batch.to(env.device))
            metrics.update(logits, labels, plan.weights(i, env.rank, env.device))
        model.train()
        return metrics.compute()

    def describe(self, result: dict[str, float]) -> str:
        return f"auc {result['auc']:.4f}  ne {result['ne']:.4f}  logloss {result['logloss']:.4f}"

    def warnings(self, result: dict[str, float]) -> list[str]:
        ne = result.get("ne")
        if ne is not None and ne > 1.0:
            return [f"eval NE {ne:.4f} > 1: the model predicts worse than the base rate; lower the learning "
                    "rates, train longer, or check the data (README: Training well)"]
        return []
