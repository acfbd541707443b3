"""Config -> sharded model: build on meta, plan, wrap in DistributedModelParallel, init tables."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingEnv

from torchrec_models.config import Config, table_names
from torchrec_models.distributed import DistEnv, set_dense_math
from torchrec_models.models import build_model, compile_dense_parts, set_output_bias
from torchrec_models.sharding import PlanResult, make_plan, make_sharders
from torchrec_models.table_init import init_tables


def autocast_dtype(cfg: Config) -> torch.dtype | None:
    return torch.bfloat16 if cfg.train.precision == "bf16" else None


def build_sharded_model(
    cfg: Config, env: DistEnv, label_rate: float | None = None
) -> tuple[DistributedModelParallel, PlanResult]:
    """The DMP-wrapped ranker with this rank's shards, initialized independently of the plan;
    the logit's bias starts at ``label_rate`` when given and ``model.output_bias`` asks for it."""
    set_dense_math(env.device, cfg.train.tf32)
    model = build_model(cfg.model, env.device, cfg.train.seed, autocast_dtype(cfg))
    if label_rate is not None and cfg.model.output_bias == "label_rate":
        set_output_bias(model, label_rate)
    if cfg.train.compile:
        compile_dense_parts(model)
    pg = dist.group.WORLD
    planned = make_plan(cfg, model, env.world_size, env.local_world_size, env.device.type, pg)
    dmp = DistributedModelParallel(
        module=model,
        env=ShardingEnv.from_process_group(pg),
        device=env.device,
        plan=planned.plan,
        sharders=make_sharders(cfg, extend_cpu=True, device_type=env.device.type),
    )
    init_tables(dmp, table_names(cfg.model.num_sparse_features), cfg.train.seed)
    return dmp, planned
