"""Checkpoints: bit-exact resume, resharding on load, restart after a killed rank, export, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from conftest import ROOT, TINY, read_jsonl, run_cli
from torchrec_models.train.checkpoint import CheckpointError, complete_checkpoints, resolve_resume

pytestmark = pytest.mark.slow
COMMON = ["train.log_every=1", "train.eval_steps=2", "checkpoint.keep=0"]


def _train(run_dir: Path, *overrides: str, nproc: int = 2, resume: str = "auto") -> dict:
    out = run_cli("train", "--config", TINY, "--nproc-per-node", str(nproc), "--run-dir", str(run_dir),
                  "--resume", resume, "--set", *COMMON, *overrides)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def _export(run_dir: Path, out: Path) -> dict[str, torch.Tensor]:
    done = run_cli("export", "--checkpoint", str(run_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    _train(run_dir, "train.steps=40", "checkpoint.every=20")
    return run_dir


def test_resume_is_bit_exact(straight: Path, tmp_path: Path) -> None:
    split = tmp_path / "split"
    _train(split, "train.steps=20")
    summary = _train(split, "train.steps=40")
    assert summary["resumed_from_step"] == 20
    a, b = _losses(straight), _losses(split)
    assert [a[s] for s in range(21, 41)] == [b[s] for s in range(21, 41)]
    pa, pb = _export(straight, tmp_path / "a.pt"), _export(split, tmp_path / "b.pt")
    assert pa.keys() == pb.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key


RESHARD = ["train.batch_size={b}", "train.dense_optimizer=sgd", "train.warmup_steps=0", "train.steps=40"]


@pytest.mark.parametrize("world, plan", [(1, "sharding.type=row_wise"), (3, "sharding.type=table_wise")])
def test_resharded_resume_continues_with_the_same_losses(tmp_path_factory, world: int, plan: str) -> None:
    base = tmp_path_factory.getbasetemp() / "reshard_source"
    mixed = ["sharding.per_table.t_cat_0=row_wise", "sharding.per_table.t_cat_1=row_wise",
             "sharding.type=table_wise"]
    if not (base / "summary.json").exists():
        _train(base, *[o.format(b=96) for o in RESHARD], *mixed, "checkpoint.every=20")
    target = tmp_path_factory.mktemp(f"reshard{world}") / "run"
    ckpt = base / "checkpoints" / "step_00000020"
    summary = _train(target, *[o.format(b=192 // world) for o in RESHARD], plan, nproc=world, resume=str(ckpt))
    assert summary["resumed_from_step"] == 20 and summary["world_size"] == world
    assert {p["sharding_type"] for p in summary["plan"].values()} == {plan.split("=")[1]}
    a, b = _losses(base), _losses(target)
    for step in range(21, 41):
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])


def _rank_pids(root_pid: int) -> list[int]:
    """Descendant processes of ``root_pid`` that are ranks: spawned, or forked by the rank server."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [(root_pid, b"")]
    while todo:
        pid, parent_cmd = todo.pop()
        for child in children.get(pid, []):
            try:
                cmd = (Path("/proc") / str(child) / "cmdline").read_bytes()
            except OSError:
                continue
            todo.append((child, cmd))
            spawned = b"spawn_main" in cmd and b"resource_tracker" not in cmd
            if spawned or (b"forkserver" in cmd and b"forkserver" in parent_cmd):
                found.append(child)
    return found


def test_killed_rank_restarts_from_checkpoint(tmp_path: Path) -> None:
    args = ["train.steps=300", "checkpoint.every=50", "train.log_every=10", "train.eval_steps=2"]
    reference = tmp_path / "reference"
    _train(reference, *args)
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchrec_models", "train", "--config", TINY, "--nproc-per-node", "2",
         "--max-restarts", "1", "--run-dir", str(run_dir), "--set", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "step_00000050").exists():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    ranks = _rank_pids(proc.pid)
    assert len(ranks) == 2
    os.kill(ranks[-1], signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert "resumed from" in output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] >= 50
    pa, pb = _export(reference, tmp_path / "ref.pt"), _export(run_dir, tmp_path / "killed.pt")
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key


def test_export_predicts_like_the_sharded_model(straight: Path, tmp_path: Path) -> None:
    from torchrec_models.config import build_config
    from torchrec_models.data.source import make_source
    from torchrec_models.models import build_model
    from torchrec_models.train.oracle import sharded_eval_logits

    state = _export(straight, tmp_path / "model.pt")
    ckpt = resolve_resume("auto", straight / "checkpoints")
    cfg = build_config(json.loads((ckpt / "manifest.json").read_text())["config"])
    model = build_model(cfg.model, torch.device("cpu"), 123, table_device="cpu")
    model.load_state_dict(state)
    model.eval()
    batches = make_source(cfg).eval_batches(0, 1, 2 * cfg.train.batch_size, range(2))
    with torch.no_grad():
        unsharded = torch.cat([model(b)[1][1] for b in batches])
    sharded = sharded_eval_logits(TINY, [*COMMON, "train.steps=40"], str(ckpt), world_size=2, steps=2)
    assert torch.allclose(unsharded, sharded, atol=1e-5), float((unsharded - sharded).abs().max())


