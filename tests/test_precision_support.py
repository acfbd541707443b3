"""A precision the machine has no fast kernels for: warned in training, skipped by the harness,
and the GEMM probe sized so it still ends."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from benchmarks import roofline, runner
from benchmarks.report import write_report
from benchmarks.rows import Row
from conftest import TINY
from torchrec_models.runtime import precision_support
from torchrec_models.train import trainer

CPU = torch.device("cpu")


def test_bf16_warns_only_without_fast_bf16_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_support, "native_bf16_matmul", lambda device: False)
    warning = precision_support.precision_warning("bf16", CPU)
    assert warning is not None and "train.precision" in warning and "fp32" in warning
    assert precision_support.precision_warning("fp32", CPU) is None
    monkeypatch.setattr(precision_support, "native_bf16_matmul", lambda device: True)
    assert precision_support.precision_warning("bf16", CPU) is None


def test_training_prints_and_records_the_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture, kernels_off_after) -> None:
    from torchrec_models.runtime.worker import train_worker

    monkeypatch.setattr(trainer, "precision_warning", lambda precision, device: f"slow {precision} here")
    summary = train_worker(TINY, ("train.steps=4", "train.eval_steps=2"), str(tmp_path / "run"), "none")
    assert summary["warnings"][0] == "slow fp32 here"
    assert "warning: slow fp32 here" in capsys.readouterr().err
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["warnings"][0] == "slow fp32 here"


def test_the_harness_skips_a_row_the_machine_cannot_run_fast(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setattr(runner, "precision_warning", lambda precision, device: "no bf16" if precision == "bf16" else None)
    monkeypatch.setattr(runner, "run_row", lambda row, repeat: pytest.fail("a skipped row was launched"))
    row = Row(name="tiny/bf16", config=TINY, overrides=("train.precision=bf16",), world_size=1, impl="torchrec", tags={})
    record = runner._measure("smoke", row, 1, {}, {}, "cpu")
    assert record["skipped"] == "no bf16" and "error" not in record
    (tmp_path / "results.jsonl").write_text(json.dumps(record) + "\n")
    ceilings = {"gemm_fp32_gflops": 1.0, "gemm_bf16_gflops": 1.0, "copy_gbps": 1.0}
    (tmp_path / "machine.json").write_text(json.dumps({
        "hardware": {"cpu": "x", "cores": 2, "gpu": None}, "versions": {"torch": "t", "torchrec": "r"},
        "git_sha": None, "ceilings": ceilings}))
    assert "| tiny/bf16 | 1 | skipped: no bf16 |" in write_report(tmp_path).read_text()


def test_gemm_probe_shrinks_for_a_slow_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        time.sleep(a.shape[0] ** 3 / 2**29)  # 256: 31 ms; 512: 0.25 s
        return a

    monkeypatch.setattr(roofline.torch, "mm", slow_mm)
    assert roofline._gemm_size(torch.float32, 2048, budget_s=1.0, device="cpu") == 512

    def avx2_bf16_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # 15x, not 8x, per doubling
        time.sleep({256: 0.024, 512: 0.197}.get(a.shape[0], 2.9))
        return a

    monkeypatch.setattr(roofline.torch, "mm", avx2_bf16_mm)
    assert roofline._gemm_size(torch.bfloat16, 2048, budget_s=2.0, device="cpu") == 512  # not 1024's 2.9 s
    monkeypatch.undo()
    assert roofline._gemm_size(torch.float32, 512, budget_s=60.0, device="cpu") == 512
