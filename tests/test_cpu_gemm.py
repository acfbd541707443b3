"""``train.cpu_gemm``: the MLP layers' fp32 products through OpenBLAS on torch's threads, against
torch's products, in the fused layers, and chosen per machine."""
from __future__ import annotations

import pytest
import torch

from torchrec_models.config import ConfigError, load_config
from torchrec_models.kernels import cpu_gemm
from torchrec_models.kernels import linear_relu as native
from torchrec_models.models.mlp import FusedPerceptron

from conftest import TINY, kernel_switched_on

CLOSE = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture
def openblas():
    was = cpu_gemm.engine()
    cpu_gemm.apply("openblas", "cpu")
    try:
        yield
    finally:
        cpu_gemm.apply(was, "cpu")


def operand_layouts(rows: int, cols: int, g: torch.Generator) -> list[torch.Tensor]:
    """One [rows, cols] matrix stored row-major, transposed, and as a slice with neither unit stride."""
    x = torch.randn(rows, cols, generator=g)
    return [x, x.t().contiguous().t(), torch.randn(rows * 2, cols * 2, generator=g)[::2, ::2]]


@pytest.mark.parametrize("m,k,n", [(203, 19, 37), (600, 64, 1), (1, 8, 300), (5, 0, 3)])
def test_products_match_torch_for_every_operand_layout(m, k, n, openblas):
    g = torch.Generator().manual_seed(0)
    for a in operand_layouts(m, k, g):
        for b in operand_layouts(k, n, g):
            got = cpu_gemm.mm(a, b)
            assert got.shape == (m, n) and got.is_contiguous()
            torch.testing.assert_close(got, a @ b, **CLOSE)


def test_fused_forward_adds_the_bias_and_rectifies(openblas):
    g = torch.Generator().manual_seed(1)
    x, weight, bias = torch.randn(700, 48, generator=g), torch.randn(96, 48, generator=g), torch.randn(96, generator=g)
    got = cpu_gemm.linear_relu(x, weight, bias)
    torch.testing.assert_close(got, torch.relu(torch.addmm(bias, x, weight.t())), **CLOSE)
    assert (got == 0).any() and (got > 0).any()


def test_bad_operands_are_refused(openblas):
    with pytest.raises(RuntimeError, match="do not multiply"):
        cpu_gemm.mm(torch.zeros(3, 4), torch.zeros(5, 2))
    with pytest.raises(RuntimeError, match="fp32"):
        cpu_gemm.mm(torch.zeros(3, 4, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64))


def test_fused_layers_take_their_products_from_openblas(openblas, monkeypatch):
    calls = []
    for name in ("mm", "linear_relu"):
        real = getattr(cpu_gemm, name)
        monkeypatch.setattr(cpu_gemm, name, lambda *args, real=real, name=name: calls.append(name) or real(*args))
    torch.manual_seed(0)
    linear = torch.nn.Linear(19, 37)
    x = torch.randn(203, 19, requires_grad=True)
    results = []
    with kernel_switched_on(native.SWITCH):
        for layer in (FusedPerceptron(linear), lambda t: torch.relu(linear(t))):
            linear.zero_grad()
            x.grad = None
            out = layer(x)
            out.square().sum().backward()
            results.append((out, x.grad.clone(), linear.weight.grad.clone(), linear.bias.grad.clone()))
    assert calls == ["linear_relu", "mm", "mm"]  # forward; input and weight gradients
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **CLOSE)


def test_auto_means_openblas_on_amd_only(monkeypatch):
    for vendor, engine in (("AuthenticAMD", "openblas"), ("GenuineIntel", "torch"), ("", "torch")):
        monkeypatch.setattr(cpu_gemm, "cpu_vendor", lambda vendor=vendor: vendor)
        assert cpu_gemm.resolve("auto") == engine
    assert cpu_gemm.resolve("torch") == "torch" and cpu_gemm.resolve("openblas") == "openblas"


def test_other_devices_and_bf16_keep_torchs_products(openblas):
    assert not cpu_gemm.uses_openblas(torch.zeros(2, dtype=torch.bfloat16))
    assert cpu_gemm.uses_openblas(torch.zeros(2))
    was = cpu_gemm.engine()
    cpu_gemm.apply("openblas", "cuda")
    assert cpu_gemm.engine() == "torch"
    cpu_gemm.apply(was, "cpu")


def test_config_key_is_checked():
    assert load_config(TINY).train.cpu_gemm == "auto"
    with pytest.raises(ConfigError, match="train.cpu_gemm"):
        load_config(TINY, ["train.cpu_gemm=blis"])


def test_training_runs_with_openblas_products(tmp_path, kernels_off_after):
    from torchrec_models.runtime.worker import train_worker

    summary = train_worker(TINY, ("train.steps=6", "train.eval_steps=2", "train.cpu_gemm=openblas"),
                           str(tmp_path / "run"), "none")
    assert cpu_gemm.engine() == "openblas"
    assert summary["steps"] == 6 and torch.isfinite(torch.tensor(summary["final_train_loss"]))


def test_the_fp32_ceiling_is_the_faster_library():
    from benchmarks import roofline

    assert roofline.measure_gemm_gflops(n=256, seconds=0.05, engine="openblas") > 0
    rates = roofline._fp32_rates("cpu")
    assert rates["gemm_fp32_gflops"] == max(rates["gemm_fp32_torch_gflops"], rates["gemm_fp32_openblas_gflops"])


def test_openblas_gets_one_thread_of_its_own(openblas):
    from threadpoolctl import threadpool_info

    numpy_blas = [lib for lib in threadpool_info() if lib.get("internal_api") == "openblas" and "numpy" in lib["filepath"]]
    assert numpy_blas and all(lib["num_threads"] == 1 for lib in numpy_blas)


def test_openblas_that_cannot_be_set_up_is_an_error_only_when_asked_for(monkeypatch):
    was = cpu_gemm.engine()

    def broken() -> None:
        raise RuntimeError("no OpenBLAS loaded with numpy")

    monkeypatch.setattr(cpu_gemm, "_bind_openblas", broken)
    monkeypatch.setattr(cpu_gemm, "cpu_vendor", lambda: "AuthenticAMD")
    try:
        with pytest.raises(ConfigError, match="train.cpu_gemm"):
            cpu_gemm.apply("openblas", "cpu")
        cpu_gemm.apply("auto", "cpu")
        assert cpu_gemm.engine() == "torch"
    finally:
        monkeypatch.undo()
        cpu_gemm.apply(was, "cpu")
