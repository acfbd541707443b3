"""``python -m benchmarks --suite NAME --out DIR`` | ``compare DIR_A DIR_B`` | ``report DIR`` |
``ab --row NAME --b KEY=VALUE`` | ``ratio --a ROW --b ROW`` | ``tables --threads N`` | ``targets --out DIR``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from torchrec_models.runtime.quiet import quiet_library_noise


def _run_parser() -> argparse.ArgumentParser:
    from benchmarks.suites import SUITES

    p = argparse.ArgumentParser(prog="python -m benchmarks", description="run a benchmark suite")
    p.add_argument("--suite", required=True, choices=sorted([*SUITES, "data", "quality"]))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--repeat", type=int, default=1, help="runs per row; windows are pooled")
    p.add_argument("--price", action="append", default=[], metavar="KIND=USD_PER_HOUR",
                   help="override a price (H100, H200, A100 per GPU-hour, vCPU per vCPU-hour)")
    p.add_argument("--only", action="append", default=[], metavar="REGEX",
                   help="run only rows whose name matches (re.search; repeatable), e.g. '^criteo/ws2/fp32$'")
    return p


def _soak(argv: list[str]) -> int:
    from benchmarks.soak import run_soak

    p = argparse.ArgumentParser(prog="python -m benchmarks soak", description="RSS over a long run")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--config", default="configs/tiny.toml")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[])
    p.add_argument("--nproc", type=int, default=2)
    args = p.parse_args(argv)
    summary = run_soak(args.config, args.overrides, args.minutes, args.nproc, args.out)
    for r in summary["ranks"]:
        slope = r["slope_mib_per_min"]
        print(f"rank {r['rank']}: RSS {r['first_rss_mib']:.0f} -> {r['last_rss_mib']:.0f} MiB, "
              f"slope {'-' if slope is None else f'{slope:+.2f}'} MiB/min over {summary['steps']} steps")
    return 0


def _ab(argv: list[str]) -> int:
    from benchmarks.ab import Plan, format_record, run_ab
    from benchmarks.suites import SUITES
    from torchrec_models.config import ConfigError

    p = argparse.ArgumentParser(prog="python -m benchmarks ab",
                                description="a suite row (A) against the same row with overrides (B), "
                                            "windows alternating in the same processes")
    p.add_argument("--row", required=True, help="exact row name, e.g. criteo/ws1/fp32")
    p.add_argument("--suite", default="cpu", choices=sorted(SUITES))
    p.add_argument("--b", dest="b_overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides of arm B (none: A against itself, the noise floor)")
    p.add_argument("--pairs", type=int, default=12)
    p.add_argument("--window", type=int, default=5, help="steps per window")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of each arm first")
    p.add_argument("--out", type=Path, help="appends the record to OUT/ab.jsonl")
    args = p.parse_args(argv)
    rows = _named_rows(args.suite, [args.row])
    if rows is None:
        return 2
    if min(args.pairs, args.window) < 1 or args.warmup < 0:
        print("error: --pairs and --window must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    if rows[args.row].independent:
        print(f"error: {args.row!r} trains its ranks apart; ab runs a row's ranks as one job "
              "(compare it with `ratio`)", file=sys.stderr)
        return 2
    try:
        record = run_ab(rows[args.row], args.b_overrides, Plan(args.pairs, args.window, args.warmup), args.out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_record(record))
    return 0


def _named_rows(suite: str, names: list[str]) -> dict[str, Any] | None:
    """The suite's rows by name; None, after naming the first missing one, if any is not there."""
    from benchmarks.suites import SUITES

    rows = {r.name: r for r in SUITES[suite]()}
    missing = [name for name in names if name not in rows]
    if missing:
        print(f"error: no row {missing[0]!r} in suite {suite!r}", file=sys.stderr)
        return None
    return rows


