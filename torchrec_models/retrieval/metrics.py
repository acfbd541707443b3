"""Exact recall@K and NDCG@K against the whole item corpus, scored by brute force in user blocks.

A user's relevant items are their test positives; items they rated in the training period are
never recommended (scored -inf). Memory is bounded by ``block`` x items scores at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

KS = (10, 50, 100)


@dataclass(frozen=True)
class Pairs:
    """(user, item) pairs grouped by user: ``items[offsets[u]:offsets[u + 1]]`` are user u's."""

    offsets: np.ndarray
    items: np.ndarray

    @classmethod
    def group(cls, users: np.ndarray, items: np.ndarray, num_users: int) -> "Pairs":
        order = np.lexsort((items, users))
        counts = np.bincount(users, minlength=num_users)
        return cls(np.concatenate(([0], np.cumsum(counts))).astype(np.int64), items[order].astype(np.int64))

    def of(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user]:self.offsets[user + 1]]


def metric_names(ks=KS) -> list[str]:
    return [f"{m}_at_{k}" for m in ("recall", "ndcg") for k in ks]


def ranking_sums(
    users: np.ndarray, scores_of: Callable[[np.ndarray], torch.Tensor], test: Pairs, seen: Pairs,
    ks=KS, block: int = 1024,
) -> np.ndarray:
    """Sums over ``users`` of recall@k then NDCG@k (one entry per metric_names); divide by the count.

    ``scores_of(user_block)`` gives a [len(block), items] score tensor.
    """
    sums = np.zeros(2 * len(ks))
    top = max(ks)
    discounts = 1.0 / np.log2(np.arange(2, top + 2))
    for start in range(0, len(users), block):
        chunk = users[start:start + block]
        scores = scores_of(chunk).float()
        rows = np.concatenate([np.full(len(seen.of(u)), i) for i, u in enumerate(chunk)] or [np.zeros(0)])
        cols = np.concatenate([seen.of(u) for u in chunk] or [np.zeros(0)])
        if len(rows):
            scores[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = -torch.inf
        best = torch.topk(scores, min(top, scores.shape[1]), dim=1).indices.cpu().numpy()
        for i, u in enumerate(chunk):
            relevant = test.of(u)
            hit = np.isin(best[i], relevant)
            for j, k in enumerate(ks):
                sums[j] += hit[:k].sum() / len(relevant)
                ideal = discounts[:min(len(relevant), k)].sum()
                sums[len(ks) + j] += (hit[:k] * discounts[:len(hit[:k])]).sum() / ideal
    return sums


def popularity_scores(train_items: np.ndarray, num_items: int) -> Callable[[np.ndarray], torch.Tensor]:
    """Every user gets the items ranked by their count of training positives."""
    counts = torch.as_tensor(np.bincount(train_items, minlength=num_items), dtype=torch.float32)
    return lambda chunk: counts.expand(len(chunk), num_items).clone()
