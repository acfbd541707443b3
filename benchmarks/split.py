"""Where a step's time goes, measured on a few unpipelined steps after the timed windows.

Data (making this rank's batch and moving it to the device), forward (input dist, lookups,
output dist, dense forward, loss), backward + optimizer (backward incl. the fused table
update and DDP's gradient all-reduce, then the dense optimizer step). Communication is the
time torch.profiler attributes to collective ops within those phases: it is part of forward
and backward, not added to them. So is ``gemm``: the time inside the matrix-multiply ops
(torch's mm, addmm, bmm, baddbmm; this project's OpenBLAS products and fused dot interaction),
which carry the model's FLOPs; the record turns it into the rate the GEMMs themselves run at.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

_GEMM_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                       "torchrec_models_blas::mm", "torchrec_models_blas::linear_relu",
                       "torchrec_models_interaction::dot_interaction_forward",
                       "torchrec_models_interaction::dot_interaction_backward"})
_COMM_MARKERS = ("all_to_all", "alltoall", "all_reduce", "allreduce", "all_gather", "allgather",
                 "reduce_scatter", "broadcast", "nccl", "gloo")


def split_steps(trainer: Any, first_step: int, steps: int) -> dict[str, float]:
    """Median milliseconds per phase over ``steps`` unpipelined steps."""
    if steps <= 0:
        return {}
    env, t = trainer.env, trainer.cfg.train
    model = trainer.plain_model()
    batches = iter(trainer.source.train_batches(env.rank, env.world_size, t.batch_size,
                                                range(first_step, first_step + steps)))
    phases: dict[str, list[float]] = {"data": [], "forward": [], "backward_optimizer": []}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            _one_step(trainer, model, batches, phases)
    out = {k: statistics.median(v) * 1e3 for k, v in phases.items()}
    out["total"] = sum(out.values())
    events = prof.key_averages()
    out["communication"] = _comm_ms(events) / steps
    out["gemm"] = sum(_self_us(e) for e in events if e.key in _GEMM_OPS) / 1e3 / steps
    return out


def _one_step(trainer: Any, model: torch.nn.Module, batches: Any, phases: dict[str, list[float]]) -> None:
    device = trainer.env.device
    t0 = _now(device)
    batch = next(batches).to(device)
    t1 = _now(device)
    trainer.optimizer.zero_grad()
    loss, _ = model(batch)
    t2 = _now(device)
    loss.backward()
    trainer.optimizer.step()
    t3 = _now(device)
    phases["data"].append(t1 - t0)
    phases["forward"].append(t2 - t1)
    phases["backward_optimizer"].append(t3 - t2)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _self_us(event: Any) -> float:
    """An event's own time in microseconds: device time where it has some, else CPU time."""
    device_us = getattr(event, "self_device_time_total", 0) or 0
    return device_us if device_us else event.self_cpu_time_total


def _comm_ms(events: Any) -> float:
    """Self time of collective events, in ms."""
    return sum(_self_us(e) for e in events if any(m in e.key.lower() for m in _COMM_MARKERS)) / 1e3
