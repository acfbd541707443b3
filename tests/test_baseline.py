"""The plain-PyTorch baseline trains the same model whatever the world size: its hand-averaged
sparse table gradients and DDP's dense ones give one process's update on the global batch.

Compared with SGD everywhere: SGD adds each step's gradient as it is, so the two runs differ
only by fp32 rounding (see ``_rounding_bound``). Adagrad would divide by the root of the summed
squared gradients, which turns reduction-order noise in a near-zero gradient into a full-size
step, by an amount that depends on the CPU's vector width."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from torchrec_models.runtime.launcher import launch_local

TINY = "configs/tiny.toml"
STEPS = 12
GLOBAL_BATCH = 128
LR = 0.5
EPS32 = float(torch.finfo(torch.float32).eps)


def _baseline_parameters(batch_size: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """Rank body: train the baseline STEPS steps; rank 0 returns every parameter before and after."""
    from benchmarks.baseline import BaselineTrainer
    from torchrec_models.config import load_config
    from torchrec_models.runtime.distributed import process_group

    cfg = load_config(TINY, [f"train.batch_size={batch_size}", f"train.steps={STEPS}", "train.warmup_steps=0",
                             f"train.lr={LR}", "train.dense_optimizer=sgd", "train.embedding_optimizer=sgd"])
    with process_group("cpu") as env:
        trainer = BaselineTrainer(cfg, env)
        before = {k: v.detach().clone() for k, v in trainer.model.module.state_dict().items()}
        trainer.train_steps(0, STEPS, trainer.make_meter(skip=STEPS, window=1))
        after = {k: v.detach().clone() for k, v in trainer.model.module.state_dict().items()}
        return (before, after) if env.is_main else None


def _run(world_size: int, batch_size: int) -> dict[str, Any]:
    return launch_local(_baseline_parameters, (batch_size,), world_size)[0]


def _rounding_bound(start: torch.Tensor, end: torch.Tensor) -> float:
    """How far two SGD runs that differ only in summation order can drift apart.

    Each step rounds the stored weight (at most one ulp of the largest weight, for either run)
    and sums the batch's gradients in another order (at most GLOBAL_BATCH * eps of the update,
    the worst case of a sum of GLOBAL_BATCH terms); over STEPS steps the update sizes add up to
    no more than how far the weights moved in all.
    """
    largest = max(float(start.abs().max()), float(end.abs().max()))
    moved = float((end - start).abs().max())
    return STEPS * 2 * EPS32 * largest + GLOBAL_BATCH * EPS32 * STEPS * moved


@pytest.mark.slow
@pytest.mark.usefixtures("rank_server_for_module")
def test_baseline_at_two_ranks_matches_one_process() -> None:
    (start, one), (_, two) = _run(1, GLOBAL_BATCH), _run(2, GLOBAL_BATCH // 2)
    assert one.keys() == two.keys()
    bounds = {k: _rounding_bound(start[k], one[k]) for k in one}
    tables = [k for k in one if k.startswith("tables.")]
    moved = {k: float((one[k] - start[k]).abs().max()) for k in tables}
    assert all(moved[k] > 10 * bounds[k] for k in tables), (moved, bounds)  # every table trained, well past noise
    over = {k: (float((one[k] - two[k]).abs().max()), bounds[k]) for k in one
            if float((one[k] - two[k]).abs().max()) > bounds[k]}
    assert not over, over
