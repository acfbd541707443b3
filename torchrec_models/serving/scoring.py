"""``evaluate`` and ``predict``: a checkpoint's model on preprocessed data, sharded at any world size.

The model is rebuilt from the config saved in the checkpoint, planned and sharded for this world
size, and restored through torch.distributed.checkpoint (which reshards). The data directory is
read whole, in file order, each row once: ``evaluate`` reports AUC, NE and logloss over it,
``predict`` writes one probability per row, in row order.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from torchrec_models.config import Config
from torchrec_models.train.checkpoint import manifest_config, read_manifest
from torchrec_models.train.outputs import write_atomically, write_npy


def scoring_config(checkpoint: Path, data_dir: Path) -> Config:
    """The checkpoint's run config, reading ``data_dir`` whole as its held-out set."""
    from torchrec_models.tasks import task_for

    cfg = manifest_config(read_manifest(checkpoint), checkpoint)
    return task_for(cfg).scoring_config(cfg, data_dir)


@torch.no_grad()
def predict_rows(trainer: Any) -> np.ndarray | None:
    """Every held-out row's probability, in row order, on rank 0 (None elsewhere); a collective."""
    env, plan, batch_size = trainer.env, trainer.eval_plan, trainer.cfg.train.batch_size
    model = trainer.plain_model()
    model.eval()
    positions, scores = [], []
    batches = trainer.source.eval_batches(env.rank, env.world_size, batch_size, range(plan.steps))
    for i, batch in enumerate(batches):
        _, (_, logits, _) = model(batch.to(env.device))
        real = plan.weights(i, env.rank, env.device).bool()
        start = (i * env.world_size + env.rank) * batch_size
        positions.append(torch.arange(start, start + batch_size)[real.cpu()])
        scores.append(torch.sigmoid(logits.float())[real].cpu())
    mine = (torch.cat(positions).numpy(), torch.cat(scores).numpy())
    parts = [mine]
    if dist.is_initialized() and env.world_size > 1:
        parts = [None] * env.world_size
        dist.all_gather_object(parts, mine)
    if not env.is_main:
        return None
    out = np.empty(plan.examples, dtype=np.float32)
    for where, values in parts:
        out[where] = values
    return out


def score_worker(mode: str, checkpoint: str, data_dir: str, out: str | None) -> dict[str, Any] | None:
    """One rank of ``evaluate`` (returns the metrics on rank 0) or ``predict`` (rank 0 writes ``out``)."""
    from torchrec_models.runtime.distributed import process_group
    from torchrec_models.runtime.quiet import quiet_library_noise
    from torchrec_models.train.checkpoint import load_checkpoint
    from torchrec_models.train.trainer import Trainer
    from torchrec_models.runtime.gc_freeze import freeze_long_lived
    from torchrec_models.runtime.environment import under_launcher
    from torchrec_models.runtime.worker import reporting_user_errors

    quiet_library_noise()
    if under_launcher():
        freeze_long_lived()
    cfg = scoring_config(Path(checkpoint), Path(data_dir))
    with process_group(cfg.sharding.device) as env, reporting_user_errors(env):
        trainer = Trainer(cfg, env, None)
        step = load_checkpoint(trainer, Path(checkpoint))
        if mode == "evaluate":
            result = {**trainer.evaluate(step), "checkpoint": checkpoint, "step": step, "data": data_dir}
            if env.is_main and out:
                write_atomically(Path(out), lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
            return result if env.is_main else None
        scores = predict_rows(trainer)
        if scores is not None:
            write_npy(Path(out), scores)
            return {"rows": int(len(scores)), "out": out, "checkpoint": checkpoint, "step": step}
        return None
