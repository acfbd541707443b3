"""report.md and PNG plots from a results directory."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks import busy
from benchmarks.compare import load_results
from benchmarks.record import measured

MIB = 2**20


def _mem(record: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(max measured MiB per rank, max estimate MiB per rank, max measured/estimate)."""
    ranks = record["memory"]["per_rank"]
    peak = max(r["measured_bytes"] or 0 for r in ranks) / MIB
    estimates = [r["estimate_bytes"] for r in ranks if r["estimate_bytes"]]
    ratios = [r["measured_over_estimate"] for r in ranks if r["measured_over_estimate"]]
    return peak, (max(estimates) / MIB if estimates else None), (max(ratios) if ratios else None)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def _sharding(record: dict[str, Any]) -> str:
    kinds = sorted({f"{s['type']}/{s['kernel']}" for s in record["sharding"].values()})
    return ", ".join(kinds) if len(kinds) <= 2 else f"{len(kinds)} kinds"


def table(records: list[dict[str, Any]]) -> str:
    head = ("| row | ranks | batch/rank | precision | sharding/kernel | ex/s (p10-p90) | split ms data/fwd/bwd+opt/comm "
            "| MiB/rank | est. MiB | ratio | $/1M ex | GEMM % step/kernels | copy % |")
    lines = [head, "|" + "---|" * 13]
    for r in records:
        if not measured(r):
            why = f"failed: {r['error'][:80]}" if "error" in r else f"skipped: {r['skipped'][:80]}"
            lines.append(f"| {r['row']} | {r['world_size']} | {why} |" + " |" * 10)
            continue
        t, s, roof = r["throughput"], r["split_ms"], r["roofline"]
        peak, estimate, ratio = _mem(r)
        split = "/".join(_fmt(s.get(k), ".0f") for k in ("data", "forward", "backward_optimizer", "communication"))
        lines.append(
            f"| {r['row']} | {r['world_size']} | {r['batch_size_per_rank']} | {r['precision']} | {_sharding(r)} "
            f"| {t['examples_per_sec']:,.0f} ({t['p10']:,.0f}-{t['p90']:,.0f}) | {split} | {_fmt(peak, ',.0f')} "
            f"| {_fmt(estimate, ',.0f')} | {_fmt(ratio, '.2f')} | {r['cost']['usd_per_million_examples']:.4f} "
            f"| {100 * roof['flops_fraction']:.0f}/{_fmt(_percent(roof.get('gemm_kernel_fraction')), '.0f')} "
            f"| {100 * roof['bytes_fraction']:.1f} |")
    return "\n".join(lines)


def speedups(records: dict[str, dict[str, Any]]) -> list[str]:
    """torchrec rows against their plain-PyTorch baselines of the same name."""
    out = []
    for name, r in records.items():
        if not name.startswith("baseline/"):
            continue
        mine = records.get(name[len("baseline/"):])
        if mine:
            ratio = mine["throughput"]["examples_per_sec"] / r["throughput"]["examples_per_sec"]
            out.append(f"- `{mine['row']}`: {ratio:.2f}x the plain-PyTorch baseline "
                       f"({mine['throughput']['examples_per_sec']:,.0f} vs {r['throughput']['examples_per_sec']:,.0f} ex/s)")
    return out


def scaling(records: dict[str, dict[str, Any]]) -> list[str]:
    """Efficiency per core of the rows tagged ``sweep=scaling``, against the smallest world size."""
    rows = sorted((r for r in records.values() if r.get("tags", {}).get("sweep") == "scaling"),
                  key=lambda r: r["world_size"])
    if len(rows) < 2:
        return []
    per_core = [r["throughput"]["examples_per_sec"] / r["cost"]["devices"] for r in rows]
    return [f"- world size {r['world_size']} on {r['cost']['devices']} core(s): {r['throughput']['examples_per_sec']:,.0f} "
            f"ex/s, {p:,.0f} per core, efficiency per core {p / per_core[0]:.2f}" for r, p in zip(rows, per_core)]


def _features(hardware: dict[str, Any]) -> str:
    """`` (family 25 model 17, AVX512, bf16: avx512_bf16)`` where the record has it (older ones do not)."""
    return f" ({hardware['cpu_features']})" if hardware.get("cpu_features") else ""


