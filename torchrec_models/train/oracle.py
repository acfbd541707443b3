"""The equivalence oracle: W sharded ranks against one process fed the same global batches.

Both sides start from the same weights (the dense part from the seed, tables from
``table_init``) and see the same global batches (each rank its slice), so after N steps
every parameter must agree up to float reduction order, for every sharding type.
"""
from __future__ import annotations

from typing import Any

import torch

from torchrec_models.config import load_config
from torchrec_models.runtime.launcher import launch_local
from torchrec_models.runtime.quiet import quiet_library_noise


def _train_and_gather(config_path: str | None, variants: dict[str, list[str]], steps: int) -> dict[str, Any] | None:
    """Rank body: for each named list of overrides, train ``steps`` steps and gather the weights."""
    quiet_library_noise()
    from torchrec_models.runtime.distributed import process_group
    from torchrec_models.serving.state import gather_full_state_dict
    from torchrec_models.train.trainer import Trainer

    results: dict[str, Any] = {}
    with process_group("cpu") as env:
        for name, overrides in variants.items():
            cfg = load_config(config_path, overrides + [f"train.steps={steps}"])
            trainer = Trainer(cfg, env, run_dir=None)
            trainer.train_steps(0, steps)
            state = gather_full_state_dict(trainer.model)
            if env.is_main:
                results[name] = {"state": state, "plan": trainer.plan}
            trainer.close()
    return results if env.is_main else None


def run_variants(
    config_path: str | None, variants: dict[str, list[str]], world_size: int, batch_size: int, steps: int
) -> dict[str, Any]:
    """Trains each variant at ``world_size`` ranks of ``batch_size`` examples; rank 0's results."""
    sized = {k: v + [f"train.batch_size={batch_size}"] for k, v in variants.items()}
    return launch_local(_train_and_gather, (config_path, sized, steps), world_size)[0]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest element-wise difference per parameter; the key sets must match."""
    if a.keys() != b.keys():
        raise ValueError(f"state dicts differ in keys: {sorted(a.keys() ^ b.keys())}")
    return {k: float((a[k].float() - b[k].float()).abs().max()) for k in a}


def _eval_logits(config_path: str | None, overrides: list[str], checkpoint: str, steps: int) -> Any:
    """Rank body: restore ``checkpoint`` and return all ranks' eval logits, in global batch order."""
    quiet_library_noise()
    import torch.distributed as dist

    from torchrec_models.runtime.distributed import process_group
    from torchrec_models.train.trainer import Trainer

    cfg = load_config(config_path, overrides)
    with process_group("cpu") as env:
        trainer = Trainer(cfg, env, run_dir=None)
        trainer.resume(checkpoint)
        model = trainer.plain_model().eval()
        batches = trainer.source.eval_batches(env.rank, env.world_size, cfg.train.batch_size, range(steps))
        with torch.no_grad():
            mine = [model(b.to(env.device))[1][1] for b in batches]
        gathered: list[Any] = [None] * env.world_size
        dist.all_gather_object(gathered, mine)
        return torch.cat([gathered[r][s] for s in range(steps) for r in range(env.world_size)])


def sharded_eval_logits(config_path: str | None, overrides: list[str], checkpoint: str, world_size: int,
                        steps: int) -> torch.Tensor:
    """Eval-stream logits of the sharded model restored from ``checkpoint`` at ``world_size`` ranks."""
    return launch_local(_eval_logits, (config_path, overrides, checkpoint, steps), world_size)[0]