def test_checkpoint_holds_tensors_only(straight: Path) -> None:
    ckpt = resolve_resume("auto", straight / "checkpoints")
    meta = dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    kinds = {type(v).__name__ for v in meta.values()}
    assert kinds <= {"TensorStorageMetadata"}, kinds
    assert any(k.startswith("optim.") for k in meta) and any(k.startswith("rng.rank1.") for k in meta)


def test_incomplete_checkpoints_are_never_chosen_and_damaged_ones_stop_the_resume(
        straight: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "checkpoints"
    shutil.copytree(straight / "checkpoints", root)
    newest = complete_checkpoints(root)[-1]
    (root / ".step_00000060.tmp").mkdir()                       # interrupted write
    shutil.copytree(newest.path, root / "step_00000070")
    (root / "step_00000070" / "manifest.json").unlink()         # no manifest: a save that did not finish
    assert resolve_resume("auto", root) == newest.path
    with pytest.raises(CheckpointError, match="step_00000070"):
        resolve_resume(str(root / "step_00000070"), root)
    shutil.copytree(newest.path, root / "step_00000080")
    (root / "step_00000080" / "manifest.json").write_text("{truncated")  # damaged after it was written
    with pytest.raises(CheckpointError, match="step_00000080.*unreadable"):
        resolve_resume("auto", root)  # not a silent fall-back to an older step


def _damaged_copy(straight: Path, tmp_path: Path) -> Path:
    """A copy of the run whose newest checkpoint has one tensor file cut short."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight, run)
    shard = sorted(resolve_resume("auto", run / "checkpoints").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    return run


def test_damaged_tensor_file_is_one_line_at_two_ranks(straight: Path, tmp_path: Path) -> None:
    run = _damaged_copy(straight, tmp_path)
    out = run_cli("train", "--config", TINY, "--nproc-per-node", "2", "--run-dir", str(run),
                  "--set", *COMMON, "train.steps=60", "checkpoint.every=20")
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "tensor files could not be read" in errors[0]
    assert "Traceback" not in out.stderr
    done = run_cli("export", "--checkpoint", str(run), "--out", str(tmp_path / "model.pt"))
    assert done.returncode == 2 and "tensor files could not be read" in done.stderr
    assert not list(tmp_path.glob("model.pt*"))


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.pop("step"), "'step'"),
    (lambda m: m.update(world_size="two"), "'world_size'"),
    (lambda m: m["tables"].update(t_cat_0=[1000]), "'tables.t_cat_0'"),
    (lambda m: m.pop("config"), "'config'"),
])
def test_hand_edited_manifest_names_the_field(straight: Path, tmp_path: Path, edit, field: str) -> None:
    import shutil

    path = tmp_path / "ckpt"
    shutil.copytree(resolve_resume("auto", straight / "checkpoints"), path)
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    out = run_cli("export", "--checkpoint", str(path), "--out", str(tmp_path / "model.pt"))
    assert out.returncode == 2 and field in out.stderr and "manifest.json" in out.stderr, out.stderr[-2000:]
    assert not list(tmp_path.glob("model.pt*"))


def test_run_directory_of_another_config_is_refused(straight: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight, run)
    for override, key in (("model.bottom_mlp=[32,16]", "model.bottom_mlp"),
                          ("train.embedding_optimizer=adagrad", "train.embedding_optimizer")):
        out = run_cli("train", "--config", TINY, "--run-dir", str(run), "--set", *COMMON, "train.steps=60",
                      override)
        assert out.returncode == 2 and key in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_resume_with_other_tables_names_the_table(straight: Path, tmp_path: Path) -> None:
    ckpt = resolve_resume("auto", straight / "checkpoints")
    target = tmp_path / "new"
    rows = [1000, 1000, 1000, 1000, 500, 777, 2000, 2000]
    out = run_cli("train", "--config", TINY, "--run-dir", str(target), "--resume", str(ckpt),
                  "--set", f"model.num_embeddings_per_feature={rows}")
    assert out.returncode == 2
    assert "t_cat_5" in out.stderr and "500 x 16" in out.stderr and "777 x 16" in out.stderr
    assert not target.exists()
    out = run_cli("train", "--config", TINY, "--run-dir", str(target), "--resume", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "nowhere" in out.stderr and not target.exists()
