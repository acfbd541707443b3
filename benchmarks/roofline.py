"""Work per example from the model's shapes, and the machine's ceilings measured in the same run.

FLOPs count multiply-adds as 2; backward costs twice the forward (input and weight gradients),
so a training step is 3x the forward, less the input gradient of the first bottom layer (the
dense features need none). Embedding bytes count, per looked-up id: the row read in
forward, read and written again in the fused backward update, and the optimizer state read and
written (one fp32 per row for row-wise Adagrad, one per element for Adagrad, none for SGD).
"""
from __future__ import annotations

import time

import torch

from torchrec_models.config import Config, ModelConfig
from torchrec_models.kernels import cpu_gemm

_DTYPE_BYTES = {"fp32": 4, "fp16": 2}


def mlp_flops(in_features: int, layers: list[int]) -> int:
    """Forward FLOPs of one example through a stack of Linear layers."""
    total, width = 0, in_features
    for out in layers:
        total += 2 * width * out
        width = out
    return total


def interaction_flops(m: ModelConfig) -> tuple[int, int]:
    """(forward FLOPs of the interaction, width of the top MLP's input) for one example."""
    f, d = m.num_sparse_features, m.embedding_dim
    if m.arch == "dcn":
        n = (f + 1) * d
        per_layer = 2 * n * m.dcn_low_rank_dim + 2 * m.dcn_low_rank_dim * n + 3 * n
        return m.dcn_num_layers * per_layer, n
    if m.arch == "projection":
        b1, b2 = m.projection_branch1, m.projection_branch2
        f1, f2 = b1[-1] // d, b2[-1] // d
        branches = mlp_flops((f + 1) * d, b1) + mlp_flops((f + 1) * d, b2)
        return branches + 2 * f1 * f2 * d, d + f1 * f2
    return 2 * (f + 1) * (f + 1) * d, d + f * (f + 1) // 2


def two_tower_forward_flops(m: ModelConfig, candidates: int) -> dict[str, int]:
    """Forward FLOPs per example of the two towers and the in-batch logits against ``candidates``
    item vectors (the global batch)."""
    d, users = m.embedding_dim, m.user_feature_count
    return {
        "user_tower": mlp_flops(users * d, m.tower_mlp),
        "item_tower": mlp_flops((m.num_sparse_features - users) * d, m.tower_mlp),
        "in_batch_logits": 2 * m.tower_mlp[-1] * candidates,
    }


def forward_flops(m: ModelConfig, candidates: int = 0) -> dict[str, int]:
    """Forward FLOPs per example by part: bottom MLP, interaction, top MLP (or the two towers)."""
    if m.arch == "two_tower":
        return two_tower_forward_flops(m, candidates)
    inter, top_in = interaction_flops(m)
    return {
        "bottom_mlp": mlp_flops(m.dense_in_features, m.bottom_mlp),
        "interaction": inter,
        "top_mlp": mlp_flops(top_in, m.top_mlp),
    }


def train_flops_per_example(m: ModelConfig, candidates: int = 0) -> int:
    """``candidates``: item vectors each example is scored against (two towers: the global batch)."""
    if m.arch == "two_tower":
        return 3 * sum(forward_flops(m, candidates).values())
    unneeded_input_grad = 2 * m.dense_in_features * m.bottom_mlp[0]
    parts = forward_flops(m)
    # The dot interaction's gradient is one matmul by the symmetric (G + G^T), not two.
    symmetric_backward = parts["interaction"] if m.arch == "dlrm" else 0
    return 3 * sum(parts.values()) - unneeded_input_grad - symmetric_backward


def embedding_bytes_per_example(cfg: Config, embedding_dtype: str = "fp32") -> int:
    """Bytes of table traffic per example in a training step (see the module docstring)."""
    m = cfg.model
    b = _DTYPE_BYTES.get(embedding_dtype, 4)
    state = {"rowwise_adagrad": 2 * 4, "adagrad": 2 * 4 * m.embedding_dim, "sgd": 0}[cfg.train.embedding_optimizer]
    ids = sum(m.multi_hot_sizes)
    return ids * (3 * m.embedding_dim * b + state)


