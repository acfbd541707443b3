"""The training loop: pipelined sparse-dist steps, LR schedule, periodic evaluation, logging."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from torchrec_models import runinfo
from torchrec_models.config import Config
from torchrec_models.data.source import make_source
from torchrec_models.runtime.distributed import DistEnv
from torchrec_models.runtime.precision_support import precision_warning
from torchrec_models.sharding.sharded_model import build_sharded_model, collectives_summary, training_process_group
from torchrec_models.sharding.planner import describe_plan, format_plan
from torchrec_models.train.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from torchrec_models.train.balance import balanced_batches, make_balancer
from torchrec_models.train.best import BestTracker
from torchrec_models.train.evaluation import plan_eval, with_epochs
from torchrec_models.tasks import task_for
from torchrec_models.train.optim import LRSchedule, build_optimizer
from torchrec_models.train.profiling import StepProfiler
from torchrec_models.train.outputs import RunWriter
from torchrec_models.train.throughput import ThroughputMeter


def boundaries(start: int, steps: int, *periods: int) -> list[int]:
    """Steps in (start, steps] where something happens: multiples of each period, and the end."""
    points = {steps}
    for period in periods:
        if period:
            points.update(range(period * (start // period + 1), steps, period))
    return sorted(p for p in points if p > start)


def _setup_warnings(cfg: Config, env: DistEnv) -> list[str]:
    """What the run should know before it starts (printed now by the main rank, and in the summary)."""
    warnings = [w for w in (precision_warning(cfg.train.precision, env.device),) if w]
    if cfg.sharding.cpu_balance and env.device.type != "cpu":
        warnings.append(f"sharding.cpu_balance applies to CPU ranks; ranks on {env.device.type} take equal shares")
    if env.is_main:
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    return warnings


class Trainer:
    """Owns the sharded model, optimizer, pipeline and data for one run."""

    def __init__(self, cfg: Config, env: DistEnv, run_dir: Path | None = None) -> None:
        self.source = make_source(cfg, env.device)
        cfg = with_epochs(cfg, self.source.train_examples(), env.world_size)
        self.cfg, self.env = cfg, env
        self.eval_plan = plan_eval(cfg.train.eval_steps, cfg.train.batch_size, env.world_size,
                                   self.source.eval_examples(), self.source.train_examples() is None)
        self.task = task_for(cfg)
        self.setup_warnings = _setup_warnings(cfg, env)
        self.model, self.planned = build_sharded_model(cfg, env, lambda m: self.task.prepare(m, self.source, cfg))
        self.plan = describe_plan(self.planned.plan)
        self.balancer = make_balancer(cfg, env, self.source, self.model, training_process_group(self.model))
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.schedule = LRSchedule(self.optimizer, cfg.train)
        self.pipeline = TrainPipelineSparseDist(self.model, self.optimizer, env.device, execute_all_batches=True)
        self.writer = RunWriter(run_dir, env.is_main)
        self.global_batch = cfg.train.batch_size * env.world_size
        self.losses: list[float] = []
        self.diverged: tuple[int, float] | None = None  # (end step, loss) of the first window whose loss is not finite
        self.start_step = 0
        self.optimizer.init_state()  # optimizer state exists before the first step, for checkpoints
        t = cfg.train
        self.profiler = (StepProfiler(t.profile_dir, t.measure_after, t.profile_steps, env.rank, env.device)
                         if t.profile_dir else None)
        ckpt = cfg.checkpoint
        self.checkpoint_root = Path(ckpt.dir) if ckpt.dir else (run_dir / "checkpoints" if run_dir else None)

    def resume(self, resume: str) -> None:
        """Restores the newest complete checkpoint (``auto``), a given one (a path), or nothing."""
        if self.checkpoint_root is None and resume == "auto":
            return
        path = resolve_resume(resume, self.checkpoint_root or Path("."))
        if path is not None:
            self.start_step = load_checkpoint(self, path)
            if self.env.is_main:
                print(f"resumed from {path} at step {self.start_step}", flush=True)

    def announce_plan(self) -> None:
        if self.env.is_main:
            print(format_plan(self.plan, self.planned.estimate), flush=True)
            self.writer.write("plan.json", {
                "source": self.planned.source, "tables": self.plan, "estimate_per_rank": self.planned.estimate,
            })
            self.writer.write("config.json", self.cfg.to_dict())

    def make_meter(self, skip: int | None = None, window: int | None = None) -> ThroughputMeter:
        t = self.cfg.train
        return ThroughputMeter(self.global_batch, t.measure_after if skip is None else skip,
                               t.log_every if window is None else window, self.env.device)

    def plain_model(self) -> torch.nn.Module:
        """The model with the pipeline's forward rewrites undone (for evaluation and probes);
        the next pipelined step re-attaches it."""
        return self.pipeline.detach()

    def fit(self) -> dict[str, Any]:
        """Trains ``train.steps`` steps, evaluating every ``train.eval_every`` and at the end."""
        t = self.cfg.train
        meter = self.make_meter()
        self.fit_started = time.perf_counter()
        bar = tqdm(total=t.steps, initial=self.start_step, disable=not self.env.is_main, desc="train",
                   unit="step", mininterval=0.5 if sys.stderr.isatty() else 10.0)
        evaluation: dict[str, float] = {}
        metric = t.best_metric or self.task.default_metric
        best = BestTracker(metric, self.task.lower_is_better(metric), t.early_stop_patience, self.checkpoint_root,
                           self.cfg.checkpoint.keep_best)
        start, self.stopped_early_at = self.start_step, None
        for stop in boundaries(start, t.steps, t.eval_every, self.cfg.checkpoint.every):
            self.train_steps(start, stop, meter, bar)
            eval_due = stop == t.steps or (t.eval_every and stop % t.eval_every == 0)
            if eval_due:
                evaluation = self.evaluate(stop)
                best.update(self, stop, evaluation, self.epoch_at(stop))
                meter.pause()
            if self.diverged is not None:  # no checkpoint of a model that is nan: resume from the last good one
                evaluation = evaluation if eval_due else self.evaluate(stop)
                self.stopped_early_at = stop if stop < t.steps else None
                break
            self._maybe_checkpoint(stop)
            start = stop
            if best.should_stop() and stop < t.steps:
                self.stopped_early_at = stop
                break
        bar.close()
        if not evaluation:  # resumed at the very end
            evaluation = self.evaluate(t.steps)
        return {**self._summary(meter, evaluation), "best_eval": best.best, "stopped_early_at": self.stopped_early_at}

    def epoch_at(self, step: int) -> float | None:
        """Passes over the training data after ``step`` steps (None for an endless stream)."""
        rows = self.source.train_examples()
        return step * self.global_batch / rows if rows else None

    def _maybe_checkpoint(self, step: int) -> None:
        c = self.cfg.checkpoint
        due = (c.every and step % c.every == 0) or (c.final and step == self.cfg.train.steps)
        if due and self.checkpoint_root is not None:
            save_checkpoint(self, self.checkpoint_root, step, c.keep)

    def train_steps(
        self, start: int, stop: int, meter: ThroughputMeter | None = None, bar: tqdm | None = None
    ) -> None:
        """Runs steps [start, stop); the pipeline is drained when this returns."""
        t = self.cfg.train
        if self.balancer is not None:
            self.balancer.restart()  # time outside these steps (evaluation, checkpoints) is not pace
        meter = meter or self.make_meter()
        bar = bar or tqdm(disable=True)
        batches = self.train_batches(range(start, stop))
        window_loss, window_steps = torch.zeros((), device=self.env.device), 0
        for step in range(start, stop):
            loss, factor = self.run_step(step, batches)
            window_loss += loss
            window_steps += 1
            meter.step_done(step)
            if self.profiler is not None:
                self.profiler.step_done(step)
            bar.update(1)
            if (step + 1) % t.log_every == 0 or step + 1 == stop:
                mean_loss = _mean_over_ranks(float(window_loss) / window_steps, self.env.device)
                self.losses.append(mean_loss)
                if self.diverged is None and not math.isfinite(mean_loss):
                    self.diverged = step + 1, mean_loss
                self._log_train(step + 1, mean_loss, factor, meter, bar)
                window_loss.zero_()
                window_steps = 0

    def train_batches(self, steps: range) -> Iterator[Any]:
        """This rank's part of each step's training batch: its equal slice, or its balanced share."""
        if self.balancer is None:
            return self.source.train_batches(self.env.rank, self.env.world_size, self.cfg.train.batch_size, steps)
        return balanced_batches(self.source, self.balancer.schedule, self.env.rank, steps)

    def run_step(self, step: int, batches: Iterator[Any]) -> tuple[torch.Tensor, float]:
        """One pipelined step at ``step``'s learning rate: (this rank's loss, the LR factor)."""
        factor = self.schedule.apply(step)
        if self.balancer is not None:
            self.balancer.before_step(step)
        loss, _, _ = self.pipeline.progress(batches)
        return loss, factor

    def _log_train(self, step: int, loss: float, factor: float, meter: ThroughputMeter, bar: tqdm) -> None:
        rate = meter.rates[-1] if meter.rates else None
        bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{rate:,.0f}" if rate else "-")
        values = {"loss": loss, "lr_factor": factor}
        if rate:
            values["examples_per_sec"] = rate
        self.writer.log(step, "train", values)

    def evaluate(self, step: int) -> dict[str, Any]:
        """The task's held-out metrics (a collective), logged with the time since fit began."""
        result = self.task.evaluate(self)
        started = getattr(self, "fit_started", None)  # wall time since fit began, evaluations included
        self.writer.log(step, "eval", {**result, "elapsed_s": time.perf_counter() - started} if started else result)
        if self.env.is_main:
            tqdm.write(f"eval @ step {step}: {self.task.describe(result)}")
        return result

    def _divergence_warnings(self) -> list[str]:
        """A loss that is nan or inf never recovers: the run says so (and stops at its next evaluation)."""
        if self.diverged is None:
            return []
        step, loss = self.diverged
        stopped = f", training stopped at step {self.stopped_early_at}" if self.stopped_early_at else ""
        return [f"the training loss was {loss} in the window ending at step {step}: training diverged{stopped}, "
                "and the model's predictions are not usable; lower train.lr / train.embedding_lr "
                "(README: Training well)"]

    def _summary(self, meter: ThroughputMeter, evaluation: dict[str, float]) -> dict[str, Any]:
        rss = _gather(runinfo.peak_rss_bytes())
        device_peak = _gather(runinfo.peak_device_bytes(self.env.device))
        final_loss = self.losses[-1] if self.losses else None
        warnings = self.setup_warnings + self._divergence_warnings() + self.task.warnings(evaluation)
        if self.env.is_main:
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
        return {
            "warnings": warnings,
            "world_size": self.env.world_size,
            "steps": self.cfg.train.steps,
            "resumed_from_step": self.start_step,
            "global_batch_size": self.global_batch,
            "examples_per_sec": meter.median(),
            "examples_per_sec_percentiles": meter.percentiles(),
            "measured_windows": len(meter.rates),
            "final_train_loss": final_loss,
            "eval": evaluation,
            "peak_rss_bytes": rss,
            "peak_device_bytes": device_peak,
            "hashed_out_of_range_ids": self._hashed_ids(),
            "cpu_balance": self.balancer.summary() if self.balancer is not None else None,
            "plan": {t: {k: v for k, v in d.items() if k != "shards"} for t, d in self.plan.items()},
            "plan_source": self.planned.source,
            "memory_estimate_per_rank": self.planned.estimate,
            "config": self.cfg.to_dict(),
            "versions": runinfo.versions(),
            "git_sha": runinfo.git_sha(),
            "hardware": runinfo.hardware(),
            "device": str(self.env.device),
            "backend": self.env.backend,
            "collectives": collectives_summary(self.model),
        }

    def _hashed_ids(self) -> dict[str, int] | None:
        """Ids hashed into range (``data.out_of_range = hash``), per feature, over all ranks."""
        counts = getattr(self.source, "hashed_ids", None)
        if counts is None:
            return None
        total = [sum(int(c[i]) for c in _gather(list(counts))) for i in range(len(counts))]
        return dict(zip(self.source.keys, total))

    def close(self) -> None:
        self.writer.close()


def _gather(value: Any) -> list[Any]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _mean_over_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return float(t)


def run_training(cfg: Config, env: DistEnv, run_dir: Path | None, resume: str = "auto") -> dict[str, Any]:
    """Builds, resumes if asked, trains, evaluates; rank 0 writes ``summary.json``."""
    trainer = Trainer(cfg, env, run_dir)
    try:
        trainer.resume(resume)
        trainer.announce_plan()
        summary = trainer.fit()
        trainer.writer.write("summary.json", summary)
        return summary
    finally:
        trainer.close()
