"""Planning a cluster from a laptop: the planner on a topology built from flags, no processes.

``plan_offline`` builds the model on the meta device, runs the torchrec planner on a topology
made from a GPU preset (memory, bandwidths), and turns the plan into a forecast:

- step time = the slowest rank's sum of the planner's own per-shard estimates (forward and
  backward compute and communication, plus prefetch for UVM caching), plus the dense part's
  FLOPs at an assumed fraction of the card's peak, plus a ring all-reduce of the dense
  gradients (no overlap assumed, so this errs on the slow side);
- examples/s = world size x per-rank batch / step time; cost from ``pricing``.

When the tables cannot fit, ``PlanDoesNotFit`` says how much memory is missing.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.storage_reservations import HeuristicalStorageReservation
from torchrec.distributed.planner.types import PlannerError, ShardingOption, Topology

from torchrec_models.config import Config, ConfigError
from torchrec_models.sharding.gpus import DENSE_PEAK_FRACTION, GPUS, GPUS_PER_NODE, GpuSpec
from torchrec_models.models import build_model
from torchrec_models.sharding.pricing import DEFAULT_PRICES_USD_PER_HOUR, usd_per_million_examples
from torchrec_models.sharding.planner import (
    GIB, constraints, describe_plan, format_plan, make_plan, make_planner, make_topology, per_rank_estimate,
)

STORAGE_RESERVATION = 0.15  # the planner's default share of each device kept out of its reach


@dataclass(frozen=True)
class Cluster:
    """What the plan is for: ranks, hosts, device type and (on CUDA) the GPU model and its HBM cap."""

    world_size: int
    nodes: int
    device: str
    gpu: GpuSpec | None
    hbm_gb: float

    @property
    def local_world_size(self) -> int:
        return self.world_size // self.nodes


class PlanDoesNotFit(Exception):
    """The planner found no plan; carries the memory needed and available across all ranks (bytes)."""

    def __init__(
        self, tier: str, needed: int, available: int, capacity: int, ranks: int, reason: str = ""
    ) -> None:
        self.tier, self.needed, self.available, self.capacity, self.ranks = tier, needed, available, capacity, ranks
        self.missing = max(0, needed - available)
        where = (f"{ranks} rank(s) have {capacity / GIB:.1f} GB of {tier.upper()} in all, "
                 f"{available / GIB:.1f} GB of it left for tables after the planner's reservation")
        if self.missing:
            text = f"the tables need {needed / GIB:.1f} GB; {where}: {self.missing / GIB:.1f} GB missing"
        else:
            text = f"no placement found for the tables' {needed / GIB:.1f} GB although {where}: {reason}"
        super().__init__(f"plan does not fit: {text}")

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "needed_gb": self.needed / GIB, "available_gb": self.available / GIB,
                "capacity_gb": self.capacity / GIB, "missing_gb": self.missing / GIB, "message": str(self)}


def make_cluster(
    cfg: Config, world_size: int, device: str, nodes: int | None = None, gpu: str | None = None,
    hbm_gb: float | None = None,
) -> Cluster:
    """Checks the flags (errors name the flag) and resolves the GPU preset and the HBM cap."""
    if world_size < 1:
        raise ConfigError("--world-size", f"must be >= 1, got {world_size}", where="option")
    if nodes is None:
        nodes = world_size // GPUS_PER_NODE if world_size > GPUS_PER_NODE and world_size % GPUS_PER_NODE == 0 else 1
    if nodes < 1 or world_size % nodes:
        raise ConfigError("--nodes", f"{nodes} must be >= 1 and divide --world-size {world_size}", where="option")
    if device != "cuda":
        if gpu is not None or hbm_gb is not None:
            raise ConfigError("--gpu" if gpu is not None else "--hbm-gb", "only applies to --device cuda",
                              where="option")
        return Cluster(world_size, nodes, device, None, 0.0)
    if hbm_gb is not None and hbm_gb <= 0:
        raise ConfigError("--hbm-gb", f"must be > 0, got {hbm_gb}", where="option")
    spec = GPUS[gpu or "h100"]
    return Cluster(world_size, nodes, device, spec, hbm_gb or cfg.sharding.hbm_gb or spec.hbm_gb)


def plan_offline(
    cfg: Config, world_size: int, device_type: str, local_world_size: int | None = None, *,
    cluster: Cluster | None = None, examples: int | None = None, prices: dict[str, float] | None = None,
    dense_peak_fraction: float = DENSE_PEAK_FRACTION,
) -> dict[str, Any]:
    """Plans the config's model (tables on meta) for a cluster and forecasts throughput and cost.

    Raises ``PlanDoesNotFit`` when the planner finds no plan.
    """
    if cluster is None:
        local = local_world_size or min(world_size, GPUS_PER_NODE)
        cluster = make_cluster(cfg, world_size, device_type, nodes=max(1, world_size // local))
    cfg = _with_caps(cfg, cluster)
    model = build_model(cfg.model, torch.device("meta"), cfg.train.seed)
    hardware = cluster.gpu.topology_args() if cluster.gpu else {}
    topology = make_topology(cfg, cluster.world_size, cluster.local_world_size, cluster.device, **hardware)
    enumerator = EmbeddingEnumerator(topology=topology, batch_size=cfg.train.batch_size, constraints=constraints(cfg))
    reservation = HeuristicalStorageReservation(percentage=STORAGE_RESERVATION)
    planner = make_planner(cfg, topology, enumerator=enumerator, storage_reservation=reservation)
    try:
        result = make_plan(cfg, model, cluster.world_size, cluster.local_world_size, cluster.device, planner=planner)
    except PlannerError as exc:
        raise shortfall(enumerator, reservation, topology, exc) from None
    described = describe_plan(result.plan)
    ranks = result.estimate or per_rank_estimate(planner, cluster.world_size) or []
    params = count_params(model)
    report: dict[str, Any] = {
        "fits": True,
        "world_size": cluster.world_size,
        "nodes": cluster.nodes,
        "local_world_size": cluster.local_world_size,
        "device": cluster.device,
        "gpu": cluster.gpu.name if cluster.gpu else None,
        "hbm_cap_bytes": topology.devices[0].storage.hbm,
        "ddr_cap_bytes": topology.devices[0].storage.ddr,
        "batch_size_per_rank": cfg.train.batch_size,
        **params,
        "source": result.source,
        "tables": described,
        "ranks": ranks,
        "forecast": None,
    }
    if cluster.gpu is not None:
        sparse_ms = sparse_ms_per_rank(getattr(planner, "_best_plan", None) or [], cluster.world_size)
        for row, ms in zip(ranks, sparse_ms):
            row["sparse_ms"] = ms
        report["forecast"] = forecast(cfg, cluster, cluster.gpu, sparse_ms, params["dense_params"], examples,
                                      prices or DEFAULT_PRICES_USD_PER_HOUR, dense_peak_fraction)
    report["text"] = format_report(report)
    return report


def _with_caps(cfg: Config, cluster: Cluster) -> Config:
    """The config with the cluster's per-rank memory caps (explicit config values win for DDR)."""
    if cluster.gpu is None:
        return cfg
    sharding = dataclasses.replace(
        cfg.sharding, hbm_gb=cluster.hbm_gb, ddr_gb=cfg.sharding.ddr_gb or cluster.gpu.ddr_gb
    )
    return dataclasses.replace(cfg, sharding=sharding)


