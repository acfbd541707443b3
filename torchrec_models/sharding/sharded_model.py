"""Config -> sharded model: build on meta, plan, wrap in DistributedModelParallel, init tables."""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingEnv

from torchrec_models.config import Config, table_names
from torchrec_models.kernels import cpu_gemm, dot_interaction, linear_relu, pooled_lookup, rowwise_adagrad
from torchrec_models.runtime import host_memory, huge_pages, local_group, pooled_all_to_all
from torchrec_models.runtime.distributed import DistEnv, set_dense_math
from torchrec_models.models import build_model, compile_dense_parts
from torchrec_models.sharding.planner import PlanResult, make_plan, make_sharders
from torchrec_models.sharding.table_init import init_tables


def autocast_dtype(cfg: Config) -> torch.dtype | None:
    return torch.bfloat16 if cfg.train.precision == "bf16" else None


def apply_process_settings(cfg: Config, env: DistEnv) -> None:
    """The settings that hold for the whole process, not one model: dense math flags, which CPU
    kernels serve FBGEMM's ops and DLRM's interaction, the allocator's thresholds. Applied when a
    model is built; a process that steps two models in turn applies each one's before its steps."""
    set_dense_math(env.device, cfg.train.tf32)
    rowwise_adagrad.apply(cfg.train, env.device.type)
    pooled_lookup.apply(cfg, env.device.type)
    dot_interaction.SWITCH.apply(cfg.train.cpu_interaction, env.device.type)
    linear_relu.SWITCH.apply(cfg.train.cpu_mlp, env.device.type)
    cpu_gemm.apply(cfg.train.cpu_gemm, env.device.type)
    host_memory.apply(cfg.train, env.device.type)


def build_sharded_model(
    cfg: Config, env: DistEnv, prepare: Callable[[nn.Module], None] | None = None
) -> tuple[DistributedModelParallel, PlanResult]:
    """The DMP-wrapped model with this rank's shards, initialized independently of the plan;
    ``prepare`` (the task's data-dependent set-up) sees the unsharded model first."""
    apply_process_settings(cfg, env)
    model = build_model(cfg.model, env.device, cfg.train.seed, autocast_dtype(cfg))
    if prepare is not None:
        prepare(model)
    if cfg.train.compile:
        compile_dense_parts(model)
    pg = local_group.training_group(cfg.sharding.cpu_transport, env.device.type, env.world_size,
                                    env.local_world_size)
    planned = make_plan(cfg, model, env.world_size, env.local_world_size, env.device.type, pg)
    dmp = DistributedModelParallel(
        module=model,
        env=ShardingEnv.from_process_group(pg),
        device=env.device,
        plan=planned.plan,
        sharders=make_sharders(cfg, extend_cpu=True, device_type=env.device.type),
    )
    pooled_all_to_all.install(dmp, cfg.sharding.cpu_pooled_all_to_all)
    init_tables(dmp, table_names(cfg.model.num_sparse_features), cfg.train.seed)
    huge_pages.apply(dmp, cfg.train.cpu_huge_pages, env.device.type)
    return dmp, planned


def training_process_group(dmp: DistributedModelParallel) -> dist.ProcessGroup | None:
    """The group the sharded model's collectives run in (the one ``build_sharded_model`` chose)."""
    return dmp._env.process_group


def collectives_summary(dmp: DistributedModelParallel) -> dict[str, str]:
    """The group's backend and which all-to-all moves the pooled embeddings."""
    group = training_process_group(dmp)
    backend = str(dist.get_backend(group)) if group is not None and dist.is_initialized() else "none"
    return {"group": backend, "pooled_all_to_all": pooled_all_to_all.describe(dmp)}
