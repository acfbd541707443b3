"""The plain-PyTorch baseline: nn.EmbeddingBag tables replicated on every rank with sparse
gradients, the MLPs in DDP, Adagrad (or SGD) for the tables and the config's dense optimizer.
Same data, shapes and loss as the torchrec rows, so the ratio shows what sharding buys.

The tables' sparse gradients are averaged with one blocking ``all_reduce`` per table after
backward rather than by DDP: DDP's asynchronous sparse all-reduce on gloo corrupts the heap
in torch 2.13 (``malloc(): unaligned tcache chunk detected`` within a few dozen steps)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchrec.datasets.utils import Batch

from torchrec_models.config import Config, ConfigError, ModelConfig, table_names
from torchrec_models.data.source import make_source
from torchrec_models.runtime.distributed import DistEnv
from torchrec_models.sharding.table_init import table_values
from torchrec_models.train.optim import _torch_optimizer
from torchrec_models.train.throughput import ThroughputMeter


def _mlp(widths: list[int], final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class PlainDLRM(nn.Module):
    """DLRM with dot interaction, written with nn.EmbeddingBag and nn.Linear only."""

    def __init__(self, m: ModelConfig, seed: int) -> None:
        super().__init__()
        if m.arch != "dlrm":
            raise ConfigError("model.arch", "the plain-PyTorch baseline implements 'dlrm' only")
        self.tables = nn.ModuleList(nn.EmbeddingBag(rows, m.embedding_dim, mode="sum", sparse=True)
                                    for rows in m.table_rows())
        with torch.no_grad():
            for i, table in enumerate(self.tables):
                rows = table.num_embeddings
                table.weight.copy_(table_values(seed, i, rows, range(rows), range(m.embedding_dim)))
        f = m.num_sparse_features
        self.bottom = _mlp([m.dense_in_features, *m.bottom_mlp], final_activation=True)
        self.top = _mlp([m.embedding_dim + f * (f + 1) // 2, *m.top_mlp], final_activation=False)
        self.triu = torch.triu_indices(f + 1, f + 1, offset=1)
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        dense = self.bottom(batch.dense_features)
        features = batch.sparse_features.to_dict()
        pooled = [table(jt.values(), jt.offsets()[:-1]) for table, jt in zip(self.tables, features.values())]
        stacked = torch.stack([dense, *pooled], dim=1)
        dots = torch.bmm(stacked, stacked.transpose(1, 2))[:, self.triu[0], self.triu[1]]
        logits = self.top(torch.cat([dense, dots], dim=1)).squeeze(-1)
        loss = self.loss_fn(logits, batch.labels.float())
        return loss, (loss.detach(), logits.detach(), batch.labels)


class _Estimate:
    estimate = None


class BaselineTrainer:
    """The benchmark-facing surface of Trainer, for the plain-PyTorch model."""

    def __init__(self, cfg: Config, env: DistEnv, run_dir: Path | None = None) -> None:
        self.cfg, self.env = cfg, env
        torch.manual_seed(cfg.train.seed)
        model = PlainDLRM(cfg.model, cfg.train.seed).to(env.device)
        table_names_in_model = [n for n, _ in model.named_parameters() if n.startswith("tables.")]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, table_names_in_model)
        self.model = DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda" else None)
        self.tables = [p for n, p in model.named_parameters() if n in table_names_in_model]
        dense = [p for n, p in model.named_parameters() if n not in table_names_in_model]
        self.optimizers = [_table_optimizer(cfg.train.embedding_optimizer, self.tables, cfg.train.lr),
                           _torch_optimizer(cfg.train.dense_optimizer, dense, cfg.train.lr)]
        self.optimizer = _Both(self.optimizers, before_step=self._average_table_gradients)
        self.source = make_source(cfg, env.device)
        self.global_batch = cfg.train.batch_size * env.world_size
        self.planned = _Estimate()
        names = table_names(cfg.model.num_sparse_features)
        self.plan = {t: {"sharding_type": "replicated_ddp", "compute_kernel": "nn.EmbeddingBag", "ranks": []}
                     for t in names}

    def make_meter(self, skip: int, window: int) -> ThroughputMeter:
        return ThroughputMeter(self.global_batch, skip, window, self.env.device)

    def plain_model(self) -> nn.Module:
        return self.model

    def train_steps(self, start: int, stop: int, meter: ThroughputMeter) -> None:
        t = self.cfg.train
        for step, batch in zip(range(start, stop), self.source.train_batches(
                self.env.rank, self.env.world_size, t.batch_size, range(start, stop))):
            self.optimizer.zero_grad()
            loss, _ = self.model(batch.to(self.env.device))
            loss.backward()
            self.optimizer.step()
            meter.step_done(step)

    def _average_table_gradients(self) -> None:
        """What DDP does for dense gradients, done for the tables' sparse ones, one table at a time."""
        if self.env.world_size == 1:
            return
        for table in self.tables:
            if table.grad is not None:
                dist.all_reduce(table.grad)
                table.grad.div_(self.env.world_size)

    def close(self) -> None:
        pass


def _table_optimizer(kind: str, tables: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """SGD for ``sgd``; Adagrad (the nearest torch optimizer with sparse gradients) for the
    Adagrad variants, row-wise included."""
    if kind == "sgd":
        return torch.optim.SGD(tables, lr=lr)
    return torch.optim.Adagrad(tables, lr=lr, eps=1e-8)


class _Both:
    """Steps several optimizers as one, after a gradient hook."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], before_step: Callable[[], None]) -> None:
        self.optimizers = optimizers
        self.before_step = before_step

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.before_step()
        for o in self.optimizers:
            o.step()