def shortfall(
    enumerator: EmbeddingEnumerator, reservation: HeuristicalStorageReservation, topology: Topology,
    error: PlannerError,
) -> PlanDoesNotFit:
    """Memory the tables need (each at its smallest option) vs what the reserved topology offers."""
    reserved = reservation.last_reserved_topology
    options = enumerator.last_stored_search_space or []
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    capacity = {t: sum(getattr(d.storage, t) for d in topology.devices) for t in ("hbm", "ddr")}
    if reserved is None or not options:
        return PlanDoesNotFit("hbm", 0, 0, capacity["hbm"], topology.world_size, reason)
    available = {t: sum(getattr(d.storage, t) for d in reserved.devices) for t in ("hbm", "ddr")}
    smallest: dict[str, tuple[int, int]] = {}
    for option in options:
        size = (sum(s.storage.hbm for s in option.shards), sum(s.storage.ddr for s in option.shards))
        if option.name not in smallest or sum(size) < sum(smallest[option.name]):
            smallest[option.name] = size
    needed = {"hbm": sum(s[0] for s in smallest.values()), "ddr": sum(s[1] for s in smallest.values())}
    over = [t for t in ("hbm", "ddr") if needed[t] > available[t]]
    tier = over[0] if over else ("hbm" if needed["hbm"] else "ddr")
    return PlanDoesNotFit(tier, int(needed[tier]), int(available[tier]), int(capacity[tier]), topology.world_size,
                          reason)


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts of the whole model, its tables and its dense part."""
    tables = sum(p.numel() for n, p in model.named_parameters() if "embedding_bag" in n)
    total = sum(p.numel() for p in model.parameters())
    return {"total_params": total, "table_params": tables, "dense_params": total - tables}


def dense_train_flops_per_example(cfg: Config, batch: int = 4) -> float:
    """Matmul FLOPs of one example's dense forward and backward (embedding lookups excluded).

    Counted by running the dense part on ``batch`` CPU examples under ``FlopCounterMode``;
    elementwise work is not counted.
    """
    dlrm = build_model(cfg.model, torch.device("cpu"), cfg.train.seed).model
    m = cfg.model
    dense = torch.zeros(batch, m.dense_in_features)
    pooled = torch.zeros(batch, m.num_sparse_features, m.embedding_dim, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        inter = dlrm.inter_arch(dense_features=dlrm.dense_arch(dense), sparse_features=pooled)
        dlrm.over_arch(inter).sum().backward()
    return counter.get_total_flops() / batch


def sparse_ms_per_rank(best_plan: list[ShardingOption], world_size: int) -> list[float]:
    """The planner's estimate per rank (ms): sum of its shards' fwd/bwd compute and comms and prefetch."""
    per_rank = [0.0] * world_size
    for option in best_plan:
        for shard in option.shards:
            if shard.rank is None or shard.perf is None:
                continue
            p = shard.perf
            per_rank[shard.rank] += p.fwd_compute + p.fwd_comms + p.bwd_compute + p.bwd_comms + p.prefetch_compute
    return per_rank


def dense_precision(cfg: Config) -> str:
    """Which of the card's peaks the dense part runs at: bf16 autocast, else TF32 or plain fp32."""
    if cfg.train.precision == "bf16":
        return "bf16"
    return "tf32" if cfg.train.tf32 else "fp32"


