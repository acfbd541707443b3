"""LR schedule: warm-up, flat, linear decay."""
from __future__ import annotations

from torchrec_models.config import TrainConfig
from torchrec_models.train.optim import fused_params, lr_factor


def test_warmup_then_flat_then_decay() -> None:
    cfg = TrainConfig(warmup_steps=10, decay_start=50, decay_steps=20)
    assert lr_factor(cfg, 0) == 0.1
    assert lr_factor(cfg, 9) == 1.0
    assert lr_factor(cfg, 30) == 1.0
    assert lr_factor(cfg, 60) == 0.5
    assert lr_factor(cfg, 100) == 0.0


def test_fused_params_follow_the_config() -> None:
    params = fused_params(TrainConfig(embedding_optimizer="sgd", lr=0.1, embedding_lr=0.3))
    assert params["learning_rate"] == 0.3 and "eps" not in params
    assert fused_params(TrainConfig())["optimizer"].value == "exact_row_wise_adagrad"
