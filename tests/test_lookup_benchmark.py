"""The lookup benchmark's arguments are FBGEMM's op's, and its record holds every variant of every shape."""
from __future__ import annotations

import pytest
import torch

from benchmarks import lookup_kernel
from benchmarks.lookup_kernel import BF16, FP32, Shape


def test_arguments_pool_the_shape_through_fbgemms_op() -> None:
    lookup_kernel.register_fbgemm_ops()
    shape = Shape("small", tables=3, rows=50, dim=8, bags=4, ids_per_bag=2)
    args = lookup_kernel.op_arguments(shape, FP32)
    pooled = torch.ops.fbgemm.split_embedding_codegen_forward_cpu(*args)
    assert pooled.shape == (4, 3 * 8) and pooled.dtype == torch.float32
    weights, ids = args[0].view(3, 50, 8), args[5].view(3, 4, 2)
    want = torch.stack([weights[t][ids[t]].sum(1) for t in range(3)], 1).reshape(4, 24)
    torch.testing.assert_close(pooled, want)
    assert lookup_kernel.op_arguments(shape, BF16)[-1] == BF16


def test_the_record_times_every_variant(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(lookup_kernel, "SHAPES", (Shape("small", 2, 64, 16, 32, 3),))
    record = lookup_kernel.run(threads=1, rounds=3, warmup=1, out=tmp_path / "lookup.json")
    result = record["shapes"]["small"]
    assert set(result) == {"shape", "fbgemm_fp32", "native_fp32", "native_bf16"}
    assert all(0 < result[k]["p10_ms"] <= result[k]["median_ms"] <= result[k]["p90_ms"]
               for k in ("fbgemm_fp32", "native_fp32", "native_bf16"))
    assert record["hardware"]["cpu"] and (tmp_path / "lookup.json").exists()
    assert "small: fbgemm_fp32" in lookup_kernel.format_record(record)