def forecast(
    cfg: Config, cluster: Cluster, gpu: GpuSpec, sparse_ms: list[float], dense_params: int, examples: int | None,
    prices: dict[str, float], fraction: float,
) -> dict[str, Any]:
    """Step time, examples/s and cost from the planner's estimates and the dense part's FLOPs."""
    batch = cfg.train.batch_size
    precision = dense_precision(cfg)
    flops = dense_train_flops_per_example(cfg)
    dense_ms = flops * batch / (gpu.peak_tflops[precision] * 1e12 * fraction) * 1e3
    ring_bw = gpu.intra_host_bw if cluster.nodes == 1 else gpu.inter_host_bw
    w = cluster.world_size
    grad_bytes = dense_params * 4  # DDP reduces fp32 gradients, also under bf16 autocast
    allreduce_ms = 2 * (w - 1) / w * grad_bytes / (ring_bw * 1e9) * 1e3 if w > 1 else 0.0
    critical = max(sparse_ms) if sparse_ms else 0.0
    step_ms = critical + dense_ms + allreduce_ms
    rate = w * batch / (step_ms / 1e3)
    price = prices[gpu.name]
    out: dict[str, Any] = {
        "sparse_critical_ms": critical,
        "sparse_critical_rank": sparse_ms.index(critical) if sparse_ms else None,
        "dense_ms": dense_ms,
        "dense_allreduce_ms": allreduce_ms,
        "step_ms": step_ms,
        "examples_per_sec": rate,
        "dense_flops_per_example": flops,
        "dense_precision": precision,
        "dense_peak_tflops": gpu.peak_tflops[precision],
        "dense_peak_fraction": fraction,
        "usd_per_gpu_hour": price,
        "usd_per_million_examples": usd_per_million_examples(price, w, rate),
    }
    if examples:
        hours = examples / rate / 3600.0
        out.update(run_examples=examples, run_hours=hours, run_usd=hours * w * price)
    return out


def format_report(report: dict[str, Any]) -> str:
    """The plan table, per-rank memory against the caps, parameter counts and the forecast."""
    lines = [format_plan(report["tables"], None)]
    gpu = report["gpu"] or report["device"]
    hbm_cap = f"HBM cap {_size(report['hbm_cap_bytes'])}, " if report["gpu"] else ""
    lines.append(
        f"cluster: {report['world_size']} x {gpu} ({report['nodes']} node(s) x {report['local_world_size']}), "
        f"per rank: {hbm_cap}host DDR cap {_size(report['ddr_cap_bytes'])}"
    )
    for r in report["ranks"]:
        sparse = f", sparse {r['sparse_ms']:.2f} ms/step" if "sparse_ms" in r else ""
        lines.append(f"rank {r['rank']}: hbm {_size(r['hbm_bytes'])}, ddr {_size(r['ddr_bytes'])}{sparse}")
    lines.append(f"parameters: {report['total_params']:,} (tables {report['table_params']:,}, "
                 f"dense {report['dense_params']:,})")
    f = report["forecast"]
    if f:
        parts = [
            (f"sparse: planner's estimate, slowest rank ({f['sparse_critical_rank']})", f["sparse_critical_ms"]),
            (f"dense: {f['dense_flops_per_example'] / 1e6:.1f} MFLOP/example at {f['dense_peak_fraction']:.0%} "
             f"of {f['dense_peak_tflops']:g} TFLOP/s {f['dense_precision']}", f["dense_ms"]),
            ("dense gradient all-reduce", f["dense_allreduce_ms"]),
            ("step", f["step_ms"]),
        ]
        lines.append(f"forecast, batch {report['batch_size_per_rank']} per rank:")
        lines += [f"  {label:<58}{ms:8.2f} ms" for label, ms in parts]
        lines.append(f"  {f['examples_per_sec']:,.0f} examples/s, ${f['usd_per_million_examples']:.3g} per 1M examples "
                     f"at ${f['usd_per_gpu_hour']:.2f}/GPU-hour")
        if "run_usd" in f:
            lines.append(f"  {f['run_examples']:,} examples: {f['run_hours']:.2f} h, ${f['run_usd']:,.2f}")
    else:
        lines.append("forecast: only for --device cuda")
    return "\n".join(lines)


def _size(num_bytes: float) -> str:
    """GB (2^30 bytes) from 0.1 GB up, MiB below."""
    return f"{num_bytes / GIB:.2f} GB" if num_bytes >= 0.1 * GIB or not num_bytes else f"{num_bytes / 2**20:.1f} MiB"
