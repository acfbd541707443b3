"""The native bf16-output pooled lookup against FBGEMM's forward, and where it is used."""
from __future__ import annotations

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice, EmbeddingLocation, SplitTableBatchedEmbeddingBagsCodegen,
)

from torchrec_models.config import load_config
from torchrec_models.kernels import pooled_lookup, rowwise_adagrad
from torchrec_models.sharding.planner import make_sharders
from torchrec_models.tasks.ranking import RankingTask
from torchrec_models.tasks.retrieval import RetrievalTask

from conftest import TINY

ROWS, DIM, BATCH = 50, 16, 32
CASES = {  # feature -> table map, table precision, pooling, per-sample weights
    "shared table": ([0, 0, 1], SparseType.FP32, PoolingMode.SUM, False),
    "per-sample weights": ([0, 1], SparseType.FP32, PoolingMode.SUM, True),
    "mean pooling": ([0, 1], SparseType.FP32, PoolingMode.MEAN, False),
    "fp16 tables": ([0, 1], SparseType.FP16, PoolingMode.SUM, False),
}


@pytest.fixture
def native_kernels():
    """Both native kernels in place for the test; the process's previous choice afterwards."""
    was = pooled_lookup.installed(), rowwise_adagrad.installed()
    assert rowwise_adagrad.install(required=True) and pooled_lookup.install(required=True)
    yield
    for module, keep in zip((pooled_lookup, rowwise_adagrad), was):
        module.install(required=True) if keep else module.uninstall()


def _tables(feature_table_map, precision=SparseType.FP32, pooling=PoolingMode.SUM, output=SparseType.FP32,
            bounds_check=BoundsCheckMode.WARNING):
    torch.manual_seed(0)
    return SplitTableBatchedEmbeddingBagsCodegen(
        [(ROWS, DIM, EmbeddingLocation.HOST, ComputeDevice.CPU)] * (max(feature_table_map) + 1),
        feature_table_map=feature_table_map, optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.1, eps=1e-8, weights_precision=precision, pooling_mode=pooling, output_dtype=output,
        bounds_check_mode=bounds_check,
    )


def _bags(num_features, weighted, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 5, (num_features * BATCH,), generator=g)  # empty bags included
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    ids = torch.randint(0, ROWS, (int(offsets[-1]),), generator=g)
    return ids, offsets, torch.rand(ids.numel(), generator=g) if weighted else None


@pytest.mark.parametrize("case", list(CASES))
def test_lookup_matches_fbgemm_in_fp32_and_rounds_it_once_in_bf16(case, native_kernels):
    feature_table_map, precision, pooling, weighted = CASES[case]
    ids, offsets, per_sample = _bags(len(feature_table_map), weighted)
    pooled_lookup.uninstall()
    want = _tables(feature_table_map, precision, pooling)(ids, offsets, per_sample_weights=per_sample)
    assert pooled_lookup.install(required=True)
    got = _tables(feature_table_map, precision, pooling)(ids, offsets, per_sample_weights=per_sample)
    got_bf16 = _tables(feature_table_map, precision, pooling, SparseType.BF16)(ids, offsets, per_sample_weights=per_sample)
    assert got_bf16.dtype == torch.bfloat16
    if not weighted and pooling == PoolingMode.SUM:  # additions in position order: nothing to round differently
        assert torch.equal(got, want) and torch.equal(got_bf16, want.bfloat16())
        return
    # A scaled id (weight or 1/L) may be multiplied and added with one rounding (FMA) in FBGEMM's
    # kernel for this CPU and two here: at most half an fp32 ulp of |w x| per id, 4 ids a bag.
    atol = 4 * 2.0**-24 * float(_tables(feature_table_map, precision, pooling).weights_host.detach().float().abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=atol)
    torch.testing.assert_close(got_bf16.float(), want.bfloat16().float(), rtol=2.0**-8, atol=atol)  # a tie may round either way


