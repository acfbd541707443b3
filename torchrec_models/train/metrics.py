"""Evaluation metrics from torchrec.metrics: AUC, NE and logloss over all ranks' predictions."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torchrec.metrics.auc import AUCMetric
from torchrec.metrics.metrics_config import RecTaskInfo
from torchrec.metrics.ne import NEMetric

TASK = RecTaskInfo(name="ctr", label_name="label", prediction_name="prediction", weight_name="weight")


class EvalMetrics:
    """Accumulates one evaluation pass; ``compute`` reduces across ranks (a collective)."""

    def __init__(self, world_size: int, rank: int, batch_size: int, num_batches: int,
                 device: torch.device | str = "cpu") -> None:
        window = max(1, world_size * batch_size * num_batches)
        common = dict(world_size=world_size, my_rank=rank, batch_size=batch_size, tasks=[TASK],
                      window_size=window, compute_on_all_ranks=True)
        # the metric states live where the predictions are (and where NCCL can reduce them)
        self.auc = AUCMetric(**common).to(device)
        self.ne = NEMetric(**common, include_logloss=True).to(device)
        self.examples = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """One batch; ``weights`` 0 marks padding, which then counts nowhere."""
        preds = torch.sigmoid(logits.detach().float())
        weights = torch.ones_like(preds) if weights is None else weights.to(preds)
        kwargs = dict(
            predictions={TASK.name: preds},
            labels={TASK.name: labels.float()},
            weights={TASK.name: weights},
        )
        self.auc.update(**kwargs)
        self.ne.update(**kwargs)
        self.examples += weights.sum().to(torch.float64)

    def compute(self) -> dict[str, float]:
        values = {**self.auc.compute(), **self.ne.compute()}
        examples = self.examples.clone()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(examples)
        return {
            "examples": int(examples.item()),
            "auc": _pick(values, "window_auc"),  # the window spans the whole pass
            "ne": _pick(values, "lifetime_ne"),
            # torchrec reports cross entropy in bits; nats match the training loss.
            "logloss": _pick(values, "lifetime_logloss") * math.log(2.0),
        }


def _pick(values: dict[str, torch.Tensor], suffix: str) -> float:
    for key, value in values.items():
        if key.endswith(suffix):
            return float(value)
    raise KeyError(f"torchrec.metrics returned no '{suffix}' (got {sorted(values)})")
