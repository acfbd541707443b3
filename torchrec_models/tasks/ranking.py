"""Ranking (DLRM, DCNv2, projection): click probability; AUC, NE and logloss on held-out examples."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrec_models.config import Config, ModelConfig
from torchrec_models.models.dlrm import build_ranker, set_output_bias
from torchrec_models.train.metrics import EvalMetrics


class RankingTask:
    default_metric = "ne"
    predicts_rows = True
    autocasts_dense = True

    def build_model(self, cfg: ModelConfig, dense_device: torch.device, seed: int,
                    autocast_dtype: torch.dtype | None, table_device: torch.device | str) -> nn.Module:
        return build_ranker(cfg, dense_device, seed, autocast_dtype, table_device)

    def scoring_config(self, cfg: Config, data_dir: Path) -> Config:
        """Preprocessed Criteo data read whole, in file order, as the held-out set."""
        data = replace(cfg.data, kind="criteo", path=str(data_dir), eval_path=str(data_dir), eval_fraction=0.0,
                       shuffle=False)
        return replace(cfg, data=data, train=replace(cfg.train, eval_steps=0, epochs=0, profile_dir=""))

    def export_extras(self, model: nn.Module, cfg: Config, out: Path) -> None:
        return None

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
        if ne is not None and not math.isfinite(ne):
            return [f"eval NE is {ne}: the model's predictions are not finite (training diverged); lower the "
                    "learning rates (README: Training well)"]
        if ne is not None and ne > 1.0:
            return [f"eval NE {ne:.4f} > 1: the model predicts worse than the base rate; lower the learning "
                    "rates, train longer, or check the data (README: Training well)"]
        return []
