"""The targets command's verdicts, from suite and ratio records (no rows are run here)."""
from __future__ import annotations

from benchmarks.__main__ import main
from benchmarks.targets import evaluate, format_targets, has_matrix_units


def _row(rate: float, gemm_share: float | None = None) -> dict:
    record = {"throughput": {"examples_per_sec": rate}}
    if gemm_share is not None:
        record["roofline"] = {"flops_fraction": gemm_share}
    return record


def _records(fp32_share=0.7, bf16_gain=1.6, sgd=6000.0, plain=3000.0, adagrad=6500.0) -> dict:
    return {
        "criteo/ws1/fp32/b4096": _row(30000.0, fp32_share), "criteo/ws1/fp32": _row(28000.0, fp32_share),
        "criteo/ws1/bf16/b4096": _row(30000.0 * bf16_gain), "criteo/ws1/bf16": _row(28000.0 * bf16_gain),
        "embedding_heavy/ws1/fp32/sgd": _row(sgd), "baseline/embedding_heavy/ws1/fp32/sgd": _row(plain),
        "embedding_heavy/ws1/fp32/rowwise_adagrad": _row(adagrad),
    }


def _ratios(fp32=0.95, bf16=0.93) -> dict:
    return {p: {"ratio_median": m, "ratio_median_90ci": [m - 0.02, m + 0.02], "pairs": 10}
            for p, m in (("fp32", fp32), ("bf16", bf16))}


def _verdicts(targets) -> dict:
    return {t.name: t.met for t in targets}


def test_every_target_met_reads_met():
    targets = evaluate(_records(), _ratios(), matrix_units=False)
    assert len(targets) == 8 and all(t.met for t in targets)
    assert "| Criteo 1 x 4096 fp32 >= 60% of the fp32 GEMM rate | 70% | met |" in format_targets(targets, "m")


def test_each_bound_is_applied():
    targets = _verdicts(evaluate(_records(fp32_share=0.59, sgd=4400.0, adagrad=4300.0), _ratios(fp32=0.89),
                                 matrix_units=False))
    assert targets["Criteo 1 x 4096 fp32 >= 60% of the fp32 GEMM rate"] is False
    assert targets["2 ranks x 2048 >= 0.9x 1 rank x 4096, fp32"] is False
    assert targets["2 ranks x 2048 >= 0.9x 1 rank x 4096, bf16"] is True
    assert targets["embedding-heavy SGD >= 1.5x plain PyTorch"] is False  # 1.47x
    assert targets["embedding-heavy row-wise Adagrad >= its SGD"] is False


def test_bf16_matrix_units_ask_for_twice_fp32():
    records = _records(bf16_gain=1.6)
    assert _verdicts(evaluate(records, _ratios(), matrix_units=False))["Criteo 1 x 2048: best precision >= 1.4x fp32"]
    with_amx = _verdicts(evaluate(records, _ratios(), matrix_units=True))
    assert with_amx["Criteo 1 x 2048: best precision >= 2.0x fp32"] is False
    assert has_matrix_units({"cpu_features": "family 6 model 143, AVX512, bf16: amx_bf16 avx512_bf16"})
    assert not has_matrix_units({"cpu_features": "family 25 model 17, AVX512, bf16: avx512_bf16"})


def test_rows_that_did_not_run_are_not_measured_rather_than_failed():
    records = _records()
    del records["criteo/ws1/fp32/b4096"]
    records["embedding_heavy/ws1/fp32/sgd"] = {"row": "embedding_heavy/ws1/fp32/sgd", "error": "crashed"}
    targets = _verdicts(evaluate(records, {"fp32": _ratios()["fp32"]}, matrix_units=False))
    assert targets["Criteo 1 x 4096 fp32 >= 60% of the fp32 GEMM rate"] is None
    assert targets["Criteo 1 x 4096: best precision >= 1.4x fp32"] is None
    assert targets["2 ranks x 2048 >= 0.9x 1 rank x 4096, bf16"] is None
    assert targets["embedding-heavy SGD >= 1.5x plain PyTorch"] is None
    assert targets["embedding-heavy row-wise Adagrad >= its SGD"] is None


def test_without_bf16_rows_the_best_precision_is_fp32():
    records = _records()
    del records["criteo/ws1/bf16"]
    assert _verdicts(evaluate(records, _ratios(), matrix_units=False))[
        "Criteo 1 x 2048: best precision >= 1.4x fp32"] is False


def test_pairs_below_one_are_refused(capsys):
    assert main(["targets", "--out", "/tmp/unused-targets", "--pairs", "0"]) == 2
    assert "--pairs" in capsys.readouterr().err


def test_a_share_above_the_gemm_rate_is_a_disturbed_probe_not_a_pass():
    targets = evaluate(_records(fp32_share=1.47), _ratios(), matrix_units=False)
    share = {t.name: t for t in targets}["Criteo 1 x 4096 fp32 >= 60% of the fp32 GEMM rate"]
    assert share.met is None and "rate probe was slowed" in share.measured
    assert "| 147%: above the GEMM rate itself" in format_targets(targets, "m")
