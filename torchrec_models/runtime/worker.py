"""What each rank runs: join the process group, train, tear down. Thin by design."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from torchrec_models.config import Config, ConfigError, load_config
from torchrec_models.runtime.gc_freeze import freeze_long_lived
from torchrec_models.runtime.quiet import quiet_library_noise


def preflight(cfg: Config, nproc: int, run_dir: Path | None = None, resume: str = "none") -> None:
    """Checks what can be checked before any process starts or any file is written."""
    from torchrec_models.data.source import make_source
    from torchrec_models.sharding.device_support import validate_for_device
    from torchrec_models.train.evaluation import plan_eval

    wants_cuda = cfg.sharding.device == "cuda" or (cfg.sharding.device == "auto" and torch.cuda.is_available())
    if wants_cuda and not torch.cuda.is_available():
        raise ConfigError("sharding.device", "'cuda' requested but no CUDA device is visible")
    if wants_cuda and nproc > torch.cuda.device_count():
        raise ConfigError("--nproc-per-node", f"{nproc} ranks but {torch.cuda.device_count()} GPUs", where="option")
    validate_for_device(cfg, "cuda" if wants_cuda else "cpu")
    source = make_source(cfg)  # opens the data (memory maps only), so a bad data.path stops the run here
    plan_eval(cfg.train.eval_steps, cfg.train.batch_size, nproc, source.eval_examples(),
              source.train_examples() is None)  # an eval_steps past the held-out set stops it too
    if run_dir is not None:
        check_resume(cfg, run_dir, resume)


def check_resume(cfg: Config, run_dir: Path, resume: str) -> None:
    """The checkpoint a resume would load must exist, be complete and match the config's tables."""
    from torchrec_models.train.checkpoint import check_compatible, read_manifest, resolve_resume

    root = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else run_dir / "checkpoints"
    path = resolve_resume(resume, root)
    if path is not None:
        check_compatible(read_manifest(path), cfg, path)


def train_worker(
    config_path: str | None, overrides: tuple[str, ...], run_dir: str, resume: str = "auto"
) -> dict[str, Any] | None:
    """One rank's whole life; rank 0 returns the summary."""
    quiet_library_noise()
    from torchrec_models.runtime.distributed import process_group
    from torchrec_models.train.trainer import run_training

    if _launched():  # a process of its own: what the imports made lives until it exits
        freeze_long_lived()
    cfg = load_config(config_path, list(overrides))
    with process_group(cfg.sharding.device) as env, reporting_user_errors(env):
        summary = run_training(cfg, env, Path(run_dir), resume)
        return summary if env.is_main else None


@contextmanager
def reporting_user_errors(env: Any) -> Iterator[None]:
    """Bad input inside a launched rank ends it with one line and USER_ERROR, not a traceback
    (run alone, the error goes up to the CLI, which prints it)."""
    from torchrec_models.errors import CheckpointError, DataError

    try:
        yield
    except (ConfigError, CheckpointError, DataError) as exc:
        if env.world_size == 1 and not _launched():
            raise
        _report_user_error(str(exc), env.rank)


USER_ERROR = 2  # the exit status of a rank stopped by bad input (one line, no traceback)
ERROR_DIR_ENV = "TORCHREC_MODELS_ERROR_DIR"  # set by the CLI's local launch: ranks leave messages there


def _report_user_error(message: str, rank: int) -> None:
    """Leaves the message for the local launcher to print once (else prints it) and exits USER_ERROR."""
    directory = os.environ.get(ERROR_DIR_ENV)
    if directory:
        (Path(directory) / f"rank{rank}.txt").write_text(message)
    else:
        print(f"error: rank {rank}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR)


def read_user_errors(directory: Path) -> list[str]:
    """The distinct messages ranks left in ``directory``, rank order; identical ones once."""
    found = sorted(directory.glob("rank*.txt"), key=lambda p: int(p.stem[4:]))
    return list(dict.fromkeys(p.read_text() for p in found))


def _launched() -> bool:
    from torchrec_models.runtime.environment import under_launcher

    return under_launcher()
