"""Sharding plans: the torchrec planner on a topology from the config, or a hand-built plan.

``sharding.type`` unset leaves every choice to the planner; set, it forces one type (and
``sharding.per_table`` one type per table). The planner proposes data_parallel, table_wise,
column_wise and table_column_wise on CPU, and model-parallel types only with the fused kernels;
row_wise and table_row_wise on CPU, and model-parallel types on the dense kernel, are built by
hand (they run fine) and their memory estimate still comes from the planner, asked through a
sharder that offers them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.fbgemm_qcomm_codec import CommType, QCommsConfig, get_qcomm_codecs_registry
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise, table_row_wise
from torchrec.distributed.types import CacheParams, ShardingPlan, ShardingType

from torchrec_models.config import Config, ConfigError, table_names
from torchrec_models.kernels import pooled_lookup
from torchrec_models.sharding.device_support import validate_for_device
from torchrec_models.train.optim import fused_params

EBC_PATH = "model.sparse_arch.embedding_bag_collection"
GIB = 1024**3
HAND_BUILT_ON_CPU = {ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value}
UVM_CACHING = EmbeddingComputeKernel.FUSED_UVM_CACHING.value
DENSE = EmbeddingComputeKernel.DENSE.value
COMM_TYPES = {"fp16": CommType.FP16, "bf16": CommType.BF16}


class ExtendedSharder(EmbeddingBagCollectionSharder):
    """An EBC sharder that also offers row_wise / table_row_wise on CPU and the dense kernel for
    every type, so the planner can estimate hand-built plans."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = super().sharding_types(compute_device_type)
        return types + sorted(HAND_BUILT_ON_CPU - set(types))

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> list[str]:
        kernels = super().compute_kernels(sharding_type, compute_device_type)
        return kernels if DENSE in kernels else kernels + [DENSE]


@dataclass
class PlanResult:
    """The plan DMP uses, how it was made, and the planner's per-rank memory estimate (rank 0)."""

    plan: ShardingPlan
    source: str
    estimate: list[dict[str, int]] | None


def table_types(cfg: Config) -> dict[str, str]:
    """The forced sharding type per table ('' where the planner chooses)."""
    names = table_names(cfg.model.num_sparse_features)
    return {t: cfg.sharding.per_table.get(t, cfg.sharding.type) for t in names}


def kernel_for(sharding_type: str, kernel: str) -> str:
    """Data-parallel tables always use the dense kernel (replicas updated like dense weights)."""
    return EmbeddingComputeKernel.DENSE.value if sharding_type == ShardingType.DATA_PARALLEL.value else kernel


def make_topology(
    cfg: Config, world_size: int, local_world_size: int, device_type: str, **hardware: float
) -> Topology:
    """The planner's view of the cluster; ``hardware`` passes bandwidths (bytes/ms) to Topology."""
    kwargs: dict[str, Any] = dict(hardware)
    if cfg.sharding.hbm_gb:
        kwargs["hbm_cap"] = int(cfg.sharding.hbm_gb * GIB)
    elif device_type == "cuda" and torch.cuda.is_available():  # the device's own size, not torchrec's 32 GiB default
        kwargs["hbm_cap"] = int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    if cfg.sharding.ddr_gb:
        kwargs["ddr_cap"] = int(cfg.sharding.ddr_gb * GIB)
    return Topology(
        world_size=world_size, local_world_size=local_world_size, compute_device=device_type, **kwargs
    )


def make_sharders(
    cfg: Config, extend_cpu: bool = False, device_type: str = "cuda"
) -> list[EmbeddingBagCollectionSharder]:
    """The EBC sharder with the fused optimizer and, if ``sharding.qcomm`` is set, quantized comms."""
    cls = ExtendedSharder if extend_cpu else EmbeddingBagCollectionSharder
    params = fused_params(cfg.train, pooled_lookup.bf16_output(cfg, device_type))
    return [cls(fused_params=params, qcomm_codecs_registry=qcomm_registry(cfg, device_type))]


