"""One JSON record per row: identity, throughput, step split, memory, cost, roofline."""
from __future__ import annotations

import statistics
from typing import Any

from benchmarks import roofline
from benchmarks.rows import Row
from torchrec_models import runinfo
from torchrec_models.config import Config
from torchrec_models.sharding.pricing import usd_per_million_examples

REQUIRED = {
    "suite": str, "row": str, "impl": str, "arch": str, "tables": dict, "batch_size_per_rank": int,
    "world_size": int, "precision": str, "sharding": dict, "git_sha": (str, type(None)), "versions": dict,
    "hardware": dict, "config": dict, "throughput": dict, "split_ms": dict, "memory": dict, "cost": dict,
    "roofline": dict, "crashes": list,
}
THROUGHPUT_KEYS = ("examples_per_sec", "p10", "p90", "windows")


def measured(record: dict[str, Any]) -> bool:
    """Whether a record holds measurements (not a failed or a skipped row)."""
    return "error" not in record and "skipped" not in record


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def throughput(rates: list[float]) -> dict[str, Any]:
    if not rates:
        raise ValueError("no measured windows")
    return {"examples_per_sec": statistics.median(rates), "p10": percentile(rates, 0.1),
            "p90": percentile(rates, 0.9), "windows": list(rates)}


def device_kind(hardware: dict[str, Any], device: str) -> tuple[str, int]:
    """(price-table kind, devices billed per rank) for this row."""
    if device.startswith("cuda"):
        name = (hardware.get("gpu") or "").upper()
        return next((k for k in ("H200", "H100", "A100") if k in name), "H100"), 1
    return "vCPU", 0


def memory(ranks: list[dict[str, Any]], on_gpu: bool) -> dict[str, Any]:
    out = []
    for r in ranks:
        # each rank's share of its own world's estimate (an independent rank is a world of one)
        share = r["estimate"][r["world_rank"]] if r["estimate"] else None
        est_bytes = share["hbm_bytes" if on_gpu else "ddr_bytes"] if share else None
        measured = r["peak_device_bytes"] if on_gpu else r["peak_rss_bytes"] - r["baseline_rss_bytes"]
        out.append({
            "rank": r["rank"], "peak_rss_bytes": r["peak_rss_bytes"], "baseline_rss_bytes": r["baseline_rss_bytes"],
            "measured_bytes": measured, "peak_device_reserved_bytes": r.get("peak_device_reserved_bytes"),
            "estimate_bytes": est_bytes,
            "measured_over_estimate": (measured / est_bytes) if est_bytes else None,
        })
    return {"measured_is": "peak device allocated" if on_gpu else "peak RSS above the pre-build baseline",
            "per_rank": out}


def build_record(suite: str, row: Row, cfg: Config, ranks: list[dict[str, Any]], ceilings: dict[str, float],
                 prices: dict[str, float], crashes: list[str]) -> dict[str, Any]:
    """Assembles the row's record from every rank's measurements (rank 0 leads).

    ``crashes`` names the ranks a signal killed in a launch that was then relaunched.
    """
    lead = next(r for r in ranks if r["rank"] == 0)
    tput = throughput(lead["rates"])
    hardware = runinfo.hardware()
    kind, per_rank = device_kind(hardware, lead["device"])
    devices = row.world_size * (per_rank or lead["threads"])
    devices = devices if per_rank else min(devices, hardware["cores"])
    m = cfg.model
    flops = roofline.train_flops_per_example(m, candidates=cfg.train.batch_size * row.world_size)
    emb_bytes = roofline.embedding_bytes_per_example(cfg)
    gemm = ceilings["gemm_bf16_gflops" if cfg.train.precision == "bf16" else "gemm_fp32_gflops"]
    rate = tput["examples_per_sec"]
    gemm_seconds = lead["split_ms"].get("gemm", 0.0) / 1e3  # per step, on rank 0
    kernel_gflops = flops * cfg.train.batch_size / gemm_seconds / 1e9 if gemm_seconds else 0.0
    return {
        "suite": suite, "row": row.name, "impl": row.impl, "arch": m.arch,
        "tables": {"count": m.num_sparse_features, "rows": m.table_rows(), "dim": m.embedding_dim,
                   "pooling": list(m.multi_hot_sizes)},
        "batch_size_per_rank": cfg.train.batch_size, "world_size": row.world_size,
        "global_batch_size": cfg.train.batch_size * row.world_size,
        "precision": cfg.train.precision,
        "sharding": {t: {"type": d["sharding_type"], "kernel": d["compute_kernel"]} for t, d in lead["plan"].items()},
        "tags": dict(row.tags),
        "git_sha": runinfo.git_sha(), "versions": runinfo.versions(), "hardware": hardware,
        "threads_per_rank": lead["threads"], "cpu_gemm": lead.get("cpu_gemm"), "config": cfg.to_dict(),
        "build_seconds": lead["build_seconds"],
        "throughput": tput,
        "split_ms": lead["split_ms"],
        "memory": memory(ranks, lead["device"].startswith("cuda")),
        "cost": {"device_kind": kind, "devices": devices, "usd_per_device_hour": prices[kind],
                 "usd_per_million_examples": usd_per_million_examples(prices[kind], devices, rate)},
        "roofline": {
            "flops_per_example": flops, "achieved_gflops": flops * rate / 1e9, "gemm_gflops": gemm,
            "flops_fraction": flops * rate / 1e9 / gemm,
            "embedding_bytes_per_example": emb_bytes, "achieved_gbps": emb_bytes * rate / 1e9,
            "copy_gbps": ceilings["copy_gbps"], "bytes_fraction": emb_bytes * rate / 1e9 / ceilings["copy_gbps"],
            "gemm_kernel_gflops_per_rank": kernel_gflops, "gemm_gflops_per_rank": lead["gemm_gflops"],
            "gemm_kernel_fraction": kernel_gflops / lead["gemm_gflops"],
        },
        "crashes": list(crashes),
    }


def validate_record(record: dict[str, Any]) -> None:
    """Raises ValueError naming the first missing or mistyped field."""
    for key, kind in REQUIRED.items():
        if key not in record:
            raise ValueError(f"record lacks '{key}'")
        if not isinstance(record[key], kind):
            raise ValueError(f"record field '{key}' has type {type(record[key]).__name__}")
    for key in THROUGHPUT_KEYS:
        if key not in record["throughput"]:
            raise ValueError(f"record lacks 'throughput.{key}'")
    if len(record["throughput"]["windows"]) < 1:
        raise ValueError("record has no measured windows")
