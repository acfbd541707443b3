"""A training whose loss turns nan or inf says so, stops at its next evaluation, and keeps no
checkpoint of the diverged model."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import TINY
from torchrec_models.tasks.ranking import RankingTask


def test_a_diverged_run_warns_stops_and_checkpoints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            kernels_off_after) -> None:
    from torchrec_models.runtime.worker import train_worker

    overrides = ("train.lr=1e9", "train.warmup_steps=0", "train.steps=200", "train.eval_every=100",
                 "train.eval_steps=2", "checkpoint.every=50")
    summary = train_worker(TINY, overrides, str(tmp_path / "run"), "none")
    assert not math.isfinite(summary["final_train_loss"])
    assert summary["stopped_early_at"] == 50, summary["stopped_early_at"]  # the first checkpoint boundary
    warning = summary["warnings"][0]
    assert "window ending at step 20: training diverged, training stopped at step 50" in warning
    assert "train.lr" in warning and "not finite" in summary["warnings"][1]  # the NE's own warning
    assert f"warning: {warning}" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["warnings"][0] == warning
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir()), list(checkpoints.iterdir())


def test_a_finite_run_has_no_divergence_warning(tmp_path: Path, kernels_off_after) -> None:
    from torchrec_models.runtime.worker import train_worker

    summary = train_worker(TINY, ("train.steps=40", "train.eval_steps=2"), str(tmp_path / "run"), "none")
    assert math.isfinite(summary["final_train_loss"]) and summary["warnings"] == []


@pytest.mark.parametrize("ne", [math.nan, math.inf])
def test_a_non_finite_ne_is_reported(ne: float) -> None:
    warnings = RankingTask().warnings({"ne": ne, "auc": 0.5})
    assert len(warnings) == 1 and "not finite" in warnings[0]
    assert RankingTask().warnings({"ne": 0.9}) == []
