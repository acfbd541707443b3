"""The CPU table kernels alone: FBGEMM's against this project's, on the harness's table shapes.

``python -m benchmarks tables --threads N --out FILE`` times FBGEMM's CPU forward op with its own
kernel and with this project's (fp32 and bf16 output), alternating the three every round in one
process, then the tables' backward with row-wise Adagrad (FBGEMM's update against this project's,
alternating), and writes the medians (and 10th-90th percentiles) with the machine to FILE as JSON.
"""
from __future__ import annotations

import importlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

FP32, BF16 = 0, 5  # FBGEMM's SparseType codes for the output


@dataclass(frozen=True)
class Shape:
    name: str
    tables: int
    rows: int
    dim: int
    bags: int
    ids_per_bag: int


SHAPES = (
    Shape("criteo_onehot_b4096", 26, 100_000, 64, 4096, 1),
    Shape("embedding_heavy_b2048", 8, 1_000_000, 64, 2048, 100),
    Shape("multi_hot_8_b2048", 26, 100_000, 128, 2048, 8),
)


def register_fbgemm_ops() -> None:
    importlib.import_module("fbgemm_gpu")  # its import registers the ops under torch.ops.fbgemm


def op_arguments(shape: Shape, output_dtype: int, seed: int = 0) -> tuple:
    """FBGEMM's forward arguments for ``shape``: random tables, uniform ids, sum pooling, no weights."""
    g = torch.Generator().manual_seed(seed)
    t, rows, d = shape.tables, shape.rows, shape.dim
    weights = torch.rand(t * rows * d, generator=g)
    ids = torch.randint(0, rows, (t * shape.bags * shape.ids_per_bag,), generator=g)
    offsets = torch.arange(t * shape.bags + 1, dtype=torch.int64) * shape.ids_per_bag
    return (weights, torch.arange(t, dtype=torch.int64) * rows * d, torch.arange(t + 1, dtype=torch.int32) * d,
            t * d, torch.arange(t + 1, dtype=torch.int64) * rows, ids, offsets, 0, None, output_dtype)


def time_shape(shape: Shape, rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    """Milliseconds per call of each variant; the variants take turns every round."""
    from torchrec_models.kernels import pooled_lookup

    op = torch.ops.fbgemm.split_embedding_codegen_forward_cpu
    fp32 = op_arguments(shape, FP32)
    variants = {"fbgemm_fp32": (False, fp32), "native_fp32": (True, fp32),
                "native_bf16": (True, fp32[:-1] + (BF16,))}
    times: dict[str, list[float]] = {name: [] for name in variants}
    was_installed = pooled_lookup.installed()
    try:
        for round_ in range(warmup + rounds):
            for name, (native, args) in variants.items():
                pooled_lookup.install(required=True) if native else pooled_lookup.uninstall()
                start = time.perf_counter()
                op(*args)
                if round_ >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
    finally:
        pooled_lookup.install(required=True) if was_installed else pooled_lookup.uninstall()
    return {name: _summary(ms) for name, ms in times.items()}


def time_update(shape: Shape, rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    """Milliseconds per backward (gradient sort and row-wise Adagrad update) of a table batch."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice, EmbeddingLocation, SplitTableBatchedEmbeddingBagsCodegen,
    )
    from torchrec_models.kernels import rowwise_adagrad

    tables = SplitTableBatchedEmbeddingBagsCodegen(
        [(shape.rows, shape.dim, EmbeddingLocation.HOST, ComputeDevice.CPU)] * shape.tables,
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=0.01, eps=1e-8)
    args = op_arguments(shape, FP32)
    ids, offsets = args[5], args[6]
    grad = torch.rand(shape.bags, shape.tables * shape.dim, generator=torch.Generator().manual_seed(1))
    was_installed = rowwise_adagrad.installed()
    times: dict[str, list[float]] = {"fbgemm_update": [], "native_update": []}
    try:
        for round_ in range(warmup + rounds):
            for name in times:
                rowwise_adagrad.install(required=True) if name == "native_update" else rowwise_adagrad.uninstall()
                pooled = tables(ids, offsets)
                start = time.perf_counter()
                pooled.backward(grad)
                if round_ >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
    finally:
        rowwise_adagrad.install(required=True) if was_installed else rowwise_adagrad.uninstall()
    return {name: _summary(ms) for name, ms in times.items()}


def _summary(ms: list[float]) -> dict[str, float]:
    deciles = statistics.quantiles(ms, n=10)
    return {"median_ms": statistics.median(ms), "p10_ms": deciles[0], "p90_ms": deciles[-1]}


def run(threads: int, rounds: int, warmup: int, out: Path | None) -> dict:
    from torchrec_models import runinfo

    register_fbgemm_ops()
    torch.set_num_threads(threads)
    record = {"threads": threads, "rounds": rounds, "hardware": runinfo.hardware(),
              "git_sha": runinfo.git_sha(), "shapes": {}}
    for shape in SHAPES:
        record["shapes"][shape.name] = {"shape": shape.__dict__, **time_shape(shape, rounds, warmup),
                                        **time_update(shape, rounds, warmup)}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n")
    return record


def format_record(record: dict) -> str:
    lines = [f"{record['hardware']['cpu']}, {record['threads']} thread(s), median ms (p10-p90)"]
    for name, result in record["shapes"].items():
        cells = [f"{k} {v['median_ms']:.1f} ({v['p10_ms']:.1f}-{v['p90_ms']:.1f})"
                 for k, v in result.items() if k != "shape"]
        lines.append(f"{name}: " + ", ".join(cells))
    return "\n".join(lines)
