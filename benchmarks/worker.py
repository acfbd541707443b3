"""Rank body of a benchmark row: build, warm up, time windows, split one step, report memory."""
from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from benchmarks.roofline import rank_gemm_gflops
from benchmarks.rows import Row
from benchmarks.split import split_steps
from torchrec_models import runinfo
from torchrec_models.config import load_config
from torchrec_models.kernels import cpu_gemm
from torchrec_models.runtime.environment import added_to_environment
from torchrec_models.runtime.quiet import quiet_library_noise


def bench_worker(row: Row) -> dict[str, Any]:
    """Returns this rank's measurements; rank 0's also carry the plan and the planner's estimate."""
    quiet_library_noise()
    from torchrec_models.runtime.distributed import process_group

    cfg = load_config(row.config, list(row.overrides) + [f"train.steps={row.measured_steps}"])
    launch_rank = int(os.environ.get("RANK", 0))  # an independent rank's own world calls it 0
    with alone_in_world() if row.independent else nullcontext(), process_group(cfg.sharding.device) as env:
        baseline_rss = runinfo.current_rss_bytes()
        if row.impl == "baseline":
            from benchmarks.baseline import BaselineTrainer as TrainerClass
        else:
            from torchrec_models.train.trainer import Trainer as TrainerClass
        t0 = time.perf_counter()
        trainer = TrainerClass(cfg, env, run_dir=None)
        build_seconds = time.perf_counter() - t0
        meter = trainer.make_meter(skip=row.warmup_steps, window=row.window_steps)
        trainer.train_steps(0, row.measured_steps, meter)
        split = split_steps(trainer, row.measured_steps, row.split_steps)
        out = {
            "rank": launch_rank,
            "world_rank": env.rank,
            "rates": meter.rates,
            "split_ms": split,
            "build_seconds": build_seconds,
            "baseline_rss_bytes": baseline_rss,
            "peak_rss_bytes": runinfo.peak_rss_bytes(),
            "peak_device_bytes": runinfo.peak_device_bytes(env.device),
            "peak_device_reserved_bytes": (
                int(torch.cuda.max_memory_reserved(env.device)) if env.device.type == "cuda" else None),
            "device": str(env.device),
            "plan": trainer.plan,
            "estimate": trainer.planned.estimate,
            "threads": torch.get_num_threads(),
            "cpu_gemm": cpu_gemm.engine(),
        }
        # after the peaks are read, so the probe's matrices stay out of the memory figures
        out["gemm_gflops"] = rank_gemm_gflops(cfg.train.precision, env.device)
        trainer.close()
        return out


RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE")


def alone_in_world() -> AbstractContextManager[None]:
    """This rank as a world of one for the block (a private rendezvous, the device of its local
    rank); the launcher's environment after."""
    world_of_one = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    return added_to_environment({**dict.fromkeys(RENDEZVOUS), **world_of_one})