def _fresh_pages(ceilings: dict[str, float]) -> str:
    """The fill rate of newly mapped memory (older records lack it): far under copy on a VM whose
    host backs each fresh page on first touch."""
    if "fresh_page_fill_gbps" not in ceilings:
        return ""
    return f" Newly mapped memory filled at {ceilings['fresh_page_fill_gbps']:.1f} GB/s."


def _core_pace(ceilings: dict[str, float]) -> str:
    """How evenly the cores kept pace (``benchmarks.core_pace``; older records and GPU runs lack it)."""
    if "core_pace_mean" not in ceilings:
        return ""
    return (f" Cores kept pace with each other at {ceilings['core_pace_mean']:.2f} on average (slowest over "
            f"fastest single-core GEMM rate per 0.25 s, p10 {ceilings['core_pace_p10']:.2f}): ranks in lockstep "
            "move at the slowest core's pace, independent processes at each one's own.")


def _busy(ceilings: dict[str, float]) -> str:
    """A warning when other processes used the CPU as the run started (``benchmarks.busy``)."""
    line = busy.warning(ceilings.get("busy_cores_at_start"))
    return f" **Warning: {line}.**" if line else ""


def write_report(directory: Path) -> Path:
    latest: dict[str, dict[str, Any]] = {}  # a rerun row replaces its earlier record
    for line in (directory / "results.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest.pop(record["row"], None)
            latest[record["row"]] = record
    records = list(latest.values())
    machine = json.loads((directory / "machine.json").read_text())
    by_suite: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_suite[r["suite"]].append(r)
    hw, ceil = machine["hardware"], machine["ceilings"]
    parts = [
        "# Benchmark report", "",
        f"Machine: {hw['cpu']}{_features(hw)}, {hw['cores']} cores, GPU: {hw['gpu'] or 'none'}. "
        f"torch {machine['versions']['torch']}, torchrec {machine['versions']['torchrec']}, "
        f"git {str(machine['git_sha'])[:10]}.",
        f"Ceilings measured in this run: fp32 GEMM {ceil['gemm_fp32_gflops']:.0f} GFLOP/s"
        + (f" (the faster of torch's {ceil['gemm_fp32_torch_gflops']:.0f} and OpenBLAS's "
           f"{ceil['gemm_fp32_openblas_gflops']:.0f})" if "gemm_fp32_openblas_gflops" in ceil else "") + ", "
        f"bf16 GEMM {ceil['gemm_bf16_gflops']:.0f} GFLOP/s, copy {ceil['copy_gbps']:.1f} GB/s"
        + (f", embedding (TBE) forward {ceil['tbe_forward_gbps']:.1f} GB/s "
           f"({100 * ceil['tbe_forward_fraction_of_copy']:.0f}% of copy)." if "tbe_forward_gbps" in ceil else ".")
        + _fresh_pages(ceil) + _core_pace(ceil) + _busy(ceil), "",
        "ex/s: median over measured windows after warm-up (p10-p90 in brackets). MiB/rank: peak RSS above the "
        "process's pre-build baseline on CPU, peak allocated on GPU; est.: the planner's per-rank estimate "
        "(DDR on CPU, HBM on GPU). GEMM % step: training FLOPs x ex/s over the GEMM ceiling of the row's "
        "precision; kernels: the rate inside the GEMM ops themselves (the model's FLOPs over their profiled "
        "time) over the GEMM rate each rank measures with all ranks measuring at once. "
        "copy %: table traffic over the copy bandwidth.", "",
    ]
    for suite, rows in by_suite.items():
        parts += [f"## {suite}", "", table(rows), ""]
        ups = speedups({r["row"]: r for r in rows if measured(r)})
        if ups:
            parts += ["What torchrec sharding buys over plain PyTorch (nn.EmbeddingBag + DDP):", "", *ups, ""]
        eff = scaling({r["row"]: r for r in rows if measured(r)})
        if eff:
            parts += ["The same global batch over more ranks:", "", *eff, ""]
        crashed = [f"- `{r['row']}`: {'; '.join(r['crashes'])}" for r in rows if r.get("crashes")]
        if crashed:
            parts += ["Rows measured on a relaunch after a rank crashed:", "", *crashed, ""]
    ok = load_results(directory)
    from benchmarks.plots import write_plots

    plots = write_plots(list(ok.values()), directory)
    parts += [f"![{p.stem}]({p.name})" for p in plots]
    path = directory / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path
