"""Retrieval (two towers): recall@K and NDCG@K of each test user's held-out positives against the
whole item corpus, with a most-popular ranking on the same split beside them."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from torchrec_models.config import Config, ModelConfig
from torchrec_models.retrieval.metrics import metric_names, popularity_scores, ranking_sums
from torchrec_models.retrieval.model import build_two_tower

BLOCK_USERS = 1024  # users scored against the corpus at a time: memory is this x items scores


def _all_reduce(values: np.ndarray, device: torch.device) -> np.ndarray:
    t = torch.as_tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.cpu().numpy()


def _rank_slice(count: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's share of indices 0..count-1 (every index on exactly one rank)."""
    return np.arange(rank, count, world_size)


def _padded_chunks(ids: np.ndarray, size: int, steps: int) -> list[np.ndarray]:
    """``steps`` chunks of ``size`` ids, the tail padded with id 0 (every rank runs ``steps`` lookups)."""
    padded = np.zeros(steps * size, dtype=np.int64)
    padded[:len(ids)] = ids
    return [padded[i * size:(i + 1) * size] for i in range(steps)]


class RetrievalTask:
    default_metric = "recall_at_100"
    predicts_rows = False  # its outputs are rankings (evaluate) and item vectors (export)
    autocasts_dense = False  # the towers and the in-batch softmax stay fp32

    def __init__(self) -> None:
        self._popular_sums: np.ndarray | None = None  # this rank's baseline sums: fixed by the split

    def build_model(self, cfg: ModelConfig, dense_device: torch.device, seed: int,
                    autocast_dtype: torch.dtype | None, table_device: torch.device | str) -> nn.Module:
        return build_two_tower(cfg, dense_device, seed, table_device)

    def scoring_config(self, cfg: Config, data_dir: Path) -> Config:
        """The data directory's test users against its corpus; its tables must be the checkpoint's
        (the config check compares them)."""
        return replace(cfg, data=replace(cfg.data, path=str(data_dir)),
                       train=replace(cfg.train, epochs=0, profile_dir=""))

    def export_extras(self, model: nn.Module, cfg: Config, out: Path) -> None:
        from torchrec_models.serving.export import export_item_vectors

        export_item_vectors(model, cfg, out)

    def lower_is_better(self, metric: str) -> bool:
        return False

    def prepare(self, model: nn.Module, source: Any, cfg: Config) -> None:
        if cfg.model.logq_correction:
            model.set_log_q(source.item_log_q())

    @torch.no_grad()
    def item_vectors(self, tower_model: nn.Module, source: Any, batch_size: int, env: Any) -> torch.Tensor:
        """[items, D] vectors of the whole corpus on every rank (each rank computes a share)."""
        mine = _rank_slice(source.num_items, env.rank, env.world_size)
        steps = -(-source.num_items // (batch_size * env.world_size))
        parts = [tower_model.towers(source.features(None, chunk).to(env.device))[1]
                 for chunk in _padded_chunks(mine, batch_size, steps)]
        local = torch.cat(parts)[:len(mine)] if parts else torch.zeros(0, device=env.device)
        return _gather_in_index_order(local, source.num_items, env)

    @torch.no_grad()
    def evaluate(self, trainer: Any) -> dict[str, float]:
        env, source, batch_size = trainer.env, trainer.source, trainer.cfg.train.batch_size
        model = trainer.plain_model()
        model.eval()
        towers = model.module if hasattr(model, "module") else model
        items = self.item_vectors(towers, source, batch_size, env).float()
        users = source.test_users[_rank_slice(len(source.test_users), env.rank, env.world_size)]
        steps = -(-len(source.test_users) // (batch_size * env.world_size))
        vectors = [towers.towers(source.features(chunk, None).to(env.device))[0]
                   for chunk in _padded_chunks(users, batch_size, steps)]
        model.train()
        user_vectors = (torch.cat(vectors)[:len(users)] if vectors else torch.zeros(0, items.shape[1])).float()
        index = {int(u): i for i, u in enumerate(users)}
        model_sums = ranking_sums(users, lambda chunk: user_vectors[[index[int(u)] for u in chunk]] @ items.T,
                                  source.test, source.seen, block=BLOCK_USERS)
        if self._popular_sums is None:
            self._popular_sums = ranking_sums(users, popularity_scores(source.train_item, source.num_items),
                                              source.test, source.seen, block=BLOCK_USERS)
        totals = _all_reduce(np.concatenate([model_sums, self._popular_sums, [len(users)]]), env.device)
        count, names = totals[-1], metric_names()
        result: dict[str, Any] = {name: float(v / count) for name, v in zip(names, totals[:len(names)])}
        result["popularity_baseline"] = {n: float(v / count) for n, v in zip(names, totals[len(names):-1])}
        result["examples"] = int(count)
        return result

    def describe(self, result: dict[str, Any]) -> str:
        pop = result["popularity_baseline"]
        return "  ".join(f"{k} {result[k]:.4f} (popular {pop[k]:.4f})" for k in ("recall_at_10", "recall_at_100",
                                                                              "ndcg_at_10"))

    def warnings(self, result: dict[str, Any]) -> list[str]:
        pop = result.get("popularity_baseline", {}).get("recall_at_100")
        if pop is not None and result["recall_at_100"] <= pop:
            return [f"recall@100 {result['recall_at_100']:.4f} is not above the most-popular ranking's "
                    f"{pop:.4f}: the model has not learned more than popularity; train longer or check the data"]
        return []


def _gather_in_index_order(local: torch.Tensor, count: int, env: Any) -> torch.Tensor:
    """Rank r holds rows r, r + W, r + 2W, ...; returns all ``count`` rows in index order."""
    if not dist.is_initialized() or env.world_size == 1:
        return local
    width = -(-count // env.world_size)
    padded = torch.zeros(width, local.shape[1], device=local.device, dtype=local.dtype)
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(env.world_size)]
    dist.all_gather(parts, padded)
    out = torch.empty(count, local.shape[1], device=local.device, dtype=local.dtype)
    for r, part in enumerate(parts):
        rows = torch.arange(r, count, env.world_size, device=local.device)
        out[rows] = part[:len(rows)]
    return out
