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


def test_median_interval_is_the_binomial_order_statistics():
    values = [float(v) for v in range(1, 25)]  # n = 24: P(Bin(24, 1/2) < 8) = 0.032, < 9 = 0.076
    assert ab.median_interval(values, 0.9) == (8.0, 17.0)
    assert ab.median_interval(values[:4], 0.9) == (1.0, 4.0)  # too few pairs: the whole range


def test_summary_and_verdict():
    s = ab.summarize([100.0] * 6, [110.0, 120.0, 115.0, 105.0, 112.0, 108.0])
    assert s["ratio_median"] == pytest.approx(1.11) and s["b_faster_pairs"] == 6 and s["pairs"] == 6
    assert s["ratio_median_90ci"] == pytest.approx([1.05, 1.2])  # n = 6: P(Bin < 1) = 0.016, < 2 = 0.11
    assert ab.verdict(s) == "B faster"
    assert ab.verdict(ab.summarize([100.0] * 6, [90.0, 95.0, 80.0, 85.0, 99.0, 97.0])) == "B slower"
    # one pair against the others: a single outlier does not decide
    assert ab.verdict(ab.summarize([100.0] * 6, [90.0, 110.0, 102.0, 105.0, 101.0, 104.0])) == "within noise"


@pytest.mark.parametrize("override, key", [
    ("train.cpu_keep_freed_memory=false", "train.cpu_keep_freed_memory"),
    ("sharding.device=cuda", "sharding.device"),
    ("train.cpu_mlpp=torch", "train.cpu_mlpp"),
])
def test_arms_that_cannot_share_a_process_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        ab.arm_configs(TINY_ROW, [override], ab.Plan())
