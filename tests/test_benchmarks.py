"""The benchmark harness: formulas, FLOP counts, the record schema, compare, and the smoke suite."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from benchmarks.compare import compare_dirs, compare_rows, format_comparison, load_results
from benchmarks.record import throughput, validate_record
from benchmarks.roofline import embedding_bytes_per_example, forward_flops, train_flops_per_example
from conftest import ROOT
from torchrec_models.config import load_config
from torchrec_models.sharding.pricing import parse_prices, usd_per_million_examples


def test_cost_formula() -> None:
    # $3/h per device x 8 devices at 100k ex/s: 24 $/h over 360M ex/h = $0.0667 per 1M.
    assert usd_per_million_examples(3.0, 8, 100_000) == pytest.approx(24 / 360, rel=1e-12)
    assert usd_per_million_examples(0.045, 2, 20_000) == pytest.approx(0.09 / 72, rel=1e-12)
    with pytest.raises(ValueError):
        usd_per_million_examples(1.0, 1, 0)


def test_price_overrides() -> None:
    prices = parse_prices(["H100=2.5", "vCPU=0.05"])
    assert prices["H100"] == 2.5 and prices["vCPU"] == 0.05 and prices["H200"] == 3.8 and prices["A100"] == 1.8
    with pytest.raises(ValueError, match="H100=abc"):
        parse_prices(["H100=abc"])


def test_flops_of_a_small_dlrm_by_hand() -> None:
    cfg = load_config(None, ["model.num_embeddings_per_feature=[10, 10]", "model.multi_hot_sizes=[1, 3]",
                             "model.embedding_dim=4", "model.dense_in_features=3", "model.bottom_mlp=[8, 4]",
                             "model.top_mlp=[5, 1]"])
    # bottom: 3->8->4: 2*(3*8 + 8*4) = 112; interaction: 3 vectors of 4: bmm 2*3*3*4 = 72;
    # top input: 4 + 2*3/2 = 7: 2*(7*5 + 5*1) = 80. Training = 3 x forward, less the dense
    # features' gradient through the first layer (2*3*8 = 48) and one of the interaction's two
    # backward matmuls (its gradient is one product by the symmetric G + G^T: 72).
    assert forward_flops(cfg.model) == {"bottom_mlp": 112, "interaction": 72, "top_mlp": 80}
    assert train_flops_per_example(cfg.model) == 3 * 264 - 48 - 72
    # 4 ids x (3 row passes x 4 floats x 4 B + 8 B of row-wise Adagrad state) = 4 x 56.
    assert embedding_bytes_per_example(cfg) == 224


def test_flops_of_dcn_by_hand() -> None:
    cfg = load_config(None, ["model.arch=dcn", "model.num_embeddings_per_feature=[10]", "model.multi_hot_sizes=[1]",
                             "model.embedding_dim=2", "model.dense_in_features=1", "model.bottom_mlp=[2]",
                             "model.top_mlp=[1]", "model.dcn_num_layers=2", "model.dcn_low_rank_dim=3"])
    # n = 2 vectors x 2 = 4; per layer 2*4*3 + 2*3*4 + 3*4 = 60; two layers = 120.
    assert forward_flops(cfg.model) == {"bottom_mlp": 4, "interaction": 120, "top_mlp": 8}


def _record(name: str, windows: list[float]) -> dict:
    return {"suite": "t", "row": name, "throughput": throughput(windows)}


def _write(directory: Path, records: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory


def test_compare_gives_verdicts_only_outside_the_noise(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", [_record("fast", [100, 101, 99, 100, 102]), _record("noisy", [100, 80, 120, 90, 110]),
                                _record("slow", [100, 100, 101, 99, 100]), _record("only_a", [1, 1, 1, 1, 1])])
    b = _write(tmp_path / "b", [_record("fast", [150, 151, 149, 150, 152]), _record("noisy", [105, 85, 125, 95, 115]),
                                _record("slow", [50, 51, 49, 50, 50])])
    rows = {r["row"]: r for r in compare_dirs(a, b)}
    assert set(rows) == {"fast", "noisy", "slow"}
    assert rows["fast"]["verdict"] == "faster" and rows["fast"]["ratio"] == pytest.approx(1.5)
    assert rows["slow"]["verdict"] == "slower"
    assert rows["noisy"]["verdict"] == "within noise"
    assert rows["noisy"]["band"][0] < 1.0 < rows["noisy"]["band"][1]
    assert "within noise" in format_comparison(list(rows.values()))


def test_compare_names_a_bad_line(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "results.jsonl").write_text(json.dumps(_record("x", [1.0])) + "\n{oops\n")
    with pytest.raises(ValueError, match="results.jsonl:2"):
        load_results(d)


def test_compare_rows_band_excludes_one_only_when_clear() -> None:
    same = compare_rows(_record("r", [100.0] * 5), _record("r", [100.0] * 5))
    assert same["verdict"] == "within noise" and same["ratio"] == 1.0


@pytest.mark.slow
def test_smoke_suite_end_to_end(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "smoke"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--suite", "smoke", "--out", str(out),
                           "--price", "vCPU=0.09"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["row"] for r in records] == ["tiny/ws1", "tiny/ws2", "tiny/ws2/independent", "baseline/tiny/ws2"]
    for r in records:
        validate_record(r)
        assert len(r["throughput"]["windows"]) >= 5
        assert r["throughput"]["p10"] <= r["throughput"]["examples_per_sec"] <= r["throughput"]["p90"]
        assert r["cost"]["usd_per_device_hour"] == 0.09
        expected = 0.09 * r["cost"]["devices"] / (r["throughput"]["examples_per_sec"] * 3600) * 1e6
        assert r["cost"]["usd_per_million_examples"] == pytest.approx(expected)
        assert set(r["split_ms"]) >= {"data", "forward", "backward_optimizer", "communication", "gemm", "total"}
        assert 0 < r["split_ms"]["gemm"] < r["split_ms"]["total"]
        roof = r["roofline"]
        assert roof["gemm_gflops_per_rank"] > 0 and roof["gemm_kernel_gflops_per_rank"] > 0
        assert roof["gemm_kernel_fraction"] == pytest.approx(
            roof["gemm_kernel_gflops_per_rank"] / roof["gemm_gflops_per_rank"])
        assert all("killed by" in crash for crash in r["crashes"])
        assert len(r["memory"]["per_rank"]) == r["world_size"]
        assert 0 < r["roofline"]["flops_fraction"] < 1
    assert {s["type"] for s in records[1]["sharding"].values()} == {"row_wise"}
    alone = records[2]  # each rank a world of one: nothing split across ranks, every rank reported
    assert {s["type"] for s in alone["sharding"].values()} == {"table_wise"}
    assert sorted(m["rank"] for m in alone["memory"]["per_rank"]) == [0, 1]
    assert records[1]["memory"]["per_rank"][0]["estimate_bytes"] > 0
    report = (out / "report.md").read_text()
    assert "tiny/ws2" in report and "GEMM" in report and "plain-PyTorch" in report
    assert (out / "cost_per_config.png").stat().st_size > 1000
    machine = json.loads((out / "machine.json").read_text())
    assert machine["ceilings"]["gemm_fp32_gflops"] > 0
    assert f"Newly mapped memory filled at {machine['ceilings']['fresh_page_fill_gbps']:.1f} GB/s" in report
    assert machine["hardware"]["cpu_features"] in report
    if len(os.sched_getaffinity(0)) >= 2:  # every core's pace, probed at once
        assert 0 < machine["ceilings"]["core_pace_mean"] <= 1
        assert f"Cores kept pace with each other at {machine['ceilings']['core_pace_mean']:.2f}" in report


def test_record_schema_rejects_missing_fields() -> None:
    with pytest.raises(ValueError, match="lacks 'suite'"):
        validate_record({})


def test_soak_slope_fit() -> None:
    from benchmarks.soak import slope_mib_per_min

    leak = [{"seconds": 60.0 * i, "rss_bytes": (100 + 5 * i) * 2**20} for i in range(11)]
    flat = [{"seconds": 60.0 * i, "rss_bytes": 100 * 2**20} for i in range(11)]
    assert slope_mib_per_min(leak) == pytest.approx(5.0)
    assert slope_mib_per_min(flat) == pytest.approx(0.0)
    assert slope_mib_per_min(leak[:2]) is None


def _failed(exitcode: int):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    return ChildFailedError("bench_worker", {0: ProcessFailure(local_rank=0, pid=1, exitcode=exitcode,
                                                               error_file="<N/A>")})


@pytest.mark.parametrize("outcomes, calls, crashes", [
    ([-11, "ok"], 2, ["rank 0 killed by SIGSEGV"]),  # a native crash earns one recorded relaunch
    ([-11, -11], 2, None),  # a second crash fails the row
    ([1, "ok"], 1, None),  # a Python error is never relaunched
])
def test_a_crashed_row_is_relaunched_once_and_recorded(monkeypatch: pytest.MonkeyPatch, outcomes, calls,
                                                        crashes) -> None:
    from benchmarks import runner
    from benchmarks.rows import Row

    launched = []

    def fake_launch(entrypoint, args, nproc):
        outcome = outcomes[len(launched)]
        launched.append(outcome)
        if outcome != "ok":
            raise _failed(outcome)
        return {0: {"rank": 0, "rates": [1.0]}}

    monkeypatch.setattr(runner, "launch_local", fake_launch)
    row = Row(name="r", config=None, overrides=(), world_size=1, impl="torchrec", tags={})
    if crashes is None:
        with pytest.raises(Exception, match="bench_worker"):
            runner.run_row(row, repeat=1)
    else:
        ranks, seen = runner.run_row(row, repeat=1)
        assert seen == crashes and ranks[0]["rates"] == [1.0]
    assert len(launched) == calls


def test_an_independent_rows_rate_is_its_ranks_summed(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import runner
    from benchmarks.rows import Row

    def fake_launch(entrypoint, args, nproc):
        return {r: {"rank": r, "rates": [100.0 * (r + 1), 110.0 * (r + 1)]} for r in range(nproc)}

    monkeypatch.setattr(runner, "launch_local", fake_launch)
    alone = Row(name="r", config=None, world_size=2, independent=True)
    ranks, _ = runner.run_row(alone, repeat=1)
    assert ranks[0]["rates"] == [300.0, 330.0] and ranks[1]["rates"] == [200.0, 220.0]
    together, _ = runner.run_row(Row(name="r", config=None, world_size=2), repeat=1)
    assert together[0]["rates"] == [100.0, 110.0]


def test_an_independent_rank_is_a_world_of_one_until_the_block_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.worker import alone_in_world

    launched = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for key, value in launched.items():
        monkeypatch.setenv(key, value)
    with alone_in_world():
        assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_WORLD_SIZE"]) == ("0", "1", "1")
        assert "MASTER_ADDR" not in os.environ and "MASTER_PORT" not in os.environ
        assert os.environ["LOCAL_RANK"] == "1"  # its device stays its own
    assert {k: os.environ.get(k) for k in launched} == launched


def test_only_selects_rows_by_regular_expression() -> None:
    from benchmarks.runner import select_rows

    assert [r.name for r in select_rows("cpu", ["^criteo/ws2/fp32$"])] == ["criteo/ws2/fp32"]
    assert len(select_rows("cpu", ["criteo/ws2/fp32"])) > 10  # a plain substring still matches every such row
    assert {r.name for r in select_rows("cpu", ["^baseline/", "embedding_heavy/ws2/bf16$"])} == {
        "baseline/criteo/ws2/fp32", "baseline/criteo/ws1/fp32", "baseline/embedding_heavy/ws2/fp32",
        "baseline/embedding_heavy/ws1/fp32/sgd", "embedding_heavy/ws2/bf16"}
    assert select_rows("smoke") == select_rows("smoke", [])


@pytest.mark.parametrize("arch", ["dlrm", "dcn"])
def test_counted_flops_are_what_the_gemm_ops_run(arch: str) -> None:
    """The GEMM kernel rate divides the counted FLOPs by the time in mm/addmm/bmm: the two must agree."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.split import _GEMM_OPS
    from torchrec_models.data.synthetic import SyntheticData, SyntheticSpec
    from torchrec_models.kernels import cpu_gemm, dot_interaction, linear_relu
    from torchrec_models.models import build_model

    # torch's own GEMM ops, whose FLOPs the profiler reports (this project's kernels report none),
    # whatever an earlier test in this process left switched on
    dot_interaction.SWITCH.apply("torch", "cpu")
    linear_relu.SWITCH.apply("torch", "cpu")
    cpu_gemm.apply("torch", "cpu")
    cfg = load_config("configs/tiny.toml", [f"model.arch={arch}"])
    model = build_model(cfg.model, torch.device("cpu"), 0, None, table_device="cpu")
    batch = SyntheticData(SyntheticSpec.from_config(cfg)).batch(0, 0, 64)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        loss, _ = model(batch)
        loss.backward()
    ran = sum(e.flops for e in prof.key_averages() if e.key in _GEMM_OPS)
    assert ran == pytest.approx(64 * train_flops_per_example(cfg.model), rel=0.01)


