"""``python -m torchrec_models train|plan ...``: parse, validate, launch, report."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from torchrec_models.config import Config, ConfigError, load_config
from torchrec_models.quiet import quiet_library_noise


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a TOML preset (configs/*.toml); defaults apply without one")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="dotted overrides, e.g. --set train.batch_size=4096 train.steps=50 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchrec-models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a sharded ranker")
    _add_config_args(train)
    train.add_argument("--run-dir", required=True, type=Path, help="where outputs go")
    train.add_argument("--nproc-per-node", type=int, default=1, help="local ranks to start")
    train.add_argument("--max-restarts", type=int, default=0, help="elastic restarts after a failure")
    plan = sub.add_parser("plan", help="print the sharding plan and memory per rank")
    _add_config_args(plan)
    plan.add_argument("--world-size", type=int, default=8)
    plan.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    plan.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_library_noise()
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "train":
            return _train(args, cfg)
        return _plan(args, cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace, cfg: Config) -> int:
    from torchrec_models.launcher import launch_local, under_launcher
    from torchrec_models.worker import preflight, train_worker

    if args.nproc_per_node < 1:
        raise ConfigError("--nproc-per-node", "must be >= 1", where="option")
    preflight(cfg, args.nproc_per_node)
    worker_args = (args.config, tuple(args.overrides), str(args.run_dir))
    if under_launcher() or (args.nproc_per_node == 1 and args.max_restarts == 0):
        summary = train_worker(*worker_args)
    else:
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        try:
            summary = launch_local(train_worker, worker_args, args.nproc_per_node, args.max_restarts)[0]
        except ChildFailedError as exc:
            print(f"error: training failed: {exc.get_first_failure()[1].message}", file=sys.stderr)
            return 1
    if summary is not None:
        _report(summary, args.run_dir)
    return 0


def _report(summary: dict, run_dir: Path) -> None:
    ev = summary.get("eval") or {}
    rate = summary.get("examples_per_sec")
    print(
        f"done: {summary['world_size']} rank(s), {summary['steps']} steps, "
        f"{rate:,.0f} examples/s, " if rate else "done: ",
        end="",
    )
    print(f"final loss {summary['final_train_loss']:.4f}, eval auc {ev.get('auc', float('nan')):.4f}; "
          f"summary in {run_dir / 'summary.json'}")


def _plan(args: argparse.Namespace, cfg: Config) -> int:
    from torchrec_models.planning import plan_offline

    report = plan_offline(cfg, args.world_size, args.device)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(report["text"])
    return 0