def qcomm_registry(cfg: Config, device_type: str) -> dict[str, Any] | None:
    """torchrec's codecs for fp16 / bf16 forward and backward embedding communication (None: fp32)."""
    if cfg.sharding.qcomm == "none":
        return None
    precision = COMM_TYPES[cfg.sharding.qcomm]
    qcomms = QCommsConfig(forward_precision=precision, backward_precision=precision)
    return get_qcomm_codecs_registry(qcomms, device=torch.device(device_type))


def constraints(cfg: Config) -> dict[str, ParameterConstraints]:
    """Per-table constraints: the forced type (if any), the kernel, pooling and the UVM cache size."""
    out = {}
    pooling = dict(zip(table_names(cfg.model.num_sparse_features), cfg.model.multi_hot_sizes))
    for table, kind in table_types(cfg).items():
        kernels = [kernel_for(kind, cfg.sharding.kernel)] if kind else None
        if not kind:
            kernels = [cfg.sharding.kernel, EmbeddingComputeKernel.DENSE.value]
        extra: dict[str, Any] = {"min_partition": cfg.sharding.min_partition} if cfg.sharding.min_partition else {}
        if cfg.sharding.kernel == UVM_CACHING:
            extra["cache_params"] = CacheParams(load_factor=cfg.sharding.cache_load_factor)
        out[table] = ParameterConstraints(
            sharding_types=[kind] if kind else None, compute_kernels=kernels,
            pooling_factors=[float(pooling[table])], **extra
        )
    return out


def make_plan(
    cfg: Config, model: nn.Module, world_size: int, local_world_size: int, device_type: str,
    pg: dist.ProcessGroup | None = None, planner: EmbeddingShardingPlanner | None = None,
) -> PlanResult:
    """Plans ``model`` (tables on meta); with ``pg`` rank 0 plans and broadcasts.

    ``planner`` (from ``make_planner``) lets a caller keep its enumerator and storage reservation.
    """
    validate_for_device(cfg, device_type)
    hand_built = needs_hand_built_plan(cfg, device_type)
    # torchrec's planner refuses the dense kernel for sharded tables: estimate those as fused.
    dense_sharded = hand_built and cfg.sharding.kernel == DENSE
    plan_cfg = replace(cfg, sharding=replace(cfg.sharding, kernel="fused")) if dense_sharded else cfg
    if planner is None:
        planner = make_planner(plan_cfg, make_topology(plan_cfg, world_size, local_world_size, device_type))
    sharders = make_sharders(plan_cfg, extend_cpu=hand_built, device_type=device_type)
    if pg is not None and dist.get_world_size(pg) > 1:
        planned = planner.collective_plan(model, sharders, pg)
    else:
        planned = planner.plan(model, sharders)
    estimate = per_rank_estimate(planner, world_size)
    if not hand_built:
        return PlanResult(planned, "planner", estimate)
    plan = hand_built_plan(cfg, model, world_size, local_world_size, device_type)
    source = "hand-built (estimate from the planner" + (
        " for the fused kernel; the dense kernel adds a full-size gradient per table)" if dense_sharded else ")")
    return PlanResult(plan, source, estimate)


def needs_hand_built_plan(cfg: Config, device_type: str) -> bool:
    """Forced types the planner would not propose: row-wise ones on CPU, model-parallel ones on the dense kernel."""
    forced = {t for t in table_types(cfg).values() if t}
    row_wise_on_cpu = device_type != "cuda" and bool(forced & HAND_BUILT_ON_CPU)
    dense_model_parallel = cfg.sharding.kernel == DENSE and bool(forced - {ShardingType.DATA_PARALLEL.value})
    return row_wise_on_cpu or dense_model_parallel


def make_planner(cfg: Config, topology: Topology, **parts: Any) -> EmbeddingShardingPlanner:
    """The torchrec planner for the per-rank batch size; ``parts`` (enumerator, ...) go to it as is."""
    return EmbeddingShardingPlanner(
        topology=topology, batch_size=cfg.train.batch_size, constraints=constraints(cfg), **parts
    )


