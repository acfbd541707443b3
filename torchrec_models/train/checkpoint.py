"""Checkpoints with torch.distributed.checkpoint (DCP): sharded, atomic, reshardable.

Layout: ``<dir>/step_00000040/`` holds DCP's files and ``manifest.json``. Every rank writes its
shards into ``<dir>/.step_00000040.tmp``; rank 0 adds the manifest last and renames the folder,
so a folder named ``step_*`` with a manifest is complete, and nothing else is ever chosen.
Only tensors go through DCP (nothing is unpickled on load); everything else is JSON.
Restoring into another world size or plan works because DCP reshards on load.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from torchrec_models.config import Config
from torchrec_models.errors import CheckpointError
from torchrec_models.train.outputs import write_json

MANIFEST = "manifest.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d{8})$")


@dataclass(frozen=True)
class CheckpointRef:
    path: Path
    step: int


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint, or CheckpointError saying what is wrong."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {MANIFEST})")
    try:
        data = json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{manifest}: unreadable ({exc.msg})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not (path / ".metadata").is_file():
        raise CheckpointError(f"{path}: incomplete or of an unknown format")
    _check_manifest_fields(data, manifest)
    return data


def _check_manifest_fields(data: dict[str, Any], manifest: Path) -> None:
    """The fields a resume or an export reads, with their types; the message names the field."""
    def bad(field: str, what: str) -> CheckpointError:
        return CheckpointError(f"{manifest}: '{field}' {what} (was the file edited?)")

    for field in ("step", "world_size"):
        value = data.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(field, "must be an integer >= 0")
    tables = data.get("tables")
    if not isinstance(tables, dict) or not tables:
        raise bad("tables", "must map each table to [rows, dim]")
    for name, shape in tables.items():
        if not (isinstance(shape, list) and len(shape) == 2 and all(type(n) is int and n > 0 for n in shape)):
            raise bad(f"tables.{name}", "must be [rows, dim], two integers > 0")
    config = data.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) \
            or not isinstance(config["model"].get("arch"), str):
        raise bad("config", "must hold the run's config, with model.arch")


def manifest_config(manifest: dict[str, Any], path: Path) -> Config:
    """The run config saved in a checkpoint's manifest, validated like any config."""
    from torchrec_models.config import ConfigError, build_config

    try:
        return build_config(manifest["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path / MANIFEST}: its saved config is invalid: {exc}") from None


def complete_checkpoints(root: Path, strict: bool = False) -> list[CheckpointRef]:
    """Complete checkpoints under ``root``, oldest first. Partial ones (no manifest yet: a save
    that did not finish) are skipped; so are damaged ones, unless ``strict``, where a manifest
    that exists but does not read right raises CheckpointError rather than letting a resume
    fall back to an older step without a word."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if not match:
            continue
        try:
            read_manifest(child)
        except CheckpointError:
            if strict and (child / MANIFEST).is_file():
                raise
            continue
        found.append(CheckpointRef(child, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def resolve_resume(resume: str, root: Path) -> Path | None:
    """``auto``: the newest complete checkpoint in ``root`` (or none); ``none``; or a path."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(root, strict=True)
        return found[-1].path if found else None
    path = Path(resume)
    newest = complete_checkpoints(path, strict=True)
    if newest:  # a checkpoint folder's parent: take its newest
        return newest[-1].path
    read_manifest(path)
    return path


def table_shapes(cfg: Config) -> dict[str, list[int]]:
    from torchrec_models.config import table_names

    names = table_names(cfg.model.num_sparse_features)
    return {n: [rows, cfg.model.embedding_dim] for n, rows in zip(names, cfg.model.table_rows())}


def _tensor_state(trainer: Any) -> dict[str, Any]:
    """What DCP saves and loads in place: model, optimizer state, this rank's RNG."""
    rank = trainer.env.rank
    rng = {"cpu": torch.get_rng_state()}
    if trainer.env.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(trainer.env.device)
    return {"model": trainer.model.state_dict(), "optim": trainer.optimizer.state_dict()["state"],
            "rng": {f"rank{rank}": rng}}


def save_checkpoint(trainer: Any, root: Path, step: int, keep: int, extra: dict[str, Any] | None = None) -> Path:
    """Writes a complete checkpoint of ``trainer`` at ``step`` (``extra`` joins its manifest); a collective."""
    final, tmp = step_dir(root, step), root / f".step_{step:08d}.tmp"
    if trainer.env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    dcp.save(_tensor_state(trainer), checkpoint_id=str(tmp))
    _barrier()
    if trainer.env.is_main:
        write_json(tmp / MANIFEST, {
            "format": FORMAT, "step": step, "world_size": trainer.env.world_size,
            "tables": table_shapes(trainer.cfg), "plan": trainer.plan, "config": trainer.cfg.to_dict(),
            **(extra or {}),
        })
        _fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _prune(root, keep)
    _barrier()
    return final


def load_checkpoint(trainer: Any, path: Path) -> int:
    """Restores ``trainer`` from ``path`` (any world size or plan); returns the step to go on from."""
    manifest = read_manifest(path)
    check_compatible(manifest, trainer.cfg, path)
    state = _tensor_state(trainer)
    saved = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    state["rng"] = {k: v for k, v in state["rng"].items() if any(s.startswith(f"rng.{k}.") for s in saved)}
    if not state["rng"]:  # a rank the saving world did not have
        del state["rng"]
    dcp_load(state, path)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict({"state": state["optim"]})
    for rng in state.get("rng", {}).values():
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and trainer.env.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], trainer.env.device)
    return int(manifest["step"])


