"""Planning a cluster from a laptop: the planner on a topology built from flags, no processes."""
from __future__ import annotations

from typing import Any

import torch

from torchrec_models.config import Config
from torchrec_models.models import build_model
from torchrec_models.sharding import describe_plan, format_plan, make_plan


def plan_offline(cfg: Config, world_size: int, device_type: str, local_world_size: int | None = None) -> dict[str, Any]:
    """Plans the config's model (built on meta) for ``world_size`` ranks of ``device_type``."""
    model = build_model(cfg.model, torch.device("meta"), cfg.train.seed)
    local = local_world_size or min(world_size, 8)
    result = make_plan(cfg, model, world_size, local, device_type)
    described = describe_plan(result.plan)
    return {
        "world_size": world_size,
        "device": device_type,
        "source": result.source,
        "tables": described,
        "ranks": result.estimate,
        "text": format_plan(described, result.estimate),
    }
