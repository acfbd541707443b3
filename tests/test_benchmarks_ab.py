"""``python -m benchmarks ab``: two arms stepped in turn in one process, each under its own settings."""
from __future__ import annotations

import pytest

from benchmarks import ab
from benchmarks.suites import SUITES
from torchrec_models.config import ConfigError
from torchrec_models.sharding import sharded_model

TINY_ROW = next(r for r in SUITES["smoke"]() if r.name == "tiny/ws1")


def test_windows_alternate_and_each_runs_under_its_arms_settings(monkeypatch):
    applied: list[str] = []
    real = sharded_model.apply_process_settings

    def recording(cfg, env):
        applied.append(cfg.train.cpu_mlp)
        real(cfg, env)

    monkeypatch.setattr(sharded_model, "apply_process_settings", recording)
    plan = ab.Plan(pairs=3, window=2, warmup=1)
    result = ab.ab_worker(TINY_ROW, ["train.cpu_mlp=torch"], plan)
    assert len(result["a"]) == len(result["b"]) == 3 and min(result["a"] + result["b"]) > 0
    # two builds, two warm-ups, then pairs A B, B A, A B
    assert applied == ["auto", "torch", "auto", "torch", "auto", "torch", "torch", "auto", "auto", "torch"]


def test_summary_and_verdict():
    s = ab.summarize([100.0, 100.0, 200.0, 100.0], [110.0, 120.0, 230.0, 115.0])
    assert s["ratio_median"] == pytest.approx(1.15) and s["b_faster_pairs"] == 4 and s["pairs"] == 4
    assert ab.verdict(s) == "B faster"
    assert ab.verdict(ab.summarize([100.0] * 4, [90.0, 95.0, 80.0, 85.0])) == "B slower"
    assert ab.verdict(ab.summarize([100.0] * 4, [90.0, 110.0, 100.0, 105.0])) == "within noise"


@pytest.mark.parametrize("override, key", [
    ("train.cpu_keep_freed_memory=true", "train.cpu_keep_freed_memory"),
    ("sharding.device=cuda", "sharding.device"),
    ("train.cpu_mlpp=torch", "train.cpu_mlpp"),
])
def test_arms_that_cannot_share_a_process_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        ab.arm_configs(TINY_ROW, [override], ab.Plan())
