"""The ``quality`` suite: how long, and how many examples, a preset takes to reach a target AUC
on held-out Criteo-format data from the planted teacher, with the teacher's own AUC beside it.

Each case writes a training and a held-out file (``write_criteo_tsv``), preprocesses both with
the preset's tables, trains ``EPOCHS`` passes with ``python -m torchrec_models train`` on 2 ranks,
evaluating the whole held-out set five times a pass, keeping the best checkpoint
(``checkpoint.keep_best``) and stopping after ``PATIENCE`` evaluations without a better NE, and
reads ``metrics.jsonl`` and ``summary.json``.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "configs" / "dlrm_criteo_onehot.toml"
HELD_OUT = 50_000
# (training rows, table rows, batch per rank)
CASES = ((50_000, 100_000, 512), (200_000, 100_000, 512), (200_000, 100_000, 2048), (200_000, 10_000, 512))
GAPS = (0.05, 0.03)  # targets: the teacher's AUC minus these
EPOCHS, EVALS_PER_EPOCH, PATIENCE = 3, 5, 5


def teacher_auc(rows: int, seed: int) -> float:
    """The teacher's AUC on the held-out rows ``write_criteo_tsv(..., rows, seed)`` writes."""
    from sklearn.metrics import roc_auc_score

    from torchrec_models.data.criteo_synth import CriteoTeacher

    teacher = CriteoTeacher()
    labels, dense, cats = teacher.sample(rows, seed * 1_000_003)  # one chunk: rows <= 100k
    return float(roc_auc_score(labels, teacher.logit(dense, cats)))


def _prepare(tmp: Path, name: str, rows: int, seed: int, table_rows: int) -> Path:
    from torchrec_models.data.criteo_preprocess import PreprocessOptions, preprocess
    from torchrec_models.data.criteo_synth import write_criteo_tsv

    out = tmp / f"{name}_{rows}_{table_rows}"
    if not out.is_dir():
        src = write_criteo_tsv(tmp / f"{name}_{rows}.txt", rows, seed=seed)
        preprocess([src], out, PreprocessOptions(table_sizes=[table_rows] * 26, progress=False))
    return out


def run_case(tmp: Path, train_rows: int, table_rows: int, batch: int, nproc: int = 2) -> dict[str, Any]:
    train = _prepare(tmp, "train", train_rows, 1, table_rows)
    held = _prepare(tmp, "held", HELD_OUT, 2, table_rows)
    run = tmp / f"run_{train_rows}_{table_rows}_{batch}"
    steps = math.ceil(train_rows / (batch * nproc))
    sets = ["data.kind=criteo", f"data.path={train}", f"data.eval_path={held}", f"train.epochs={EPOCHS}",
            f"train.batch_size={batch}", f"train.eval_every={max(1, steps // EVALS_PER_EPOCH)}",
            "checkpoint.keep_best=true", "checkpoint.keep=1", f"train.early_stop_patience={PATIENCE}",
            f"model.num_embeddings_per_feature={[table_rows] * 26}"]
    done = subprocess.run([sys.executable, "-m", "torchrec_models", "train", "--config", str(PRESET),
                           "--nproc-per-node", str(nproc), "--run-dir", str(run), "--set", *sets],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    summary = json.loads((run / "summary.json").read_text())
    return {"train_rows": train_rows, "table_rows": table_rows, "batch_size_per_rank": batch, "world_size": nproc,
            "steps_per_epoch": steps, "best_eval": summary.get("best_eval"),
            "stopped_early_at": summary.get("stopped_early_at"), "warnings": summary.get("warnings", []),
            "evals": [{k: e[k] for k in ("step", "auc", "ne", "elapsed_s")} for e in evals]}


def summarize(case: dict[str, Any], ceiling: float) -> dict[str, Any]:
    """Final and best AUC, and the first evaluation reaching each target."""
    evals, global_batch = case["evals"], case["batch_size_per_rank"] * case["world_size"]
    out = {**case, "teacher_auc": ceiling, "final": evals[-1], "best_auc": max(e["auc"] for e in evals)}
    for gap in GAPS:
        hit = next((e for e in evals if e["auc"] >= ceiling - gap), None)
        out[f"to_teacher_minus_{gap}"] = None if hit is None else {
            "step": hit["step"], "examples": hit["step"] * global_batch, "seconds": hit["elapsed_s"]}
    return out


def run_quality_suite(out: Path, cases=CASES) -> list[dict[str, Any]]:
    """Runs every case and writes ``out/quality.json`` and ``out/report.md``."""
    from torchrec_models import runinfo

    out.mkdir(parents=True, exist_ok=True)
    ceiling = teacher_auc(HELD_OUT, 2)
    with tempfile.TemporaryDirectory() as tmp:
        results = [summarize(run_case(Path(tmp), *case), ceiling) for case in cases]
    record = {"hardware": runinfo.hardware(), "versions": runinfo.versions(), "git_sha": runinfo.git_sha(),
              "preset": PRESET.name, "held_out_rows": HELD_OUT, "cases": results}
    (out / "quality.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "report.md").write_text(_report(record) + "\n")
    return results


def _report(record: dict[str, Any]) -> str:
    hw = record["hardware"]
    ceiling = record["cases"][0]["teacher_auc"]
    lines = ["# Quality benchmark", "",
             f"Machine: {hw['cpu']}, {hw['cores']} cores. Preset {record['preset']}, up to {EPOCHS} passes "
             f"(early stop after {PATIENCE} evaluations without a better NE), {EVALS_PER_EPOCH} evaluations a pass, "
             f"keep_best on NE, 2 ranks; {record['held_out_rows']:,} held-out rows; the teacher's own AUC "
             f"{ceiling:.4f}. Kept checkpoint: the best-NE one (the model a user ships).", "",
             "| train rows | table rows | batch/rank | steps/pass | last AUC | last NE | kept: step, AUC, NE | "
             + " | ".join(f"to AUC {ceiling - g:.3f}: examples, s" for g in GAPS) + " |",
             "|" + " --- |" * (7 + len(GAPS))]
    for c in record["cases"]:
        hits = []
        for g in GAPS:
            hit = c[f"to_teacher_minus_{g}"]
            hits.append("not reached" if hit is None else f"{hit['examples']:,}, {hit['seconds']:.0f}")
        kept = c["best_eval"]
        kept_text = "none" if not kept else f"{kept['step']}, {kept['auc']:.4f}, {kept['ne']:.4f}"
        lines.append(f"| {c['train_rows']:,} | {c['table_rows']:,} | {c['batch_size_per_rank']} | "
                     f"{c['steps_per_epoch']} | {c['final']['auc']:.4f} | {c['final']['ne']:.4f} | {kept_text} | "
                     + " | ".join(hits) + " |")
    return "\n".join(lines)