def dcp_load(state: dict[str, Any], path: Path, **kwargs: Any) -> None:
    """``dcp.load`` in place; damaged or missing shard files become one CheckpointError."""
    try:
        dcp.load(state, checkpoint_id=str(path), **kwargs)
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 -- whatever the reader raised, the files are the cause
        raise CheckpointError(f"{path}: its tensor files could not be read ({_first_cause(exc)[:300]})") from None


def _first_cause(exc: BaseException) -> str:
    """The first line of the underlying error (DCP wraps each rank's failure)."""
    if isinstance(exc, CheckpointException) and exc.failures:
        exc = next(iter(exc.failures.values()))[0]
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


# The model fields that shape parameters beyond the tables, per architecture.
_SHAPE_FIELDS = {
    "dlrm": ("dense_in_features", "bottom_mlp", "top_mlp", "embedding_dtype"),
    "dcn": ("dense_in_features", "bottom_mlp", "top_mlp", "embedding_dtype", "dcn_num_layers", "dcn_low_rank_dim"),
    "projection": ("dense_in_features", "bottom_mlp", "top_mlp", "embedding_dtype",
                   "projection_branch1", "projection_branch2"),
    "two_tower": ("user_feature_count", "tower_mlp", "embedding_dtype"),
}
_OPTIMIZER_FIELDS = ("embedding_optimizer", "dense_optimizer")


def check_compatible(manifest: dict[str, Any], cfg: Config, path: Path) -> None:
    """Tables, dense layers and optimizers must match the run's config, so the saved tensors fit;
    the message names the first table or key that differs."""
    saved, current = manifest["tables"], table_shapes(cfg)
    for name in sorted(set(saved) | set(current)):
        if name not in current:
            raise CheckpointError(f"{path}: checkpoint has table {name} that this config does not")
        if name not in saved:
            raise CheckpointError(f"{path}: this config has table {name} that the checkpoint does not")
        if list(saved[name]) != list(current[name]):
            raise CheckpointError(
                f"{path}: table {name} is {saved[name][0]} x {saved[name][1]} in the checkpoint "
                f"but {current[name][0]} x {current[name][1]} in this config")
    arch = manifest["config"]["model"]["arch"]
    if arch != cfg.model.arch:
        raise CheckpointError(f"{path}: model.arch is {arch!r} in the checkpoint but {cfg.model.arch!r} here")
    saved_cfg, current_cfg = manifest["config"], cfg.to_dict()
    keys = [("model", k) for k in _SHAPE_FIELDS.get(arch, ())] + [("train", k) for k in _OPTIMIZER_FIELDS]
    for section, key in keys:
        was, now = saved_cfg.get(section, {}).get(key), current_cfg[section][key]
        if was is not None and was != now:
            raise CheckpointError(f"{path}: {section}.{key} is {was!r} in the checkpoint but {now!r} here "
                                  "(a run directory of another config?)")


def _prune(root: Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        with open(child, "rb") as fh:
            os.fsync(fh.fileno())


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
