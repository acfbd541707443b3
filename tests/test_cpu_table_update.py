"""The native CPU row-wise Adagrad table update against FBGEMM's own, and its selection."""
from __future__ import annotations

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice, EmbeddingLocation, SplitTableBatchedEmbeddingBagsCodegen,
)

from torchrec_models.config import ConfigError, TrainConfig
from torchrec_models.kernels import rowwise_adagrad

ROWS, DIM, BATCH = 50, 16, 32  # few rows: most ids repeat within a batch


@pytest.fixture
def restore_kernel():
    was = rowwise_adagrad.installed()
    yield
    if was:
        rowwise_adagrad.install(required=True)
    else:
        rowwise_adagrad.uninstall()


def _tables(feature_table_map, precision, pooling, weight_decay=0.0):
    torch.manual_seed(0)
    num_tables = max(feature_table_map) + 1
    return SplitTableBatchedEmbeddingBagsCodegen(
        [(ROWS, DIM, EmbeddingLocation.HOST, ComputeDevice.CPU)] * num_tables,
        feature_table_map=feature_table_map, optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.1, eps=1e-8, weights_precision=precision, pooling_mode=pooling,
        weight_decay=weight_decay,
    )


def _batches(num_features, weighted, steps=3):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        lengths = torch.randint(0, 5, (num_features * BATCH,), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        ids = torch.randint(0, ROWS, (int(offsets[-1]),), generator=g)
        per_sample = torch.rand(ids.numel(), generator=g) if weighted else None
        grad = torch.randn(BATCH, num_features * DIM, generator=g)
        out.append((ids, offsets, per_sample, grad))
    return out


def _train(tables, batches):
    for ids, offsets, per_sample, grad in batches:
        tables(ids, offsets, per_sample_weights=per_sample).backward(grad)
    return tables.weights_host.float().clone(), tables.momentum1_host.clone()


CASES = {
    "fp32 sum": ([0, 1, 2], SparseType.FP32, PoolingMode.SUM, False),
    "shared table": ([0, 0, 1], SparseType.FP32, PoolingMode.SUM, False),
    "per-sample weights": ([0, 1], SparseType.FP32, PoolingMode.SUM, True),
    "mean pooling": ([0, 1], SparseType.FP32, PoolingMode.MEAN, False),
    "fp16 tables": ([0, 1], SparseType.FP16, PoolingMode.SUM, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_native_update_matches_fbgemm(case, restore_kernel):
    feature_table_map, precision, pooling, weighted = CASES[case]
    batches = _batches(len(feature_table_map), weighted)
    rowwise_adagrad.uninstall()
    want_w, want_h = _train(_tables(feature_table_map, precision, pooling), batches)
    assert rowwise_adagrad.install(required=True)
    got_w, got_h = _train(_tables(feature_table_map, precision, pooling), batches)
    start_w = _tables(feature_table_map, precision, pooling).weights_host.float()
    assert not torch.equal(got_w, start_w)
    atol = 1e-3 if precision == SparseType.FP16 else 1e-6  # fp16: one rounding step apart at most
    torch.testing.assert_close(got_w, want_w, atol=atol, rtol=0)
    torch.testing.assert_close(got_h, want_h, atol=1e-7, rtol=1e-5)


def test_strided_and_bf16_gradients_update_as_their_contiguous_fp32_copies(restore_kernel):
    """A gradient that is a slice of a wider one (rows strided), or bf16, is read in place."""
    assert rowwise_adagrad.install(required=True)
    ids, offsets, _, grad = _batches(2, False, steps=1)[0]
    wide = torch.cat([grad, torch.full((BATCH, 5), float("nan"))], dim=1)[:, : 2 * DIM]
    results = []
    for g in (grad, wide, grad.bfloat16(), wide.bfloat16()):
        tables = _tables([0, 1], SparseType.FP32, PoolingMode.SUM)
        op = torch.ops.fbgemm.split_embedding_backward_codegen_rowwise_adagrad_cpu
        op(g, tables.weights_host, tables.weights_placements, tables.weights_offsets, tables.D_offsets, DIM,
           tables.hash_size_cumsum, 0, ids, offsets, 0, None, False, tables.momentum1_host,
           tables.momentum1_placements, tables.momentum1_offsets, torch.tensor(0.1), 1e-8)
        results.append(tables.weights_host.clone())
    assert not wide.is_contiguous()
    assert torch.equal(results[1], results[0]) and torch.equal(results[3], results[2])
    assert torch.equal(results[2], _updated_with(grad.bfloat16().float(), ids, offsets))


def _updated_with(grad, ids, offsets):
    tables = _tables([0, 1], SparseType.FP32, PoolingMode.SUM)
    tables(ids, offsets).backward(grad)
    return tables.weights_host.clone()


def test_installed_kernel_is_the_one_fbgemm_calls(restore_kernel):
    """Weight decay is FBGEMM's alone: once installed, the op that runs is this project's, and says so."""
    assert rowwise_adagrad.install(required=True)
    tables = _tables([0], SparseType.FP32, PoolingMode.SUM, weight_decay=0.01)
    ids, offsets, _, grad = _batches(1, False, steps=1)[0]
    with pytest.raises(NotImplementedError, match="cpu_table_update"):
        tables(ids, offsets).backward(grad[:, :DIM])
    rowwise_adagrad.uninstall()
    tables(ids, offsets).backward(grad[:, :DIM])  # FBGEMM's kernel again


def test_config_choice_selects_the_kernel(restore_kernel):
    rowwise_adagrad.apply(TrainConfig(cpu_table_update="fbgemm"), "cpu")
    assert not rowwise_adagrad.installed()
    rowwise_adagrad.apply(TrainConfig(cpu_table_update="auto"), "cpu")
    assert rowwise_adagrad.installed()
    rowwise_adagrad.uninstall()
    rowwise_adagrad.apply(TrainConfig(cpu_table_update="native"), "cuda")
    assert not rowwise_adagrad.installed()
    with pytest.raises(ConfigError, match="train.cpu_table_update"):
        TrainConfig(cpu_table_update="fast")


def test_a_failed_build_is_an_error_only_when_native_was_asked_for(restore_kernel, monkeypatch):
    rowwise_adagrad.uninstall()

    def no_compiler():
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(rowwise_adagrad.OVERRIDE, "build", no_compiler)
    assert rowwise_adagrad.install(required=False) is False
    with pytest.raises(ConfigError, match="train.cpu_table_update.*no C\\+\\+ compiler"):
        rowwise_adagrad.install(required=True)
