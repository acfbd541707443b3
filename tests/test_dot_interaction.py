"""The native CPU dot interaction against the same sums written as torch element-wise ops, its reading of
features in another stored order, and where it is used."""
from __future__ import annotations

import logging
import os

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedTensor

from torchrec_models.config import ConfigError, load_config
from torchrec_models.kernels import dot_interaction as native
from torchrec_models.models import build_model, compile_dense_parts
from torchrec_models.models.interaction import SymmetricInteractionArch
from torchrec_models.models.sparse_stack import stack_pooled

from conftest import TINY, kernel_switched_on

B, F, D = 37, 5, 20  # B not a multiple of the kernel's grain, D not a multiple of its vector width
N = F + 1
PAIRS = torch.triu_indices(N, N, offset=1)


@pytest.fixture
def native_on():
    """The kernel in use for the test; the process's previous choice afterwards."""
    with kernel_switched_on(native.SWITCH):
        yield


def _inputs(dtype, seed=0, dim=D):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, dim, generator=g).to(dtype), torch.randn(B, F, dim, generator=g).to(dtype)


def _fused(acc, a, b):
    """acc + a * b rounded once to fp32, as a fused multiply-add: the fp32 product is exact in fp64."""
    return (acc.double() + a.double() * b.double()).float()


def _sequential_forward(dense, sparse):
    """fp32 sums over d ascending, each product and sum rounded (the portable kernel's order), rounded once at the end."""
    x = torch.cat([dense.unsqueeze(1), sparse], 1).float()
    left, right = x[:, PAIRS[0]], x[:, PAIRS[1]]
    acc = torch.zeros(B, PAIRS.size(1))
    for d in range(x.size(-1)):
        acc = acc + left[:, :, d] * right[:, :, d]
    return torch.cat([dense, acc.to(dense.dtype)], 1)


def _lanes16_forward(dense, sparse):
    """The AVX-512 kernel's order: lane l fuses x_i[d] x_j[d] for d = l, l + 16, ... (zero-padded to a
    multiple of 16), then the 16 lanes are added in halves (8, 4, 2, 1 apart)."""
    x = torch.cat([dense.unsqueeze(1), sparse], 1).float()
    x = torch.nn.functional.pad(x, (0, -x.size(-1) % 16))
    left, right = x[:, PAIRS[0]], x[:, PAIRS[1]]
    lanes = torch.zeros(B, PAIRS.size(1), 16)
    for d in range(0, x.size(-1), 16):
        lanes = _fused(lanes, left[..., d:d + 16], right[..., d:d + 16])
    for half in (8, 4, 2, 1):
        lanes = lanes[..., :half] + lanes[..., half:2 * half]
    return torch.cat([dense, lanes[..., 0].to(dense.dtype)], 1)


def _sequential_backward(grad, dense, sparse, fused=False):
    """Each vector's gradient summed over j ascending in fp32, each product and sum rounded (or fused,
    as the AVX-512 kernel does); the dense one starts from its pass-through."""
    x = torch.cat([dense.unsqueeze(1), sparse], 1).float()
    g, dim = grad.float(), x.size(-1)
    pair = torch.zeros(B, N, N)
    pair[:, PAIRS[0], PAIRS[1]] = g[:, dim:]
    pair[:, PAIRS[1], PAIRS[0]] = g[:, dim:]
    acc = torch.zeros(B, N, dim)
    acc[:, 0] = g[:, :dim]
    for j in range(N):
        if fused:
            acc = _fused(acc, pair[:, :, j, None], x[:, j, None, :])
        else:
            acc = acc + pair[:, :, j, None] * x[:, j, None, :]
    acc = acc.to(dense.dtype)
    return acc[:, 0], acc[:, 1:]


def _stated_order():
    """The build's summation order: references for it."""
    order = torch.ops.torchrec_models_interaction.dot_order()
    assert order in ("lanes16", "sequential")
    if order == "lanes16":
        return _lanes16_forward, lambda *args: _sequential_backward(*args, fused=True)
    return _sequential_forward, _sequential_backward


@pytest.mark.parametrize("dim", [D, 16, 64, 72, 136], ids=lambda d: f"d{d}")  # widths the kernel specializes and others
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernel_sums_in_its_stated_order_and_rounds_once(dtype, dim, native_on):
    dense, sparse = _inputs(dtype, dim=dim)
    ops = torch.ops.torchrec_models_interaction
    forward, backward = _stated_order()
    out = ops.dot_interaction_forward(dense, sparse)
    assert out.dtype == dtype
    assert torch.equal(out, forward(dense, sparse))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    got_dense, got_sparse = ops.dot_interaction_backward(grad, dense, sparse)
    want_dense, want_sparse = backward(grad, dense, sparse)
    assert torch.equal(got_dense, want_dense) and torch.equal(got_sparse, want_sparse)


def test_strided_inputs_read_as_their_contiguous_copies(native_on):
    dense, sparse = _inputs(torch.float32)
    wide = torch.randn(B, 2 * D)
    wide[:, :D] = dense
    ops = torch.ops.torchrec_models_interaction
    assert torch.equal(ops.dot_interaction_forward(wide[:, :D], sparse), ops.dot_interaction_forward(dense, sparse))


