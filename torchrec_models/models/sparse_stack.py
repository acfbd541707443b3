"""DLRM's sparse arch without its copy: pooled embeddings viewed as [B, F, D] where they already are.

torchrec's ``SparseArch`` splits the collection's output into one tensor per feature and
concatenates them again in feature order: a copy of the batch's embeddings forward and another
backward. When the output's keys are already in that order with one width, the values are the
[B, F * D] block it rebuilds, and a view does.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.fx
from torchrec.models.dlrm import SparseArch
from torchrec.sparse.jagged_tensor import KeyedTensor


def stack_pooled(pooled: KeyedTensor, names: list[str], num_features: int, dim: int) -> torch.Tensor:
    """[B, F, D] of the features ``names`` from ``pooled``: a view when its keys are ``names``."""
    if list(pooled.keys()) == names and pooled.key_dim() == 1:
        return pooled.values().reshape(-1, num_features, dim)
    by_name = pooled.to_dict()
    return torch.cat([by_name[name] for name in names], dim=1).view(-1, num_features, dim)


torch.fx.wrap("stack_pooled")  # a leaf for the pipeline's symbolic trace


@lru_cache(maxsize=64)
def _positions(keys: tuple[str, ...], names: tuple[str, ...]) -> torch.Tensor | None:
    """Where each of ``names`` sits among ``keys``; None when they are in the same order."""
    if keys == names:
        return None
    where = {key: i for i, key in enumerate(keys)}
    return torch.tensor([where[name] for name in names], dtype=torch.long)


def pooled_in_key_order(pooled: KeyedTensor, names: list[str], num_features: int,
                        dim: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The pooled values viewed as [B, F, D] in their own key order, and the positions of ``names``
    among them (None: already in that order); None when they are not F blocks of D (as named)."""
    keys = pooled.keys()
    if pooled.key_dim() != 1 or sorted(keys) != sorted(names) or any(n != dim for n in pooled.length_per_key()):
        return None
    return pooled.values().reshape(-1, num_features, dim), _positions(tuple(keys), tuple(names))


class StackedSparseArch(SparseArch):
    """``SparseArch`` (same module path to the collection, same output) without the copy."""

    def forward(self, features) -> torch.Tensor:
        return self.stack(self.embedding_bag_collection(features))

    def stack(self, pooled: KeyedTensor) -> torch.Tensor:
        """[B, F, D] from the collection's output (waits for it if it is still in flight)."""
        return stack_pooled(pooled, self.sparse_feature_names, self.F, self.D)