def measure_gemm_gflops(dtype: torch.dtype = torch.float32, n: int | None = None, seconds: float = 1.0,
                        device: torch.device | str = "cpu", engine: str = "torch") -> float:
    """Sustained square-GEMM rate with the threads this process has (median of timed bursts);
    n x n matrices, 2048 on CPU and 8192 on a GPU unless given, smaller where one product would
    take over two seconds (a dtype this CPU has no fast kernels for, e.g. bf16 without AVX-512).
    ``engine`` 'openblas': the products of ``train.cpu_gemm=openblas`` (fp32 CPU) instead of torch.mm."""
    mm = cpu_gemm.mm if engine == "openblas" else torch.mm
    n = n or _gemm_size(dtype, 8192 if torch.device(device).type == "cuda" else 2048, 2.0, device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    rates = []
    deadline = time.perf_counter() + seconds
    _sync(device)
    mm(a, b)
    while time.perf_counter() < deadline or len(rates) < 3:
        _sync(device)
        t = time.perf_counter()
        for _ in range(4):
            mm(a, b)
        _sync(device)
        rates.append(4 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return sorted(rates)[len(rates) // 2]


def _gemm_size(dtype: torch.dtype, largest: int, budget_s: float, device: torch.device | str) -> int:
    """The largest power-of-two size up to ``largest`` whose product takes at most ``budget_s``:
    sizes double from 256 while one product at the size reached, times 16, fits the budget (8x the
    arithmetic, and 2x for the caches the doubled operands leave: bf16 on an AVX2 CPU took 0.2 s
    at 512 and 2.9 s at 1024)."""
    n = 256
    while n < largest:
        a = torch.randn(n, n, device=device).to(dtype)
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, a)
        _sync(device)
        if 16 * (time.perf_counter() - t) > budget_s:
            break
        n *= 2
    return n


def rank_gemm_gflops(precision: str, device: torch.device) -> float:
    """This rank's GEMM rate at the row's precision, measured while every rank measures at once:
    its share of the machine, with the threads and the GEMM library (``train.cpu_gemm``) it trains with."""
    import torch.distributed as dist

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    engine = cpu_gemm.engine() if dtype == torch.float32 and torch.device(device).type == "cpu" else "torch"
    if dist.is_initialized():
        dist.barrier()
    return measure_gemm_gflops(dtype, seconds=0.5, device=device, engine=engine)


def measure_copy_gbps(megabytes: int | None = None, seconds: float = 1.0,
                      device: torch.device | str = "cpu") -> float:
    """Sustained copy bandwidth, counting bytes read plus bytes written, of a buffer far larger
    than the caches (256 MiB on CPU, 2 GiB on a GPU unless given)."""
    megabytes = megabytes or (2048 if torch.device(device).type == "cuda" else 256)
    src = torch.ones(megabytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    rates = []
    deadline = time.perf_counter() + seconds
    dst.copy_(src)
    while time.perf_counter() < deadline or len(rates) < 3:
        _sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        rates.append(2 * src.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return sorted(rates)[len(rates) // 2]


def tbe_forward_bytes(batch: int, tables: int, pooling: int, dim: int, weight_bytes: int = 4) -> int:
    """Bytes one pooled TBE forward moves: each looked-up row read, its int64 index read, the
    pooled outputs written (offsets are negligible)."""
    ids = batch * tables * pooling
    return ids * (dim * weight_bytes + 8) + batch * tables * dim * 4


def measure_tbe_forward_gbps(device: torch.device | str = "cpu", seconds: float = 1.0) -> float:
    """Sustained forward bandwidth of FBGEMM's fused table-batched embedding (the kernel torchrec
    runs for every sharded table): uniform random ids over tables far larger than any cache, so
    each lookup is a row read from memory. Sized for the device: 8 x 1M x 128 fp32 on CUDA,
    4 x 100k x 64 on CPU."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen,
    )

    on_cuda = torch.device(device).type == "cuda"
    tables, rows, dim, batch, pooling = (8, 1_000_000, 128, 16384, 32) if on_cuda else (4, 100_000, 64, 2048, 8)
    where = (EmbeddingLocation.DEVICE, ComputeDevice.CUDA) if on_cuda else (EmbeddingLocation.HOST, ComputeDevice.CPU)
    tbe = SplitTableBatchedEmbeddingBagsCodegen([(rows, dim, *where)] * tables, device=torch.device(device))
    generator = torch.Generator().manual_seed(0)
    ids = (torch.randint(0, rows, (tables * batch * pooling,), generator=generator)).to(device)
    offsets = torch.arange(0, tables * batch * pooling + 1, pooling, dtype=torch.int64).to(device)
    moved = tbe_forward_bytes(batch, tables, pooling, dim)
    rates = []
    with torch.no_grad():
        tbe(ids, offsets)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(rates) < 3:
            _sync(device)
            t = time.perf_counter()
            for _ in range(4):
                tbe(ids, offsets)
            _sync(device)
            rates.append(4 * moved / (time.perf_counter() - t) / 1e9)
    del tbe
    return sorted(rates)[len(rates) // 2]


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _fp32_rates(device: torch.device | str) -> dict[str, float]:
    """The fp32 GEMM ceiling, and on CPU torch's and OpenBLAS's rates it is the larger of."""
    torch_rate = measure_gemm_gflops(torch.float32, device=device)
    if torch.device(device).type != "cpu" or not cpu_gemm.openblas_ready():
        return {"gemm_fp32_gflops": torch_rate}
    openblas_rate = measure_gemm_gflops(torch.float32, device=device, engine="openblas")
    return {"gemm_fp32_gflops": max(torch_rate, openblas_rate), "gemm_fp32_torch_gflops": torch_rate,
            "gemm_fp32_openblas_gflops": openblas_rate}


def machine_ceilings(device: torch.device | str = "cpu") -> dict[str, float]:
    """fp32 and bf16 GEMM GFLOP/s, copy GB/s and the embedding kernel's forward GB/s of this
    machine, with all its cores (or its GPU). On CPU the fp32 ceiling is the faster of torch's and
    OpenBLAS's products (``train.cpu_gemm``), each recorded."""
    ceilings = {
        **_fp32_rates(device),
        "gemm_bf16_gflops": measure_gemm_gflops(torch.bfloat16, device=device),
        "copy_gbps": measure_copy_gbps(device=device),
        "tbe_forward_gbps": measure_tbe_forward_gbps(device=device),
    }
    ceilings["tbe_forward_fraction_of_copy"] = ceilings["tbe_forward_gbps"] / ceilings["copy_gbps"]
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return ceilings
