"""Runs a suite: each row on its own set of fresh ranks, records appended as they finish."""
from __future__ import annotations

import json
import re
import sys
import traceback
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from benchmarks import busy, roofline
from benchmarks.core_pace import measure_core_pace
from benchmarks.host_memory import fresh_page_fill_gbps
from benchmarks.record import build_record
from benchmarks.rows import Row
from benchmarks.suites import SUITES
from benchmarks.worker import bench_worker
from torchrec_models import runinfo
from torchrec_models.config import load_config
from torchrec_models.runtime import rank_server
from torchrec_models.runtime.environment import rank_environment
from torchrec_models.runtime.launcher import launch_local
from torchrec_models.runtime.precision_support import precision_warning


def run_row(row: Row, repeat: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Every rank's measurements and the crashes relaunched past.

    With ``repeat`` > 1 the rank-0 windows of all repeats are pooled.
    """
    crashes: list[str] = []
    runs = [_launch(row, crashes) for _ in range(repeat)]
    ranks = [runs[-1][r] for r in sorted(runs[-1])]
    pooled = [rate for run in runs for rate in run[0]["rates"]]
    ranks[0] = {**ranks[0], "rates": pooled}
    return ranks, crashes


def _launch(row: Row, crashes: list[str]) -> dict[int, Any]:
    """One launch of the row's ranks (of an independent row: rank 0's rates are all ranks' summed).

    A rank killed by a signal (a native crash, not a Python error) earns the row one fresh
    relaunch per row, noted in ``crashes`` so the record and the report show it; a second
    crash, or any Python error, fails the row.
    """
    try:
        ranks = launch_local(bench_worker, (row,), row.world_size)
    except ChildFailedError as exc:
        killed = signal_deaths(exc)
        if not killed or crashes:
            raise
        crashes.extend(killed)
        print(f"    {'; '.join(killed)}: relaunching the row once", flush=True)
        ranks = launch_local(bench_worker, (row,), row.world_size)
    return summed_rates(ranks) if row.independent else ranks


def summed_rates(ranks: dict[int, Any]) -> dict[int, Any]:
    """Ranks that trained alone, side by side: window i's rate is the sum of every rank's window i
    (they started together and time the same steps, so their windows overlap)."""
    total = [sum(rates) for rates in zip(*(ranks[r]["rates"] for r in sorted(ranks)))]
    return {**ranks, 0: {**ranks[0], "rates": total}}


def signal_deaths(exc: ChildFailedError) -> list[str]:
    """'rank R killed by SIGNAME' for each failed rank that a signal ended."""
    return [f"rank {rank} killed by {failure.signal_name()}"
            for rank, failure in sorted(exc.failures.items()) if failure.exitcode < 0]


def select_rows(suite: str, only: list[str] | None = None) -> list[Row]:
    """The suite's rows, or those whose name matches one of the ``only`` regular expressions."""
    rows = SUITES[suite]()
    return [r for r in rows if any(re.search(o, r.name) for o in only)] if only else rows


def run_suite(name: str, out_dir: Path, repeat: int, prices: dict[str, float],
              only: list[str] | None = None) -> list[dict[str, Any]]:
    rows = select_rows(name, only)
    device = "cuda" if name == "gpu" and torch.cuda.is_available() else "cpu"
    out_dir.mkdir(parents=True, exist_ok=True)
    others = busy.busy_cores()
    if line := busy.warning(others):
        print(f"warning: {line}", file=sys.stderr, flush=True)
    ceilings = roofline.machine_ceilings(device)
    if others is not None:
        ceilings["busy_cores_at_start"] = others
    ceilings["fresh_page_fill_gbps"] = fresh_page_fill_gbps()
    if device == "cpu":
        ceilings.update(measure_core_pace() or {})
    machine = {"hardware": runinfo.hardware(), "versions": runinfo.versions(), "git_sha": runinfo.git_sha(),
               "ceilings": ceilings, "prices_usd_per_hour": prices}
    (out_dir / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
    records = []
    with (out_dir / "results.jsonl").open("a") as sink, rank_server_for(device):  # after the probes: it takes a core
        for i, row in enumerate(rows, 1):
            print(f"[{i}/{len(rows)}] {row.name} (world size {row.world_size})", flush=True)
            record = _measure(name, row, repeat, ceilings, prices, device)
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            records.append(record)
            _print_line(record)
    return records


def rank_server_for(device: str) -> AbstractContextManager:
    """CPU rows' ranks forked from one rank server for the whole suite (their imports made once);
    fresh interpreters otherwise (see torchrec_models.runtime.rank_server)."""
    if device != "cpu" or rank_server.cuda_host():
        return nullcontext()
    return rank_server.rank_server(rank_environment(1), rank_server.RANK_MODULES + ("benchmarks.worker",))


def _measure(suite: str, row: Row, repeat: int, ceilings: dict[str, float], prices: dict[str, float],
             device: str) -> dict:
    try:
        cfg = load_config(row.config, list(row.overrides))
        unfit = precision_warning(cfg.train.precision, torch.device(device))
        if unfit:  # hours of reference-path GEMMs would measure nothing users would run
            return {"suite": suite, "row": row.name, "world_size": row.world_size, "impl": row.impl,
                    "skipped": unfit}
        ranks, crashes = run_row(row, repeat)
        return build_record(suite, row, cfg, ranks, ceilings, prices, crashes)
    except Exception as exc:  # a failed row is reported, the suite goes on
        traceback.print_exc(file=sys.stderr)
        return {"suite": suite, "row": row.name, "world_size": row.world_size, "impl": row.impl,
                "error": f"{type(exc).__name__}: {exc}"[:2000]}


def _print_line(record: dict[str, Any]) -> None:
    if "error" in record:
        print(f"    FAILED: {record['error'][:300]}", flush=True)
        return
    if "skipped" in record:
        print(f"    skipped: {record['skipped']}", flush=True)
        return
    t, split = record["throughput"], record["split_ms"]
    print(f"    {t['examples_per_sec']:,.0f} ex/s [p10 {t['p10']:,.0f} p90 {t['p90']:,.0f}]  "
          f"split ms: data {split.get('data', 0):.1f} fwd {split.get('forward', 0):.1f} "
          f"bwd+opt {split.get('backward_optimizer', 0):.1f} comm {split.get('communication', 0):.1f}  "
          f"${record['cost']['usd_per_million_examples']:.4f}/1M  "
          f"{100 * record['roofline']['flops_fraction']:.0f}% of GEMM "
          f"(GEMM kernels at {100 * record['roofline']['gemm_kernel_fraction']:.0f}%)", flush=True)
