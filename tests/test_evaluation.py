"""Evaluation coverage: the whole held-out set once, padding that never counts, epochs to steps."""
from __future__ import annotations

import math

import pytest
import torch

from torchrec_models.config import ConfigError, load_config
from torchrec_models.train.evaluation import plan_eval, with_epochs
from torchrec_models.train.metrics import EvalMetrics


def test_whole_set_plan_pads_the_last_batch_and_masks_it() -> None:
    plan = plan_eval(0, batch_size=8, world_size=2, held_out=37, endless=False)
    assert plan.steps == 3 and plan.examples == 37
    masks = [plan.weights(s, r, torch.device("cpu")) for s in range(3) for r in range(2)]
    assert sum(int(m.sum()) for m in masks) == 37
    assert masks[-2][:5].tolist() == [1.0] * 5 and masks[-2][5:].sum() == 0 and masks[-1].sum() == 0


def test_eval_steps_past_a_finite_set_is_an_error_not_a_wrap() -> None:
    with pytest.raises(ConfigError, match="train.eval_steps"):
        plan_eval(3, batch_size=8, world_size=2, held_out=37, endless=False)
    assert plan_eval(3, 8, 2, 37, endless=True).examples == 48  # an endless stream has no end to pass


def test_padding_weights_change_nothing() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(64), (torch.rand(64) < 0.3).long()
    real = EvalMetrics(1, 0, 64, 1)
    real.update(logits, labels)
    padded = EvalMetrics(1, 0, 96, 1)
    junk = torch.randn(32) * 5
    padded.update(torch.cat([logits, junk]), torch.cat([labels, torch.ones(32, dtype=torch.long)]),
                  torch.cat([torch.ones(64), torch.zeros(32)]))
    a, b = real.compute(), padded.compute()
    assert a["examples"] == b["examples"] == 64
    for key in ("auc", "ne", "logloss"):
        assert math.isclose(a[key], b[key], rel_tol=1e-6), (key, a[key], b[key])


def test_epochs_give_the_steps_that_cover_the_rows() -> None:
    cfg = load_config(None, ["data.kind=criteo", "data.path=/nowhere", "data.eval_fraction=0.1",
                             "train.epochs=3", "train.batch_size=100"])
    assert with_epochs(cfg, 1001, world_size=2).train.steps == math.ceil(3 * 1001 / 200)
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=2"])  # synthetic data has no epochs


def test_best_tracker_compares_by_the_metric_and_counts_patience() -> None:
    from torchrec_models.train.best import BestTracker

    tracker = BestTracker("auc", False, patience=2, root=None, keep=False)
    for step, auc in ((10, 0.70), (20, 0.75), (30, 0.74), (40, 0.76), (50, 0.75)):
        tracker.update(None, step, {"auc": auc, "ne": 0.9, "logloss": 0.5}, None)
    assert tracker.best["step"] == 40 and not tracker.should_stop()
    tracker.update(None, 60, {"auc": 0.70, "ne": 0.9, "logloss": 0.5}, None)
    assert tracker.should_stop()
    by_ne = BestTracker("ne", True, patience=0, root=None, keep=False)
    for step, ne in ((10, 0.9), (20, 0.8), (30, 0.85)):
        by_ne.update(None, step, {"auc": 0.7, "ne": ne, "logloss": 0.5}, None)
    assert by_ne.best["step"] == 20 and not by_ne.should_stop()  # patience 0 never stops


def test_quality_summary_finds_the_first_evaluation_past_each_target() -> None:
    from benchmarks.quality import summarize, teacher_auc

    case = {"train_rows": 1000, "table_rows": 100, "batch_size_per_rank": 50, "world_size": 2,
            "evals": [{"step": 2, "auc": 0.80, "ne": 0.9, "elapsed_s": 1.0},
                      {"step": 4, "auc": 0.86, "ne": 0.8, "elapsed_s": 2.0},
                      {"step": 6, "auc": 0.85, "ne": 0.8, "elapsed_s": 3.0}]}
    out = summarize(case, ceiling=0.90)
    assert out["to_teacher_minus_0.05"] == {"step": 4, "examples": 400, "seconds": 2.0}
    assert out["to_teacher_minus_0.03"] is None and out["best_auc"] == 0.86 and out["final"]["step"] == 6
    assert 0.9 < teacher_auc(5000, 2) < 1.0  # the planted teacher separates its own labels well
