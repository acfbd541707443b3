"""Optimizers: fused table optimizers (inside FBGEMM's TBE), a dense optimizer, the LR schedule.

Tables on the fused kernel are updated in the backward pass by FBGEMM; tables on the dense
kernel (and data-parallel replicas) get a torch optimizer of the same family, so
``train.embedding_optimizer`` means the same arithmetic whatever the kernel.
"""
from __future__ import annotations

from typing import Any

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from torchrec_models.config import TrainConfig

EPS = 1e-8
_FUSED_TYPES = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "sgd": EmbOptimType.EXACT_SGD,
}


def embedding_lr(cfg: TrainConfig) -> float:
    return cfg.embedding_lr or cfg.lr


def fused_params(cfg: TrainConfig, bf16_output: bool = False) -> dict[str, Any]:
    """What the sharder hands FBGEMM for tables on the fused kernel; ``bf16_output``: pool into bf16."""
    params: dict[str, Any] = {
        "optimizer": _FUSED_TYPES[cfg.embedding_optimizer],
        "learning_rate": embedding_lr(cfg),
    }
    if cfg.embedding_optimizer != "sgd":
        params["eps"] = EPS
    if bf16_output:
        params["output_dtype"] = SparseType.BF16
    return params


def _torch_optimizer(kind: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """torch's fused implementation where it has one for the parameters' device (one kernel over
    every parameter per step instead of a handful of element-wise ops per parameter), else its
    default (foreach) one: torch fuses Adagrad on the CPU but not on CUDA."""
    if kind == "rowwise_adagrad":
        return RowWiseAdagrad(params, lr=lr, eps=EPS)
    if kind == "adagrad":
        fused = not any(p.is_cuda for p in params)
        return torch.optim.Adagrad(params, lr=lr, eps=EPS, fused=fused or None)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.SGD(params, lr=lr, fused=True)


def is_table_param(name: str) -> bool:
    return ".embedding_bag_collection." in name or name.startswith("embedding_bag_collection.")


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> CombinedOptimizer:
    """The fused table optimizers plus torch optimizers for dense weights and dense-kernel tables."""
    named = dict(in_backward_optimizer_filter(model.named_parameters()))
    groups: list[tuple[str, Any]] = []
    fused = getattr(model, "fused_optimizer", None)
    if fused is not None:
        groups.append(("fused", fused))
    tables = {n: p for n, p in named.items() if is_table_param(n)}
    dense = {n: p for n, p in named.items() if not is_table_param(n)}
    if tables:
        groups.append(("tables", _wrap(tables, cfg.embedding_optimizer, embedding_lr(cfg))))
    if dense:
        groups.append(("dense", _wrap(dense, cfg.dense_optimizer, cfg.lr)))
    return CombinedOptimizer(groups)


def _wrap(params: dict[str, nn.Parameter], kind: str, lr: float) -> KeyedOptimizerWrapper:
    return KeyedOptimizerWrapper(params, lambda ps: _torch_optimizer(kind, list(ps), lr))


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then flat, then linear decay to 0 from ``decay_start``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay_start and step >= cfg.decay_start:
        return max(0.0, 1.0 - (step - cfg.decay_start) / cfg.decay_steps)
    return 1.0


class LRSchedule:
    """Sets every param group's lr to its base lr times ``lr_factor`` before each step."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.base = [g["lr"] for g in optimizer.param_groups]

    def apply(self, step: int) -> float:
        factor = lr_factor(self.cfg, step)
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * factor
        return factor