def _ratio(argv: list[str]) -> int:
    import torch

    from benchmarks.ratio import format_record, run_ratio, unfit_reason
    from benchmarks.suites import SUITES

    p = argparse.ArgumentParser(prog="python -m benchmarks ratio",
                                description="two rows of a suite in whole runs that take turns; "
                                            "the median of the pairs' rate ratios B/A")
    p.add_argument("--a", required=True, help="exact row name, e.g. criteo/ws1/bf16/b4096")
    p.add_argument("--b", required=True, help="exact row name, e.g. criteo/ws2/bf16")
    p.add_argument("--suite", default="cpu", choices=sorted(SUITES))
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--out", type=Path, help="appends the record to OUT/ratio.jsonl")
    args = p.parse_args(argv)
    rows = _named_rows(args.suite, [args.a, args.b])
    if rows is None:
        return 2
    if args.pairs < 1:
        print("error: --pairs must be >= 1", file=sys.stderr)
        return 2
    device = "cuda" if args.suite == "gpu" and torch.cuda.is_available() else "cpu"
    for name in (args.a, args.b):
        unfit = unfit_reason(rows[name], device)
        if unfit:
            print(f"error: row {name!r}: {unfit}", file=sys.stderr)
            return 2
    print(format_record(run_ratio(rows[args.a], rows[args.b], args.pairs, device, args.out)))
    return 0


def _tables(argv: list[str]) -> int:
    from benchmarks.table_kernels import format_record, run

    p = argparse.ArgumentParser(prog="python -m benchmarks tables",
                                description="FBGEMM's CPU table lookup and update against this project's, alone")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, help="writes the record as JSON")
    args = p.parse_args(argv)
    if args.threads < 1 or args.rounds < 2 or args.warmup < 0:
        print("error: --threads >= 1, --rounds >= 2, --warmup >= 0", file=sys.stderr)
        return 2
    print(format_record(run(args.threads, args.rounds, args.warmup, args.out)))
    return 0


def _targets(argv: list[str]) -> int:
    from benchmarks.pricing_args import prices_or_exit
    from benchmarks.targets import run_targets

    p = argparse.ArgumentParser(prog="python -m benchmarks targets",
                                description="the CPU speed targets: their rows, two ranks against one with "
                                            "`ratio`, and DIR/targets.md with each verdict")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--pairs", type=int, default=10, help="`ratio` pairs per precision")
    p.add_argument("--price", action="append", default=[], metavar="KIND=USD_PER_HOUR")
    args = p.parse_args(argv)
    if args.pairs < 1:
        print("error: --pairs must be >= 1", file=sys.stderr)
        return 2
    targets = run_targets(args.out, args.pairs, prices_or_exit(args.price))
    print((args.out / "targets.md").read_text(), end="")
    return 0 if all(t.met for t in targets) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_library_noise()
    if argv[:1] == ["compare"]:
        from benchmarks.compare import compare_dirs, format_comparison

        p = argparse.ArgumentParser(prog="python -m benchmarks compare")
        p.add_argument("a", type=Path)
        p.add_argument("b", type=Path)
        args = p.parse_args(argv[1:])
        print(format_comparison(compare_dirs(args.a, args.b)))
        return 0
    if argv[:1] == ["ab"]:
        return _ab(argv[1:])
    if argv[:1] == ["soak"]:
        return _soak(argv[1:])
    if argv[:1] == ["tables"]:
        return _tables(argv[1:])
    if argv[:1] == ["ratio"]:
        return _ratio(argv[1:])
    if argv[:1] == ["targets"]:
        return _targets(argv[1:])
    if argv[:1] == ["report"]:
        from benchmarks.report import write_report

        print(write_report(Path(argv[1])))
        return 0
    args = _run_parser().parse_args(argv)
    from benchmarks.pricing_args import prices_or_exit
    from benchmarks.report import write_report
    from benchmarks.runner import run_suite

    if args.repeat < 1:
        print("error: --repeat must be >= 1", file=sys.stderr)
        return 2
    if args.suite == "data":
        from benchmarks.data_suite import run_data_suite

        run_data_suite(args.out)
        print(f"report: {args.out / 'report.md'}")
        return 0
    if args.suite == "quality":
        from benchmarks.quality import run_quality_suite

        run_quality_suite(args.out)
        print(f"report: {args.out / 'report.md'}")
        return 0
    prices = prices_or_exit(args.price)
    records = run_suite(args.suite, args.out, args.repeat, prices, args.only)
    print(f"report: {write_report(args.out)}")
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
