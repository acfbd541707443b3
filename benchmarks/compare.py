"""A/B of two result directories: examples/s ratio B/A per matching row, with a noise band.

The band pairs each side's spread over its measured windows: from B's p10 over A's p90 to
B's p90 over A's p10. A verdict is given only where the whole band is on one side of 1.0.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.record import measured, percentile


def load_results(directory: Path) -> dict[str, dict[str, Any]]:
    """Row name -> its last successful record in ``directory/results.jsonl``."""
    path = directory / "results.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results.jsonl")
    out = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if measured(record):
            out[record["row"]] = record
    return out


def compare_rows(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    wa, wb = a["throughput"]["windows"], b["throughput"]["windows"]
    ratio = b["throughput"]["examples_per_sec"] / a["throughput"]["examples_per_sec"]
    low = percentile(wb, 0.1) / percentile(wa, 0.9)
    high = percentile(wb, 0.9) / percentile(wa, 0.1)
    verdict = "faster" if low > 1.0 else "slower" if high < 1.0 else "within noise"
    return {"row": a["row"], "a": a["throughput"]["examples_per_sec"], "b": b["throughput"]["examples_per_sec"],
            "ratio": ratio, "band": [low, high], "verdict": verdict}


def compare_dirs(dir_a: Path, dir_b: Path) -> list[dict[str, Any]]:
    a, b = load_results(dir_a), load_results(dir_b)
    return [compare_rows(a[name], b[name]) for name in a if name in b]


def format_comparison(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no matching rows"
    lines = [f"{'row':<48} {'A ex/s':>10} {'B ex/s':>10} {'B/A':>6}  {'band':<13} verdict"]
    for r in rows:
        band = f"{r['band'][0]:.2f}-{r['band'][1]:.2f}"
        lines.append(f"{r['row']:<48} {r['a']:>10,.0f} {r['b']:>10,.0f} {r['ratio']:>6.2f}  {band:<13} {r['verdict']}")
    return "\n".join(lines)
