"""Soak: train for a set time and record each rank's RSS over time, so a leak shows as a slope.

``python -m benchmarks soak --minutes 10 --out DIR [--config C] [--set k=v ...] [--nproc N]``
writes ``DIR/soak.jsonl`` (one sample per line), ``DIR/soak.json`` (slope per rank in MiB/min,
fitted after the first fifth of the run) and ``DIR/soak_rss.png``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from torchrec_models import runinfo
from torchrec_models.config import load_config
from torchrec_models.runtime.launcher import launch_local
from torchrec_models.runtime.quiet import quiet_library_noise


def soak_worker(config: str, overrides: list[str], seconds: float, chunk_steps: int) -> list[dict[str, Any]]:
    """Rank body: train in chunks until ``seconds`` pass, sampling RSS after each chunk."""
    quiet_library_noise()
    from torchrec_models.runtime.distributed import process_group
    from torchrec_models.train.trainer import Trainer

    cfg = load_config(config, overrides)
    with process_group(cfg.sharding.device) as env:
        trainer = Trainer(cfg, env, run_dir=None)
        samples, step, start = [], 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            trainer.train_steps(step, step + chunk_steps)
            step += chunk_steps
            samples.append({"rank": env.rank, "seconds": time.perf_counter() - start, "step": step,
                            "rss_bytes": runinfo.current_rss_bytes()})
        trainer.close()
        return samples


def slope_mib_per_min(samples: list[dict[str, Any]], skip_fraction: float = 0.2) -> float | None:
    """Least-squares slope of RSS against time, leaving out the warm-up fraction."""
    if not samples:
        return None
    end = samples[-1]["seconds"]
    pts = [(s["seconds"] / 60, s["rss_bytes"] / 2**20) for s in samples if s["seconds"] >= skip_fraction * end]
    if len(pts) < 3:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / var if var else None


def run_soak(config: str, overrides: list[str], minutes: float, nproc: int, out: Path,
             chunk_steps: int = 50) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    per_rank = launch_local(soak_worker, (config, overrides, minutes * 60, chunk_steps), nproc)
    samples = [s for r in sorted(per_rank) for s in per_rank[r]]
    (out / "soak.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    summary = {
        "config": config, "overrides": overrides, "minutes": minutes, "world_size": nproc,
        "steps": max(s["step"] for s in samples), "hardware": runinfo.hardware(),
        "ranks": [{"rank": r, "first_rss_mib": per_rank[r][0]["rss_bytes"] / 2**20,
                   "last_rss_mib": per_rank[r][-1]["rss_bytes"] / 2**20,
                   "slope_mib_per_min": slope_mib_per_min(per_rank[r])} for r in sorted(per_rank)],
    }
    (out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(per_rank, out / "soak_rss.png")
    return summary


def _plot(per_rank: dict[int, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for rank, samples in sorted(per_rank.items()):
        ax.plot([s["seconds"] / 60 for s in samples], [s["rss_bytes"] / 2**20 for s in samples], label=f"rank {rank}")
    ax.set(xlabel="minutes", ylabel="RSS (MiB)", title="RSS during a soak run")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
