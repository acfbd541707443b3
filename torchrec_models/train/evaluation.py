"""What an evaluation covers: how many global batches, which positions are real examples.

``train.eval_steps = 0`` reads the whole held-out set once: the last global batch is padded to
full size (every rank keeps its shapes), and the padding gets weight 0, so it never counts.
A positive ``eval_steps`` reads that many global batches, and may not run past a finite set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from torchrec_models.config import Config, ConfigError


@dataclass(frozen=True)
class EvalPlan:
    steps: int
    examples: int  # real examples covered, over all ranks
    batch_size: int  # per rank
    world_size: int

    def weights(self, step: int, rank: int, device: torch.device) -> torch.Tensor:
        """1.0 for this rank's positions of ``step`` that hold real examples, 0.0 for padding."""
        start = (step * self.world_size + rank) * self.batch_size
        positions = torch.arange(start, start + self.batch_size, device=device)
        return (positions < self.examples).float()


def plan_eval(eval_steps: int, batch_size: int, world_size: int, held_out: int, endless: bool) -> EvalPlan:
    """``held_out``: the set's size (for an endless stream, how much of it a whole pass reads)."""
    global_batch = batch_size * world_size
    if eval_steps == 0:
        return EvalPlan(math.ceil(held_out / global_batch), held_out, batch_size, world_size)
    if not endless and eval_steps * global_batch > held_out:
        raise ConfigError("train.eval_steps", f"{eval_steps} steps of {global_batch} examples read past the "
                          f"{held_out:,} held-out examples; 0 evaluates each of them once")
    return EvalPlan(eval_steps, eval_steps * global_batch, batch_size, world_size)


def with_epochs(cfg: Config, train_examples: int | None, world_size: int) -> Config:
    """``cfg`` with ``train.steps`` derived from ``train.epochs`` (passes over the training rows)."""
    t = cfg.train
    if not t.epochs or train_examples is None:
        return cfg
    steps = math.ceil(t.epochs * train_examples / (t.batch_size * world_size))
    return replace(cfg, train=replace(t, steps=steps))
