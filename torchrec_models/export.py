"""Export: a checkpoint's sharded state -> one consolidated, unsharded state dict file.

The file holds only tensors, so ``torch.load(path, weights_only=True)`` reads it, and it loads
into ``build_model(...)`` built with tables on the CPU. No process group is needed: DCP
reassembles every table from whatever shards and world size wrote it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from torchrec_models.models import RankingModel, build_model
from torchrec_models.train.best import BEST_DIR
from torchrec_models.train.outputs import write_atomically
from torchrec_models.train.checkpoint import (
    MANIFEST, CheckpointError, dcp_load, manifest_config, read_manifest, resolve_resume,
)


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder as given; for a run directory, its best checkpoint (``keep_best``),
    else its newest complete one."""
    if (path / MANIFEST).is_file():  # a checkpoint folder: its own problems are the message
        read_manifest(path)
        return path
    for candidate in (path / "checkpoints" / BEST_DIR, path, path / "checkpoints"):
        try:
            found = resolve_resume(str(candidate), candidate)
        except CheckpointError:
            continue
        if found is not None:
            return found
    raise CheckpointError(f"{path}: no complete checkpoint here or under {path / 'checkpoints'}")


def load_unsharded(checkpoint: Path) -> RankingModel:
    """The unsharded model on the CPU with the checkpoint's weights."""
    manifest = read_manifest(checkpoint)
    cfg = manifest_config(manifest, checkpoint)
    model = build_model(cfg.model, torch.device("cpu"), cfg.train.seed, table_device="cpu")
    state = model.state_dict()
    dcp_load({"model": state}, checkpoint, no_dist=True)
    model.load_state_dict(state)
    return model


def export_checkpoint(path: Path, out: Path) -> Path:
    """Writes the consolidated state dict of the checkpoint at (or newest under) ``path`` to ``out``."""
    checkpoint = find_checkpoint(path)
    model = load_unsharded(checkpoint)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    write_atomically(out, lambda tmp: torch.save(state, tmp))
    return checkpoint
