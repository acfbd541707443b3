"""``python -m torchrec_models train|plan ...``: parse, validate, launch, report."""
from __future__ import annotations

import argparse
import faulthandler
import json
import sys
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Sequence

from torchrec_models.config import Config, ConfigError, load_config
from torchrec_models.runtime.quiet import quiet_library_noise
from torchrec_models.errors import CheckpointError, DataError


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
    train.add_argument("--profile", type=Path, default=None, metavar="DIR",
                       help="write a torch.profiler trace of a few steps (train.profile_steps, after "
                            "train.measure_after) to DIR and print the ops that cost most")
    train.add_argument("--resume", default="auto", metavar="auto|none|PATH",
                       help="auto (default): the newest complete checkpoint of this run, if any")
    for name, what in (("evaluate", "AUC, NE, logloss and the example count of a checkpoint on preprocessed data"),
                       ("predict", "one probability per row of preprocessed data, in row order, as .npy")):
        score = sub.add_parser(name, help=what)
        score.add_argument("--checkpoint", required=True, type=Path,
                           help="a checkpoint, or a run directory (its newest complete checkpoint)")
        score.add_argument("--data", required=True, type=Path, help="a directory written by `preprocess criteo`")
        score.add_argument("--nproc-per-node", type=int, default=1, help="local ranks to start")
        score.add_argument("--out", required=name == "predict", type=Path, default=None,
                           help="the .npy of scores" if name == "predict" else "also write the metrics as JSON here")
    export = sub.add_parser("export", help="consolidate a checkpoint into one unsharded state dict")
    export.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint, or a run directory")
    export.add_argument("--out", required=True, type=Path, help="the .pt file to write")
    plan = sub.add_parser("plan", help="plan a cluster: sharding, memory per rank, throughput and cost forecast")
    _add_config_args(plan)
    _add_plan_args(plan)
    _add_preprocess_args(sub)
    return parser


def _add_preprocess_args(sub) -> None:
    pre = sub.add_parser("preprocess", help="convert raw Criteo TSV files (data.kind=criteo) or a MovieLens "
                                            "download (data.kind=movielens) into the layout training reads")
    pre.add_argument("dataset", choices=("criteo", "movielens", "movielens-synthetic"))
    pre.add_argument("--input", nargs="+", type=Path, metavar="PATH",
                     help="Criteo TSV files (train.txt, day_0 ... day_23, optionally .gz); for movielens, the "
                          "directory of an ml-100k / ml-1m / ml-20m / ml-25m download or of atomic files")
    pre.add_argument("--min-rating", type=float, default=4.0, help="movielens: ratings at least this are positives")
    pre.add_argument("--test-fraction", type=float, default=0.2,
                     help="movielens: each user's last fraction of ratings (by time) is the test period")
    for flag, default, what in (("--users", 10_000, "users"), ("--items", 20_000, "items"),
                                ("--ratings-per-user", 20, "interactions per user"), ("--seed", 0, "seed")):
        pre.add_argument(flag, type=int, default=default, help=f"movielens-synthetic: {what} (default {default})")
    pre.add_argument("--out", required=True, type=Path, help="the output directory")
    _add_config_args(pre)
    pre.add_argument("--num-embeddings", type=int, default=None, metavar="N",
                     help="ids modulo N for all 26 features (or take each table's rows from --config)")
    pre.add_argument("--frequency-threshold", type=int, default=0, metavar="K",
                     help="values seen fewer than K times share one id (a first pass counts them)")
    pre.add_argument("--vocab-from", type=Path, default=None, metavar="DIR",
                     help="apply the vocabulary of an earlier --frequency-threshold output (e.g. to the eval day)")
    pre.add_argument("--on-bad-line", choices=("error", "skip"), default="error",
                     help="a malformed line stops with its file and line (default), or is skipped and counted")
    pre.add_argument("--allow-empty", action="store_true",
                     help="accept an input with no data rows (an error otherwise: usually a failed download)")
    pre.add_argument("--chunk-rows", type=int, default=32768, metavar="N", help="lines parsed per block")


