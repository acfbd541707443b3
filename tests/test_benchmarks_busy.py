"""The harness notices other processes using the CPU when it starts."""
from __future__ import annotations

import json
import multiprocessing
import time

from benchmarks import busy
from benchmarks.report import write_report
from benchmarks.targets import evaluate, format_targets

STAT = "cpu  {user} 5 {system} 90000 40 {irq} {softirq} 700 0 0\n"


def test_busy_ticks_leave_out_idle_iowait_and_steal():
    line = STAT.format(user=1000, system=300, irq=20, softirq=10)
    assert busy._busy_ticks(line) == 1000 + 5 + 300 + 20 + 10


def test_a_quiet_machine_warns_of_nothing_and_a_busy_one_does():
    assert busy.warning(None) is None and busy.warning(0.05) is None
    assert "1.0 cores busy" in busy.warning(1.0)


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_process_spinning_beside_the_probe_is_counted():
    spinner = multiprocessing.get_context("spawn").Process(target=_spin, args=(4.0,))
    spinner.start()
    try:
        time.sleep(1.0)  # the interpreter's start is over
        assert busy.busy_cores(1.0) > 0.6
    finally:
        spinner.join()


def test_the_report_and_the_targets_carry_the_warning(tmp_path):
    ceilings = {"gemm_fp32_gflops": 1.0, "gemm_bf16_gflops": 1.0, "copy_gbps": 1.0, "busy_cores_at_start": 1.1}
    (tmp_path / "machine.json").write_text(json.dumps({
        "hardware": {"cpu": "x", "cores": 2, "gpu": None}, "versions": {"torch": "t", "torchrec": "r"},
        "git_sha": None, "ceilings": ceilings}))
    (tmp_path / "results.jsonl").write_text("")
    assert "Warning: other processes kept 1.1 cores busy" in write_report(tmp_path).read_text()
    text = format_targets(evaluate({}, {}, False), "m", busy.warning(1.1))
    assert "**Warning: other processes kept 1.1 cores busy" in text
