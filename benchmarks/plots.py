"""PNG plots: throughput vs batch per sharding type, memory vs estimate, cost per configuration."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig: Any, ax: Any, path: Path, legend: bool = True) -> bool:
    if legend:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _main_type(record: dict[str, Any]) -> str:
    kinds = sorted({s["type"] for s in record["sharding"].values()})
    return kinds[0] if len(kinds) == 1 else "mixed"


def _is_sweep_point(r: dict[str, Any]) -> bool:
    """Rows that differ only in batch size and forced sharding type (fused kernel, default optimizer)."""
    cfg = r["config"]
    return (r["impl"] == "torchrec" and r["world_size"] > 1 and r["precision"] == "fp32"
            and bool(cfg["sharding"]["type"]) and cfg["sharding"]["kernel"] == "fused"
            and cfg["train"]["embedding_optimizer"] == "rowwise_adagrad"
            and r["tables"]["count"] == 26 and r["tables"]["pooling"][0] == 1)


def throughput_vs_batch(records: list[dict[str, Any]], path: Path) -> bool:
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for r in records:
        if _is_sweep_point(r):
            series[_main_type(r)].setdefault(r["batch_size_per_rank"], r["throughput"]["examples_per_sec"])
    series = {k: sorted(v.items()) for k, v in series.items() if len(v) > 1}
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, points in sorted(series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=kind)
    ax.set(xscale="log", xlabel="batch size per rank", ylabel="examples/s", title="Throughput vs batch size")
    return _save(fig, ax, path)


def memory_vs_estimate(records: list[dict[str, Any]], path: Path) -> bool:
    points = [(rank["estimate_bytes"] / 2**20, rank["measured_bytes"] / 2**20, r["row"])
              for r in records for rank in r["memory"]["per_rank"] if rank["estimate_bytes"]]
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    top = max(max(p[0], p[1]) for p in points) * 1.1
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="measured = estimate")
    ax.set(xlabel="planner estimate per rank (MiB)", ylabel="measured per rank (MiB)",
           title="Memory per rank vs the planner's estimate")
    return _save(fig, ax, path)


def cost_per_config(records: list[dict[str, Any]], path: Path) -> bool:
    rows = sorted(records, key=lambda r: r["cost"]["usd_per_million_examples"])
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, max(3, 0.28 * len(rows) + 1)))
    ax.barh([r["row"] for r in rows], [r["cost"]["usd_per_million_examples"] for r in rows],
            color=["tab:orange" if r["impl"] == "baseline" else "tab:blue" for r in rows])
    ax.invert_yaxis()
    ax.set(xlabel="USD per 1M examples", title="Cost per configuration (orange: plain PyTorch)")
    ax.tick_params(axis="y", labelsize=7)
    return _save(fig, ax, path, legend=False)


def write_plots(records: list[dict[str, Any]], directory: Path) -> list[Path]:
    made = []
    for name, fn in (("throughput_vs_batch", throughput_vs_batch), ("memory_vs_estimate", memory_vs_estimate),
                     ("cost_per_config", cost_per_config)):
        path = directory / f"{name}.png"
        if fn(records, path):
            made.append(path)
    return made
