"""The plain-PyTorch baseline trains the same model whatever the world size: its hand-averaged
sparse table gradients and DDP's dense ones give one process's update on the global batch."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from torchrec_models.launcher import launch_local

TINY = "configs/tiny.toml"
STEPS = 12


def _baseline_parameters(batch_size: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """Rank body: train the baseline STEPS steps; rank 0 returns every parameter before and after."""
    from benchmarks.baseline import BaselineTrainer
    from torchrec_models.config import load_config
    from torchrec_models.distributed import process_group

    cfg = load_config(TINY, [f"train.batch_size={batch_size}", f"train.steps={STEPS}", "train.warmup_steps=0",
                             "train.dense_optimizer=sgd"])
    with process_group("cpu") as env:
        trainer = BaselineTrainer(cfg, env)
        before = {k: v.detach().clone() for k, v in trainer.model.module.state_dict().items()}
        trainer.train_steps(0, STEPS, trainer.make_meter(skip=STEPS, window=1))
        after = {k: v.detach().clone() for k, v in trainer.model.module.state_dict().items()}
        return (before, after) if env.is_main else None


def _run(world_size: int, batch_size: int) -> dict[str, Any]:
    return launch_local(_baseline_parameters, (batch_size,), world_size)[0]


@pytest.mark.slow
def test_baseline_at_two_ranks_matches_one_process() -> None:
    (start, one), (_, two) = _run(1, 128), _run(2, 64)
    assert one.keys() == two.keys()
    moved = {k: float((one[k] - start[k]).abs().max()) for k in one if k.startswith("tables.")}
    assert min(moved.values()) > 1e-3, moved  # every table trained
    diffs = {k: float((one[k] - two[k]).abs().max()) for k in one}
    assert max(diffs.values()) < 1e-5, diffs