def hand_built_plan(
    cfg: Config, model: nn.Module, world_size: int, local_world_size: int, device_type: str
) -> ShardingPlan:
    """Every table gets its forced type through torchrec's sharding-plan helpers."""
    from torchrec.distributed.sharding_plan import column_wise, data_parallel, table_wise

    ebc = model.get_submodule(EBC_PATH)
    kernel = cfg.sharding.kernel
    generators = {}
    for i, (table, kind) in enumerate(table_types(cfg).items()):
        if kind == ShardingType.TABLE_COLUMN_WISE.value:
            raise ConfigError(
                f"sharding.per_table.{table}",
                "table_column_wise has no hand-built plan (needed with row-wise types on CPU or the dense kernel)"
            )
        generators[table] = {
            "data_parallel": lambda: data_parallel(),
            "table_wise": lambda: table_wise(rank=i % world_size, compute_kernel=kernel),
            "column_wise": lambda: column_wise(ranks=list(range(world_size)), compute_kernel=kernel),
            "row_wise": lambda: row_wise(compute_kernel=kernel),
            "table_row_wise": lambda: table_row_wise(host_index=0),
            "": lambda: table_wise(rank=i % world_size, compute_kernel=kernel),
        }[kind]()
    module_plan = construct_module_sharding_plan(
        ebc, generators, sharder=make_sharders(cfg, extend_cpu=True, device_type=device_type)[0],
        local_size=local_world_size, world_size=world_size, device_type=device_type,
    )
    for table, sharding in module_plan.items():
        sharding.compute_kernel = kernel_for(sharding.sharding_type, kernel)
    return ShardingPlan({EBC_PATH: module_plan})


def per_rank_estimate(planner: EmbeddingShardingPlanner, world_size: int) -> list[dict[str, int]] | None:
    """The planner's storage estimate (bytes) per rank, from the plan it chose."""
    best = getattr(planner, "_best_plan", None)
    if not best:
        return None
    ranks = [{"rank": r, "hbm_bytes": 0, "ddr_bytes": 0} for r in range(world_size)]
    for option in best:
        for shard in option.shards:
            if shard.rank is None or shard.storage is None:
                continue
            ranks[shard.rank]["hbm_bytes"] += int(shard.storage.hbm)
            ranks[shard.rank]["ddr_bytes"] += int(shard.storage.ddr)
    return ranks


def describe_plan(plan: ShardingPlan) -> dict[str, dict[str, Any]]:
    """table -> {sharding_type, compute_kernel, ranks, shards: [[rank, offsets, sizes], ...]}."""
    out = {}
    for module_plan in plan.plan.values():
        for table, ps in module_plan.items():
            shards = []
            if ps.sharding_spec is not None:
                for s in ps.sharding_spec.shards:
                    shards.append([s.placement.rank(), list(s.shard_offsets), list(s.shard_sizes)])
            out[table] = {
                "sharding_type": ps.sharding_type,
                "compute_kernel": ps.compute_kernel,
                "ranks": sorted(set(ps.ranks)) if ps.ranks else [],
                "shards": shards,
            }
    return out


def format_plan(described: dict[str, dict[str, Any]], estimate: list[dict[str, int]] | None) -> str:
    """A short human-readable table of the plan and the per-rank estimate."""
    lines = [f"{'table':<12} {'sharding':<18} {'kernel':<18} ranks"]
    for table, d in described.items():
        ranks = ",".join(map(str, d["ranks"])) or "all"
        lines.append(f"{table:<12} {d['sharding_type']:<18} {d['compute_kernel']:<18} {ranks}")
    for r in estimate or []:
        lines.append(
            f"rank {r['rank']}: planner estimate hbm {r['hbm_bytes'] / 2**20:.1f} MiB, "
            f"ddr {r['ddr_bytes'] / 2**20:.1f} MiB"
        )
    return "\n".join(lines)