def test_git_sha_marks_uncommitted_changes(tmp_path: Path) -> None:
    import subprocess

    from torchrec_models.runinfo import git_sha

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    assert git_sha(tmp_path) is None
    git("init", "-q")
    (tmp_path / "f.txt").write_text("a\n")
    git("add", "f.txt")
    git("commit", "-qm", "one")
    clean = git_sha(tmp_path)
    assert clean is not None and len(clean) == 40
    (tmp_path / "f.txt").write_text("b\n")
    assert git_sha(tmp_path) == f"{clean}-dirty"


def test_cpu_features_name_the_generation_and_its_kernels(tmp_path: Path, monkeypatch) -> None:
    import torch

    from torchrec_models import runinfo

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
                       "flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    real_path = runinfo.Path
    monkeypatch.setattr(runinfo, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    assert runinfo.cpuinfo_field("model") == "17" and runinfo.cpuinfo_field("model name") == "AMD EPYC"
    features = runinfo.cpu_features()
    assert features == f"family 25 model 17, {torch.backends.cpu.get_cpu_capability()}, bf16: avx512_bf16"
    assert runinfo.hardware()["cpu_features"] == features


def test_ratio_alternates_whole_runs_and_takes_the_median_pair_ratio(monkeypatch) -> None:
    from contextlib import nullcontext

    from benchmarks import ratio
    from benchmarks.rows import Row

    row_a = Row(name="one", config="configs/tiny.toml", overrides=(), world_size=1)
    row_b = Row(name="two", config="configs/tiny.toml", overrides=(), world_size=2)
    runs: list[str] = []
    speed = {"one": [100.0, 110.0, 90.0], "two": [90.0, 99.0, 90.0]}

    def fake_run_row(row, repeat):
        runs.append(row.name)
        rate = speed[row.name][sum(name == row.name for name in runs) - 1]
        return [{"rates": [rate - 5, rate, rate + 50]}], []

    paces = iter([0.8, 0.9])
    monkeypatch.setattr(ratio, "run_row", fake_run_row)
    monkeypatch.setattr(ratio, "rank_server_for", lambda device: nullcontext())
    monkeypatch.setattr(ratio, "measure_core_pace", lambda: {"core_pace_mean": next(paces)})
    record = ratio.run_ratio(row_a, row_b, 3, "cpu", None)
    assert runs == ["one", "two", "two", "one", "one", "two"]
    assert record["a"] == [100.0, 110.0, 90.0] and record["b"] == [90.0, 99.0, 90.0]
    assert record["ratios"] == pytest.approx([0.9, 0.9, 1.0])
    assert record["ratio_median"] == pytest.approx(0.9) and record["verdict"] == "within noise"
    assert "B = two over A = one" in ratio.format_record(record)
    assert record["core_pace_mean"] == [0.8, 0.9]
    assert "cores kept pace 0.80 before, 0.90 after" in ratio.format_record(record)


def test_ratio_rejects_an_unknown_row() -> None:
    from benchmarks.__main__ import main

    assert main(["ratio", "--a", "criteo/ws1/fp32", "--b", "no/such/row"]) == 2


def test_ab_refuses_a_row_whose_ranks_train_apart(capsys) -> None:
    from benchmarks.__main__ import main

    assert main(["ab", "--row", "criteo/ws2/bf16/independent"]) == 2
    assert "trains its ranks apart" in capsys.readouterr().err