def _module_outputs(autocast: bool):
    dense, sparse = _inputs(torch.float32, seed=2)
    dense.requires_grad_()
    sparse.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        bottom = torch.relu(dense * 1.5)
        bottom = bottom.to(torch.bfloat16) if autocast else bottom  # as a Linear under autocast returns it
        out = SymmetricInteractionArch(F)(bottom, sparse)
    (out.float() * torch.linspace(-1, 1, out.size(1))).sum().backward()
    return out, dense.grad, sparse.grad


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_interaction_module_runs_the_kernel_and_agrees_with_the_torch_composition(autocast, native_on):
    got = _module_outputs(autocast)
    assert type(got[0].grad_fn).__name__ == "NativeDotInteractionBackward"
    native.SWITCH.disable()
    want = _module_outputs(autocast)
    assert type(want[0].grad_fn).__name__ != "NativeDotInteractionBackward"
    assert got[0].dtype == want[0].dtype == (torch.bfloat16 if autocast else torch.float32)
    tol = dict(atol=0.1, rtol=0.02) if autocast else dict(atol=1e-5, rtol=1e-5)
    for g, w in zip(got, want):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g.float(), w.float(), **tol)


def test_mismatched_shapes_are_refused(native_on):
    dense, sparse = _inputs(torch.float32)
    with pytest.raises(RuntimeError, match="do not match"):
        torch.ops.torchrec_models_interaction.dot_interaction_forward(dense[:, :-1], sparse)


def test_config_choice_and_device_select_the_kernel(native_on):
    native.SWITCH.apply(load_config(TINY, ["train.cpu_interaction=torch"]).train.cpu_interaction, "cpu")
    assert not native.SWITCH.enabled()
    native.SWITCH.apply(load_config(TINY).train.cpu_interaction, "cpu")
    assert native.SWITCH.enabled()
    native.SWITCH.apply(load_config(TINY).train.cpu_interaction, "cuda")
    assert not native.SWITCH.enabled()
    with pytest.raises(ConfigError, match="train.cpu_interaction"):
        load_config(TINY, ["train.cpu_interaction=fast"])


def test_a_failed_build_is_an_error_only_when_native_was_asked_for(native_on, monkeypatch, caplog):
    def no_compiler(source):
        raise OSError("no C++ compiler")

    monkeypatch.setattr(native, "build_extension", no_compiler)
    monkeypatch.setattr(native.SWITCH, "built", False)
    native.SWITCH.disable()
    with pytest.raises(ConfigError, match="train.cpu_interaction"):
        native.SWITCH.apply(load_config(TINY, ["train.cpu_interaction=native"]).train.cpu_interaction, "cpu")
    with caplog.at_level(logging.WARNING):
        native.SWITCH.apply(load_config(TINY).train.cpu_interaction, "cpu")
    assert not native.SWITCH.enabled() and "not built" in caplog.text


def test_features_read_through_an_order_as_from_a_reordered_copy(native_on):
    dense, sparse = _inputs(torch.float32)
    order = torch.tensor([3, 0, 4, 1, 2])  # model feature i is stored at position order[i]
    stored = torch.empty_like(sparse)
    stored[:, order] = sparse
    ops = torch.ops.torchrec_models_interaction
    assert torch.equal(ops.dot_interaction_forward(dense, stored, order), ops.dot_interaction_forward(dense, sparse))
    grad = torch.randn(B, D + N * F // 2, generator=torch.Generator().manual_seed(3))
    got_dense, got_stored = ops.dot_interaction_backward(grad, dense, stored, order)
    want_dense, want_sparse = ops.dot_interaction_backward(grad, dense, sparse)
    assert torch.equal(got_dense, want_dense) and torch.equal(got_stored[:, order], want_sparse)
    with pytest.raises(RuntimeError, match="not a permutation"):
        ops.dot_interaction_forward(dense, stored, torch.tensor([0, 0, 1, 2, 3]))


def test_pooled_embeddings_in_another_key_order_give_the_stacked_result(native_on):
    names = [f"f{i}" for i in range(F)]
    values = torch.randn(B, F * D, requires_grad=True)
    pooled = KeyedTensor(keys=names[::-1], length_per_key=[D] * F, values=values)  # as an all-to-all may return them
    dense = torch.randn(B, D)
    arch = SymmetricInteractionArch(F)
    got = arch.forward_pooled(dense, pooled, names, D)
    assert type(got.grad_fn).__name__ == "NativeDotInteractionBackward"
    weights = torch.linspace(-1, 1, got.size(1))
    (got * weights).sum().backward()
    got_grad, values.grad = values.grad, None
    want = arch(dense, stack_pooled(pooled, names, F, D))
    (want * weights).sum().backward()
    assert torch.equal(got, want) and torch.equal(got_grad, values.grad)


def test_compiled_dense_parts_take_the_stacked_embeddings():
    model = build_model(load_config(TINY).model, torch.device("cpu"), seed=0)
    assert model.model.pooled_interaction
    compile_dense_parts(model)
    assert not model.model.pooled_interaction


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core")
def test_kernels_run_their_loops_on_the_intra_op_threads(native_on):
    was = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.ops.torchrec_models_interaction.parallel_threads(64) == 2
    finally:
        torch.set_num_threads(was)
