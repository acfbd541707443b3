"""Two rows of a suite in whole runs that take turns: ``python -m benchmarks ratio --a ROW --b ROW``.

``ab`` puts two settings in the same processes; rows that cannot share processes (two ranks
against one at the same global batch, say) are compared here instead. Each pair runs both rows
back to back, A first in even pairs and B first in odd ones, and gives the ratio of the two runs'
median rates; the figure is the median ratio with ``ab``'s distribution-free 90% interval. Rows
run minutes apart in a suite can differ by 2x on a shared machine; pairs run seconds apart share
its state.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from benchmarks.ab import finish_record, ratio_text, summarize
from benchmarks.core_pace import measure_core_pace
from benchmarks.rows import Row
from benchmarks.runner import rank_server_for, run_row
from torchrec_models.config import load_config
from torchrec_models.runtime.precision_support import precision_warning


def unfit_reason(row: Row, device: str) -> str | None:
    """Why a row would measure nothing users run here (bf16 without bf16 kernels), else None."""
    cfg = load_config(row.config, list(row.overrides))
    return precision_warning(cfg.train.precision, torch.device(device))


def run_ratio(row_a: Row, row_b: Row, pairs: int, device: str, out_dir: Path | None) -> dict[str, Any]:
    """``pairs`` alternating runs of both rows; the record holds each run's median rate and, on
    CPU, how evenly the cores kept pace just before and just after (``benchmarks.core_pace``)."""
    a: list[float] = []
    b: list[float] = []
    arms = ((row_a, a), (row_b, b))
    paces = [_pace(device)]
    with rank_server_for(device):
        for pair in range(pairs):
            for row, rates in arms if pair % 2 == 0 else arms[::-1]:
                ranks, _ = run_row(row, 1)
                rates.append(statistics.median(ranks[0]["rates"]))
    paces.append(_pace(device))
    record = {"a_row": row_a.name, "b_row": row_b.name, "pairs": pairs, "a": a, "b": b, **summarize(a, b)}
    if None not in paces:
        record["core_pace_mean"] = paces
    return finish_record(record, out_dir, "ratio.jsonl")


def _pace(device: str) -> float | None:
    pace = measure_core_pace() if device == "cpu" else None
    return pace["core_pace_mean"] if pace else None


def format_record(record: dict[str, Any]) -> str:
    pairs = ", ".join(f"{r:.3f}" for r in record["ratios"])
    pace = record.get("core_pace_mean")
    paced = f"; cores kept pace {pace[0]:.2f} before, {pace[1]:.2f} after" if pace else ""
    return (f"B = {record['b_row']} over A = {record['a_row']}: {ratio_text(record)}; pairs {pairs}): "
            f"{record['verdict']}{paced}")
