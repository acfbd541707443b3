"""End to end through the CLI: 2 gloo ranks on CPU train the tiny preset and learn."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY, read_jsonl, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    done = run_cli("train", "--config", TINY, "--nproc-per-node", "2", "--run-dir", str(out),
                   "--profile", str(out.parent / "profile"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "profile of 5 steps" in done.stdout and "Self CPU" in done.stdout  # rank 0's top ops
    assert "table_wise" in done.stdout or "data_parallel" in done.stdout or "column_wise" in done.stdout
    return out


def test_summary_fields(run_dir: Path) -> None:
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 300 and s["global_batch_size"] == 512
    assert s["examples_per_sec"] > 0 and s["measured_windows"] >= 5
    assert len(s["peak_rss_bytes"]) == 2 and all(b > 100 * 2**20 for b in s["peak_rss_bytes"])
    assert s["peak_device_bytes"] == [None, None]
    assert set(s["plan"]) == {f"t_cat_{i}" for i in range(8)}
    assert s["config"]["train"]["batch_size"] == 256
    assert s["versions"]["torch"] and s["versions"]["torchrec"] and s["versions"]["fbgemm"]
    assert s["hardware"]["cores"] >= 1 and s["hardware"]["gpu"] is None
    assert set(s["eval"]) == {"auc", "ne", "logloss", "examples"}
    assert s["eval"]["examples"] == 8 * 512  # tiny: train.eval_steps = 8 global batches of 2 x 256
    assert s["warnings"] == [] and s["best_eval"]["step"] in (100, 200, 300) and s["stopped_early_at"] is None


def test_loss_falls_and_auc_beats_chance(run_dir: Path) -> None:
    s = json.loads((run_dir / "summary.json").read_text())
    train = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert s["final_train_loss"] < train[0]["loss"] - 0.05
    assert s["eval"]["auc"] > 0.6
    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [100, 200, 300]


def test_plan_and_logs_written(run_dir: Path) -> None:
    plan = json.loads((run_dir / "plan.json").read_text())
    assert len(plan["estimate_per_rank"]) == 2
    assert all(r["ddr_bytes"] > 0 for r in plan["estimate_per_rank"])
    assert any(p.name.startswith("events.out.tfevents") for p in (run_dir / "tb").iterdir())
    assert json.loads((run_dir / "config.json").read_text())["model"]["arch"] == "dlrm"


def test_profile_writes_a_trace_per_rank(run_dir: Path) -> None:
    profile = run_dir.parent / "profile"
    for rank in (0, 1):
        trace = json.loads((profile / f"rank{rank}.pt.trace.json").read_text())
        names = {e.get("name", "") for e in trace["traceEvents"]}
        assert any("mm" in n for n in names) and any("embedding" in n for n in names)
        summary = (profile / f"top_ops_rank{rank}.txt").read_text()
        assert "Self CPU" in summary and "page faults: " in summary and " a step while profiled" in summary


def test_the_profile_summary_flags_steps_that_fault_in_fresh_pages() -> None:
    from torchrec_models.train.profiling import fault_note

    assert fault_note(40, 5) == "page faults: 8 a step while profiled"
    busy = fault_note(5 * 6500, 5)
    assert busy.startswith("page faults: 6,500 a step while profiled (about 25 MiB of fresh pages")


def _fail_with_a_bug(marker: str) -> None:
    raise ValueError(f"planted bug {marker}")


def test_a_rank_that_fails_on_a_bug_has_its_traceback_printed(capsys: pytest.CaptureFixture) -> None:
    """Not bad input: the launcher prints the rank's own traceback (elastic's log is kept quiet)."""
    from torchrec_models.cli import _run_ranks

    code, result = _run_ranks(_fail_with_a_bug, ("x17",), 2)
    err = capsys.readouterr().err
    assert code == 1 and result is None
    assert "Traceback" in err and "_fail_with_a_bug" in err and "ValueError: planted bug x17" in err
    assert "error: rank" in err.splitlines()[-1]


def test_the_launching_process_checks_a_run_without_importing_torchrec(tmp_path: Path) -> None:
    """The CLI's checks before any rank starts (config, data, resume point) stay free of torchrec's
    3-4 s import; the ranks import it."""
    import subprocess
    import sys

    from conftest import ROOT

    script = (
        "import sys\n"
        "from torchrec_models.config import load_config\n"
        "from torchrec_models.runtime.worker import preflight\n"
        f"for config in ({TINY!r}, {str(ROOT / 'configs' / 'dlrm_criteo_onehot.toml')!r}):\n"
        f"    preflight(load_config(config), 2, run_dir=__import__('pathlib').Path({str(tmp_path)!r}))\n"
        "print(sorted(m for m in sys.modules if m == 'torchrec' or m.startswith('torchrec.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
