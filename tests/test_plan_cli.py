"""`plan` for a cluster from a laptop: MLPerf DCNv2 on 8 and 16 H100s, a plan that cannot fit, the JSON."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT, TINY, run_cli
from torchrec_models.cli import main
from torchrec_models.sharding.planning import GPUS
from torchrec_models.sharding.pricing import DEFAULT_PRICES_USD_PER_HOUR

DCN = str(ROOT / "configs" / "dlrm_dcnv2_mlperf.toml")
GIB = 1024**3


def _plan_json(capsys, *args: str) -> tuple[int, dict]:
    rc = main(["plan", "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def dcn_on_8() -> dict:
    return _plan_subprocess("--world-size", "8", "--hbm-gb", "80", "--examples", "1000000000")


@pytest.fixture(scope="module")
def dcn_on_16() -> dict:
    return _plan_subprocess("--world-size", "16", "--nodes", "2", "--hbm-gb", "80")


def _plan_subprocess(*args: str) -> dict:
    out = run_cli("plan", "--config", DCN, "--device", "cuda", "--json", *args)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def _check_fits(report: dict, world: int, nodes: int) -> None:
    assert report["fits"] is True
    assert (report["world_size"], report["nodes"], report["local_world_size"]) == (world, nodes, world // nodes)
    assert report["total_params"] == pytest.approx(2.6e10, rel=0.02)
    assert report["table_params"] + report["dense_params"] == report["total_params"]
    assert report["hbm_cap_bytes"] == 80 * GIB
    assert [r["rank"] for r in report["ranks"]] == list(range(world))
    for r in report["ranks"]:
        assert 0 < r["hbm_bytes"] < report["hbm_cap_bytes"]
        assert r["ddr_bytes"] <= report["ddr_cap_bytes"]
    # all 26B parameters (fp32, plus row-wise Adagrad state) are placed somewhere
    assert sum(r["hbm_bytes"] for r in report["ranks"]) > report["table_params"] * 4
    assert len(report["tables"]) == 26


def test_mlperf_dcnv2_fits_on_8_h100(dcn_on_8: dict) -> None:
    _check_fits(dcn_on_8, 8, 1)
    assert dcn_on_8["gpu"] == "H100"


def test_mlperf_dcnv2_fits_on_16_h100_over_two_nodes(dcn_on_16: dict) -> None:
    _check_fits(dcn_on_16, 16, 2)


def test_forecast_is_the_slowest_rank_plus_the_dense_part(dcn_on_8: dict) -> None:
    f = dcn_on_8["forecast"]
    sparse = [r["sparse_ms"] for r in dcn_on_8["ranks"]]
    assert f["sparse_critical_ms"] == pytest.approx(max(sparse)) and f["sparse_critical_ms"] > 0
    assert f["step_ms"] == pytest.approx(f["sparse_critical_ms"] + f["dense_ms"] + f["dense_allreduce_ms"])
    assert f["dense_flops_per_example"] == pytest.approx(96e6, rel=0.05)  # 3 x 2 x ~16M dense weights
    assert f["dense_precision"] == "tf32" and f["dense_peak_tflops"] == GPUS["h100"].peak_tflops["tf32"]
    batch = dcn_on_8["batch_size_per_rank"]
    assert f["examples_per_sec"] == pytest.approx(8 * batch / (f["step_ms"] / 1e3))
    price = DEFAULT_PRICES_USD_PER_HOUR["H100"]
    assert f["usd_per_million_examples"] == pytest.approx(price * 8 / (f["examples_per_sec"] * 3600) * 1e6)
    assert f["run_usd"] == pytest.approx(1e9 / f["examples_per_sec"] / 3600 * 8 * price)


def test_second_node_pays_for_the_network(dcn_on_8: dict, dcn_on_16: dict) -> None:
    assert dcn_on_16["forecast"]["dense_allreduce_ms"] > dcn_on_8["forecast"]["dense_allreduce_ms"]
    assert dcn_on_16["forecast"]["sparse_critical_ms"] > dcn_on_8["forecast"]["sparse_critical_ms"]


def test_too_small_a_cluster_says_how_much_memory_is_missing() -> None:
    out = run_cli("plan", "--config", DCN, "--world-size", "2", "--gpu", "a100", "--hbm-gb", "40")
    assert out.returncode == 1
    assert out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: plan does not fit:")
    assert "GB missing" in line and "2 rank(s) have 80.0 GB of HBM in all" in line


def test_too_small_a_cluster_in_json(capsys) -> None:
    rc, report = _plan_json(capsys, "--config", DCN, "--world-size", "1")
    assert rc == 1
    assert report["fits"] is False and report["tier"] == "hbm"
    # ~26B fp32 parameters need ~97 GB; one 80 GB H100 leaves ~68 GB for tables after reservations
    assert report["needed_gb"] == pytest.approx(97.4, rel=0.03)
    assert report["available_gb"] < report["capacity_gb"] == pytest.approx(80.0)
    assert report["missing_gb"] == pytest.approx(report["needed_gb"] - report["available_gb"])


def test_json_schema_on_a_small_config(capsys) -> None:
    rc, report = _plan_json(capsys, "--config", TINY, "--world-size", "4", "--gpu", "h200", "--examples", "1000000")
    assert rc == 0
    assert {"fits", "total_params", "ranks", "forecast", "tables", "world_size", "nodes", "gpu"} <= set(report)
    assert "text" not in report
    assert report["gpu"] == "H200" and report["hbm_cap_bytes"] == int(GPUS["h200"].hbm_gb * GIB)
    assert all(set(r) >= {"rank", "hbm_bytes", "ddr_bytes"} for r in report["ranks"])
    assert {"examples_per_sec", "usd_per_million_examples", "run_usd", "run_hours"} <= set(report["forecast"])
    assert report["forecast"]["usd_per_gpu_hour"] == DEFAULT_PRICES_USD_PER_HOUR["H200"]


def test_text_output_and_price_override(capsys) -> None:
    assert main(["plan", "--config", TINY, "--world-size", "2", "--price", "H100=1.5"]) == 0
    text = capsys.readouterr().out
    assert "cluster: 2 x H100 (1 node(s) x 2)" in text
    assert "rank 1: hbm" in text and "examples/s" in text and "$1.50/GPU-hour" in text


@pytest.mark.parametrize("args, flag", [
    (["--world-size", "8", "--nodes", "3"], "--nodes"),
    (["--world-size", "0"], "--world-size"),
    (["--hbm-gb", "-1"], "--hbm-gb"),
    (["--device", "cpu", "--gpu", "h100"], "--gpu"),
    (["--examples", "0"], "--examples"),
    (["--price", "H100"], "--price"),
])
def test_bad_flags_are_named(capsys, args: list[str], flag: str) -> None:
    assert main(["plan", "--config", TINY, *args]) == 2
    assert f"'{flag}'" in capsys.readouterr().err
