"""The table-kernel benchmark's arguments are FBGEMM's op's, and its record holds every variant of every shape."""
from __future__ import annotations

import pytest
import torch

from benchmarks import table_kernels
from benchmarks.table_kernels import BF16, FP32, Shape


def test_arguments_pool_the_shape_through_fbgemms_op() -> None:
    table_kernels.register_fbgemm_ops()
    shape = Shape("small", tables=3, rows=50, dim=8, bags=4, ids_per_bag=2)
    args = table_kernels.op_arguments(shape, FP32)
    pooled = torch.ops.fbgemm.split_embedding_codegen_forward_cpu(*args)
    assert pooled.shape == (4, 3 * 8) and pooled.dtype == torch.float32
    weights, ids = args[0].view(3, 50, 8), args[5].view(3, 4, 2)
    want = torch.stack([weights[t][ids[t]].sum(1) for t in range(3)], 1).reshape(4, 24)
    torch.testing.assert_close(pooled, want)
    assert table_kernels.op_arguments(shape, BF16)[-1] == BF16


def test_the_record_times_every_variant(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from torchrec_models.kernels import pooled_lookup, rowwise_adagrad

    monkeypatch.setattr(table_kernels, "SHAPES", (Shape("small", 2, 64, 16, 32, 3),))
    was = pooled_lookup.installed(), rowwise_adagrad.installed()
    threads = torch.get_num_threads()
    record = table_kernels.run(threads=1, rounds=3, warmup=1, out=tmp_path / "lookup.json")
    torch.set_num_threads(threads)
    assert (pooled_lookup.installed(), rowwise_adagrad.installed()) == was  # the process's choice is kept
    result = record["shapes"]["small"]
    variants = ("fbgemm_fp32", "native_fp32", "native_bf16", "fbgemm_update", "native_update")
    assert set(result) == {"shape", *variants}
    assert all(0 < result[k]["p10_ms"] <= result[k]["median_ms"] <= result[k]["p90_ms"] for k in variants)
    assert record["hardware"]["cpu"] and (tmp_path / "lookup.json").exists()
    assert "small: fbgemm_fp32" in table_kernels.format_record(record)
