"""Export: a checkpoint's sharded state -> one consolidated, unsharded state dict file.

The file holds only tensors, so ``torch.load(path, weights_only=True)`` reads it, and it loads
into ``build_model(...)`` built with tables on the CPU. No process group is needed: DCP
reassembles every table from whatever shards and world size wrote it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from torchrec_models.config import Config
from torchrec_models.models import build_model
from torchrec_models.train.best import BEST_DIR
from torchrec_models.train.outputs import write_atomically, write_npy
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


def load_unsharded(checkpoint: Path) -> torch.nn.Module:
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
    from torchrec_models.tasks import task_for

    cfg = manifest_config(read_manifest(checkpoint), checkpoint)
    task_for(cfg).export_extras(model, cfg, out)
    return checkpoint


def item_vector_paths(out: Path) -> tuple[Path, Path]:
    """Where ``export`` of a two-tower checkpoint puts the corpus's vectors and their raw item ids."""
    out = Path(out)
    return out.with_name(f"{out.stem}.item_vectors.npy"), out.with_name(f"{out.stem}.item_ids.npy")


@torch.no_grad()
def export_item_vectors(model: torch.nn.Module, cfg: Config, out: Path) -> None:
    """Every item's vector (row i = item index i) and the raw ids, for an ANN index; read from the
    run's ``data.path`` (its item features)."""
    from torchrec_models.retrieval.source import MovieLensSource

    source = MovieLensSource(cfg)
    model.eval()
    items = np.arange(source.num_items)
    vectors = torch.cat([model.towers(source.features(None, chunk))[1] for chunk in np.array_split(
        items, max(1, len(items) // 4096))]).numpy()
    raw_ids = np.load(Path(cfg.data.path) / "item_ids.npy")
    vectors_path, ids_path = item_vector_paths(out)
    write_npy(vectors_path, vectors.astype(np.float32))
    write_npy(ids_path, raw_ids)