@pytest.mark.parametrize("weighted", [False, True])
def test_every_row_width_pools_as_fbgemm_does(weighted, native_kernels):
    """Widths the kernel specializes (16, 32, 64, 128) and others (8, 24, 36) in one table batch."""
    widths = [8, 16, 24, 32, 36, 64, 128]
    ids, offsets, per_sample = _bags(len(widths), weighted, seed=5)

    def pooled():
        torch.manual_seed(0)
        tables = SplitTableBatchedEmbeddingBagsCodegen(
            [(ROWS, d, EmbeddingLocation.HOST, ComputeDevice.CPU) for d in widths],
            optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=0.1, eps=1e-8)
        return tables(ids, offsets, per_sample_weights=per_sample), tables.weights_host.detach().abs().max()

    pooled_lookup.uninstall()
    want, largest = pooled()
    assert pooled_lookup.install(required=True)
    got, _ = pooled()
    assert got.shape == (BATCH, sum(widths))
    if weighted:  # FBGEMM may fuse each product into its sum (one rounding where the kernel has two)
        torch.testing.assert_close(got, want, rtol=0, atol=4 * 2.0**-24 * float(largest))
    else:
        assert torch.equal(got, want)


def test_bf16_output_trains_exactly_as_fp32_output_cast_to_bf16(native_kernels):
    """The table update reads the bf16 gradient itself: same weights and state as casting it to fp32."""
    cast, direct = _tables([0, 0, 1]), _tables([0, 0, 1], output=SparseType.BF16)
    start = cast.weights_host.clone()
    for step in range(3):
        ids, offsets, _ = _bags(3, False, seed=step)
        grad = torch.randn(BATCH, 3 * DIM, generator=torch.Generator().manual_seed(step)).bfloat16()
        cast(ids, offsets).bfloat16().backward(grad)
        direct(ids, offsets).backward(grad)
    assert not torch.equal(direct.weights_host, start)
    assert torch.equal(direct.weights_host, cast.weights_host)
    assert torch.equal(direct.momentum1_host, cast.momentum1_host)


def test_an_id_outside_its_table_is_an_error_naming_the_feature(native_kernels):
    """With FBGEMM's own bounds check off (by default it warns and reads row 0), the kernel refuses."""
    ids, offsets, _ = _bags(2, False)
    ids[-1] = ROWS
    with pytest.raises(RuntimeError, match=f"index {ROWS} of feature 1 is outside its table of {ROWS} rows"):
        _tables([0, 1], output=SparseType.BF16, bounds_check=BoundsCheckMode.NONE)(ids, offsets)


def test_bf16_cpu_runs_with_the_native_update_pool_into_bf16(native_kernels):
    cfg = load_config(TINY, ["train.precision=bf16"])
    pooled_lookup.apply(cfg, "cpu")
    assert pooled_lookup.installed()
    assert make_sharders(cfg, device_type="cpu")[0].fused_params["output_dtype"] == SparseType.BF16
    for other in (["train.precision=fp32"], ["train.precision=bf16", "train.cpu_table_update=fbgemm"],
                  ["train.precision=bf16", "train.embedding_optimizer=sgd"]):
        other_cfg = load_config(TINY, other)
        pooled_lookup.apply(other_cfg, "cpu")
        assert not pooled_lookup.installed() and not pooled_lookup.bf16_output(other_cfg, "cpu")
    assert "output_dtype" not in make_sharders(cfg, device_type="cpu")[0].fused_params
    assert pooled_lookup.bf16_output(cfg, "cuda")  # FBGEMM's CUDA kernels pool into bf16
    rowwise_adagrad.uninstall()
    pooled_lookup.apply(cfg, "cpu")  # FBGEMM's update takes fp32 gradients only
    assert not pooled_lookup.installed()


def test_families_whose_dense_part_stays_fp32_keep_fp32_pooling(native_kernels, monkeypatch):
    """The two towers ignore bf16 autocast: their tables must not hand them bf16."""
    assert RetrievalTask.autocasts_dense is False and RankingTask.autocasts_dense is True
    cfg = load_config(TINY, ["train.precision=bf16"])
    monkeypatch.setattr(pooled_lookup, "task_for", lambda cfg: RetrievalTask())
    pooled_lookup.apply(cfg, "cpu")
    assert not pooled_lookup.installed()
    assert not pooled_lookup.bf16_output(cfg, "cpu") and not pooled_lookup.bf16_output(cfg, "cuda")
