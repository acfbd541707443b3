"""The fused bias + ReLU of MLP layers on the CPU: against torch's ops, independent of the thread
count, in the models' layers, and chosen by ``train.cpu_mlp``."""
from __future__ import annotations

import pytest
import torch
from torchrec.modules.mlp import Perceptron

from torchrec_models.config import load_config
from torchrec_models.kernels import cpu_gemm
from torchrec_models.kernels import linear_relu as native
from torchrec_models.models import build_model
from torchrec_models.models.mlp import FusedPerceptron

from conftest import TINY, kernel_switched_on

B, K, N = 203, 19, 37  # rows not a multiple of the kernel's chunk
OPS = lambda: torch.ops.torchrec_models_linear  # noqa: E731  (the ops exist once the kernel is built)


@pytest.fixture
def native_on():
    """The kernel in use, with torch's own GEMMs (``train.cpu_gemm`` is tested in test_cpu_gemm.py)."""
    engine = cpu_gemm.engine()
    cpu_gemm.apply("torch", "cpu")
    with kernel_switched_on(native.SWITCH):
        yield
    cpu_gemm.apply(engine, "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_backward_masks_like_torch_and_sums_the_bias_gradient(dtype, native_on):
    g = torch.Generator().manual_seed(0)
    out = torch.relu(torch.randn(B, N, generator=g)).to(dtype)
    grad = torch.randn(B, N, generator=g).to(dtype)
    assert (out == 0).any() and (out > 0).any()
    grad_pre, grad_bias = OPS().relu_bias_backward(grad, out)
    assert torch.equal(grad_pre, torch.where(out > 0, grad, torch.zeros_like(grad)))
    assert grad_bias.dtype == dtype
    torch.testing.assert_close(grad_bias.float(), grad_pre.double().sum(0).float(),
                               rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-5)


def test_bias_gradient_does_not_depend_on_the_thread_count(native_on):
    out = torch.relu(torch.randn(4096, 64, generator=torch.Generator().manual_seed(2)))
    grad = torch.randn(4096, 64, generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, one = OPS().relu_bias_backward(grad, out)
        torch.set_num_threads(2)
        _, two = OPS().relu_bias_backward(grad, out)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_fused_layer_matches_linear_relu_values_and_gradients(autocast, native_on):
    torch.manual_seed(0)
    linear = torch.nn.Linear(K, N)
    x = torch.randn(B, K, requires_grad=True)
    results = []
    for fused in (True, False):
        linear.zero_grad()
        x.grad = None
        layer = FusedPerceptron(linear)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if fused:
                assert native.usable(x)
                out = layer(x)
            else:
                out = torch.relu(linear(x))
        out.float().square().sum().backward()
        results.append((out.float(), x.grad.clone(), linear.weight.grad.clone(), linear.bias.grad.clone()))
        assert linear.weight.grad.dtype == torch.float32
    if autocast:  # oneDNN's fused linear and torch's addmm may block the sum differently: one bf16 rounding apart
        torch.testing.assert_close(results[0][0], results[1][0], rtol=2**-7, atol=1e-3)
    else:  # the same addmm: torch's values bit for bit
        assert torch.equal(results[0][0], results[1][0])
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    for got, want in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(got, want, **tol)


def test_models_take_fused_layers_with_unchanged_parameter_names():
    model = build_model(load_config(TINY).model, torch.device("cpu"), seed=0)
    fused = [m for m in model.modules() if isinstance(m, FusedPerceptron)]
    assert len(fused) == 4  # bottom 13-64-16, top 52-64-32 (the logit layer after them has no ReLU)
    assert not any(type(m) is Perceptron for m in model.modules())
    names = {n for n, _ in model.named_parameters()}
    assert "model.dense_arch.model._mlp.0._linear.weight" in names
    assert "model.over_arch.model.0._mlp.1._linear.bias" in names


def test_config_choice_and_device_select_the_kernel(native_on):
    native.SWITCH.apply(load_config(TINY, ["train.cpu_mlp=torch"]).train.cpu_mlp, "cpu")
    assert not native.SWITCH.enabled() and not native.usable(torch.zeros(2, 2))
    native.SWITCH.apply(load_config(TINY, ["train.cpu_mlp=native"]).train.cpu_mlp, "cuda")
    assert not native.SWITCH.enabled()
    native.SWITCH.apply(load_config(TINY).train.cpu_mlp, "cpu")
    assert native.SWITCH.enabled() and native.usable(torch.zeros(2, 2))
    assert not native.usable(torch.zeros(2, 2, dtype=torch.float16))
