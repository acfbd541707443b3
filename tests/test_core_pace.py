"""The core-pace probe: slowest over fastest core, interval by interval."""
from __future__ import annotations

import os

import pytest

from benchmarks.core_pace import _interval_ratios, measure_core_pace


def test_each_interval_compares_the_cores_median_rates() -> None:
    by_core = {
        0: [(0.01, 100.0), (0.02, 120.0), (0.30, 80.0), (0.60, 50.0)],
        1: [(0.05, 55.0), (0.26, 80.0), (0.27, 80.0)],  # nothing in the third interval
    }
    assert _interval_ratios(by_core, 0.25) == pytest.approx([0.5, 1.0])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_the_probe_runs_a_loop_on_every_core_at_once() -> None:
    pace = measure_core_pace(seconds=1.5)
    assert pace is not None
    assert 0 < pace["core_pace_p10"] <= pace["core_pace_mean"] <= 1
    assert pace["core_pace_intervals"] >= 3


def test_one_core_has_nothing_to_keep_pace_with() -> None:
    assert measure_core_pace(seconds=0.5, cores=[0]) is None


def test_a_core_that_cannot_be_used_gives_no_figure() -> None:
    unusable = max(os.sched_getaffinity(0)) + 4096
    assert measure_core_pace(seconds=0.5, cores=[0, unusable]) is None