def _preprocess_movielens(args: argparse.Namespace) -> int:
    from torchrec_models.retrieval.preprocess import SplitOptions, preprocess_movielens, preprocess_raw
    from torchrec_models.retrieval.synthetic import synthetic_ratings

    split = SplitOptions(args.min_rating, args.test_fraction)
    if args.dataset == "movielens-synthetic":
        for flag in ("users", "items", "ratings_per_user"):
            if getattr(args, flag) < 1:
                raise ConfigError(f"--{flag.replace('_', '-')}", "must be >= 1", where="option")
        raw = synthetic_ratings(args.users, args.items, args.ratings_per_user, args.seed)
        meta = preprocess_raw(raw, args.out, split, f"synthetic seed {args.seed}")
    elif not args.input or len(args.input) != 1:
        raise ConfigError("--input", "movielens takes one directory", where="option")
    else:
        meta = preprocess_movielens(args.input[0], args.out, split)
    print(f"{meta['layout']}: {meta['ratings']:,} ratings, {meta['users']:,} users, {meta['items']:,} items; "
          f"{meta['train_positives']:,} training and {meta['test_positives']:,} test positives "
          f"({meta['test_users']:,} test users) in {args.out}")
    return 0


def _add_plan_args(plan: argparse.ArgumentParser) -> None:
    from torchrec_models.sharding.gpus import DENSE_PEAK_FRACTION, GPUS, GPUS_PER_NODE

    plan.add_argument("--world-size", type=int, default=8, help="ranks (GPUs) in all")
    plan.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    plan.add_argument("--nodes", type=int, default=None,
                      help=f"hosts (default: {GPUS_PER_NODE} GPUs per host when the world size is a multiple of "
                           f"{GPUS_PER_NODE}, else 1)")
    plan.add_argument("--gpu", choices=sorted(GPUS), default=None, help="GPU preset (default h100)")
    plan.add_argument("--hbm-gb", type=float, default=None,
                      help="memory per GPU in GB of 2^30 bytes (default: sharding.hbm_gb, else the preset's)")
    plan.add_argument("--examples", type=int, default=None, help="forecast the time and cost of this many examples")
    plan.add_argument("--price", action="append", default=[], metavar="KIND=USD_PER_HOUR",
                      help="override a price, e.g. --price H100=2.5 (repeatable)")
    plan.add_argument("--dense-peak-fraction", type=float, default=DENSE_PEAK_FRACTION,
                      help=f"assumed share of the GPU's dense peak the MLPs reach (default {DENSE_PEAK_FRACTION})")
    plan.add_argument("--json", action="store_true", help="one JSON object instead of a table")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not faulthandler.is_enabled():  # each rank under torchrun / torchx enters here
        faulthandler.enable()  # a native crash prints every thread's Python stack
    quiet_library_noise()
    try:
        if args.command == "export":
            return _export(args)
        if args.command == "preprocess":
            return _preprocess(args)
        if args.command in ("evaluate", "predict"):
            return _score(args)
        if args.command == "train" and args.profile is not None:
            args.overrides.append(f"train.profile_dir={args.profile.resolve()}")
        cfg = load_config(args.config, args.overrides)
        if args.command == "train":
            return _train(args, cfg)
        return _plan(args, cfg)
    except (ConfigError, CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _preprocess(args: argparse.Namespace) -> int:
    from torchrec_models.data.criteo_preprocess import CriteoDataError, PreprocessOptions, preprocess

    if args.dataset.startswith("movielens"):
        return _preprocess_movielens(args)
    if not args.input:
        raise ConfigError("--input", "criteo needs its TSV files", where="option")
    sizes = None
    if args.num_embeddings is not None and (args.config or args.overrides):
        raise ConfigError("--num-embeddings", "give --num-embeddings or --config, not both", where="option")
    if args.num_embeddings is not None:
        if args.num_embeddings < 1:
            raise ConfigError("--num-embeddings", "must be >= 1", where="option")
        sizes = [args.num_embeddings] * 26
    elif args.config or args.overrides:
        sizes = load_config(args.config, args.overrides).model.table_rows()
        if len(sizes) != 26:
            raise ConfigError("model.num_embeddings_per_feature", f"has {len(sizes)} tables; Criteo has 26 features")
    options = PreprocessOptions(table_sizes=sizes, frequency_threshold=args.frequency_threshold,
                                vocab_from=args.vocab_from, on_bad_line=args.on_bad_line,
                                chunk_rows=args.chunk_rows, progress=True, allow_empty=args.allow_empty)
    try:
        meta = preprocess(args.input, args.out, options)
    except (CriteoDataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"preprocessed {len(meta['files'])} file(s): {meta['rows']:,} rows, "
          f"{meta['bad_lines_skipped']:,} bad lines skipped, {meta['seconds']:.1f} s, "
          f"{meta['rows_per_sec'] or 0:,.0f} rows/s; {args.out / 'meta.json'}")
    return 0


def _train(args: argparse.Namespace, cfg: Config) -> int:
    if args.nproc_per_node < 1:
        raise ConfigError("--nproc-per-node", "must be >= 1", where="option")
    with _rank_server_for(args.nproc_per_node, args.max_restarts):  # its imports overlap the checks
        from torchrec_models.runtime.worker import preflight, train_worker

        preflight(cfg, args.nproc_per_node, args.run_dir, args.resume)
        worker_args = (args.config, tuple(args.overrides), str(args.run_dir), args.resume)
        code, summary = _run_ranks(train_worker, worker_args, args.nproc_per_node, args.max_restarts)
    if summary is not None:
        _report(summary, args.run_dir)
    return code


def _run_ranks(worker, worker_args: tuple, nproc: int, max_restarts: int = 0) -> tuple[int, Any]:
    """(exit status, rank 0's return value): this process as the only rank, or ``nproc`` local
    ranks through torch elastic. A rank stopped by bad input has its one line printed once."""
    from torchrec_models.runtime.launcher import launch_local
    from torchrec_models.runtime.worker import ERROR_DIR_ENV, read_user_errors

    if nproc < 1:
        raise ConfigError("--nproc-per-node", "must be >= 1", where="option")
    if not _launches_ranks(nproc, max_restarts):
        return 0, worker(*worker_args)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    with _rank_error_dir() as errors:
        try:
            return 0, launch_local(worker, worker_args, nproc, max_restarts, env={ERROR_DIR_ENV: str(errors)})[0]
        except ChildFailedError as exc:
            messages = read_user_errors(errors)
            if messages:  # a rank stopped on bad input; the others were stopped because of it
                for message in messages:
                    print(f"error: {message}", file=sys.stderr)
                return 2, None
            rank, failure = exc.get_first_failure()
            print(_failure_traceback(failure), file=sys.stderr, end="")
            print(f"error: rank {rank} failed (exit code {failure.exitcode})", file=sys.stderr)
            return 1, None


def _launches_ranks(nproc: int, max_restarts: int) -> bool:
    """Whether a command starts local ranks (it runs in this process when it is a rank itself,
    or the only one with no restarts to make)."""
    from torchrec_models.runtime.environment import under_launcher

    return not under_launcher() and (nproc > 1 or max_restarts > 0)


def _rank_server_for(nproc: int, max_restarts: int = 0) -> AbstractContextManager:
    """A rank server while this command checks and runs its ranks, when it starts local ranks on a
    host without CUDA (see runtime.rank_server); otherwise nothing."""
    from torchrec_models.runtime import rank_server
    from torchrec_models.runtime.environment import rank_environment

    if _launches_ranks(nproc, max_restarts) and not rank_server.cuda_host():
        return rank_server.rank_server(rank_environment(nproc))
    return nullcontext()


def _failure_traceback(failure: Any) -> str:
    """The failed rank's Python traceback as elastic recorded it (empty for a native crash, whose
    stacks the rank printed itself)."""
    message = failure.message
    if isinstance(message, dict):
        return message.get("extraInfo", {}).get("py_callstack") or f"{message.get('message', '')}\n"
    return f"{message}\n" if message else ""


def _score(args: argparse.Namespace) -> int:
    """``evaluate`` / ``predict``: checked before any rank starts, then run on every rank."""
    with _rank_server_for(args.nproc_per_node):  # its imports overlap the checks
        code, result, checkpoint = _checked_scoring(args)
    if result is not None:
        if args.command == "evaluate":
            print(json.dumps({k: v for k, v in result.items() if k not in ("checkpoint", "data")}))
        else:
            print(f"predicted {result['rows']:,} rows with {checkpoint} (step {result['step']}); {args.out}")
    return code


def _checked_scoring(args: argparse.Namespace) -> tuple[int, Any, Path]:
    """Checks the checkpoint and the data, then scores on the ranks: (exit status, rank 0's result, checkpoint)."""
    from torchrec_models.data.source import make_source
    from torchrec_models.serving.export import find_checkpoint
    from torchrec_models.serving.scoring import score_worker, scoring_config
    from torchrec_models.tasks import task_for

    checkpoint = find_checkpoint(args.checkpoint)
    cfg = scoring_config(checkpoint, args.data)
    if args.command == "predict" and not task_for(cfg).predicts_rows:
        raise ConfigError("predict", f"scores rows for a ranker; for a {cfg.model.arch} checkpoint use "
                          "`evaluate` (its metrics) and `export` (its vectors)", where="command")
    make_source(cfg)  # a bad --data stops here, naming the file
    out = str(args.out) if args.out else None
    code, result = _run_ranks(score_worker, (args.command, str(checkpoint), str(args.data), out),
                              args.nproc_per_node)
    return code, result, checkpoint


@contextmanager
def _rank_error_dir() -> Iterator[Path]:
    """A folder where locally launched ranks leave their one-line errors (see worker.ERROR_DIR_ENV),
    with elastic's own failure log (a launcher traceback, not the rank's) kept quiet meanwhile."""
    import logging
    import tempfile

    names = ("torch.distributed.elastic.multiprocessing.api", "torch.multiprocessing.spawn")
    logs = [logging.getLogger(n) for n in names]
    levels = [log.level for log in logs]
    with tempfile.TemporaryDirectory(prefix="torchrec-models-errors-") as directory:
        for log in logs:
            log.setLevel(logging.CRITICAL)
        try:
            yield Path(directory)
        finally:
            for log, level in zip(logs, levels):
                log.setLevel(level)


def _export(args: argparse.Namespace) -> int:
    from torchrec_models.serving.export import export_checkpoint

    source = export_checkpoint(args.checkpoint, args.out)
    print(f"exported {source} -> {args.out}")
    return 0


def _report(summary: dict, run_dir: Path) -> None:
    ev = summary.get("eval") or {}
    rate = summary.get("examples_per_sec")
    print(
        f"done: {summary['world_size']} rank(s), {summary['steps']} steps, "
        f"{rate:,.0f} examples/s, " if rate else "done: ",
        end="",
    )
    loss = summary["final_train_loss"]
    headline = next(((k, ev[k]) for k in ("auc", "recall_at_100") if k in ev), ("auc", float("nan")))
    print(f"final loss {loss if loss is None else round(loss, 4)}, eval {headline[0]} {headline[1]:.4f}; "
          f"summary in {run_dir / 'summary.json'}")


def _plan(args: argparse.Namespace, cfg: Config) -> int:
    """Prints the plan and forecast; exits 1 with the missing memory when the tables cannot fit."""
    from torchrec_models.sharding.planning import PlanDoesNotFit, make_cluster, plan_offline
    from torchrec_models.sharding.pricing import parse_prices

    if args.examples is not None and args.examples < 1:
        raise ConfigError("--examples", f"must be >= 1, got {args.examples}", where="option")
    if not 0 < args.dense_peak_fraction <= 1:
        raise ConfigError("--dense-peak-fraction", f"must be in (0, 1], got {args.dense_peak_fraction}", where="option")
    try:
        prices = parse_prices(args.price)
    except ValueError as exc:
        raise ConfigError("--price", str(exc), where="option") from None
    cluster = make_cluster(cfg, args.world_size, args.device, args.nodes, args.gpu, args.hbm_gb)
    try:
        report = plan_offline(cfg, args.world_size, args.device, cluster=cluster, examples=args.examples,
                              prices=prices, dense_peak_fraction=args.dense_peak_fraction)
    except PlanDoesNotFit as exc:
        if args.json:
            print(json.dumps({"fits": False, "world_size": args.world_size, **exc.to_dict()}, indent=2))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "text"}, indent=2))
    else:
        print(report["text"])
    return 0
