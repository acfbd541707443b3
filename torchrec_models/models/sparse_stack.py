"""DLRM's sparse arch without its copy: pooled embeddings viewed as [B, F, D] where they already are.

torchrec's ``SparseArch`` splits the collection's output into one tensor per feature and
concatenates them again in feature order: a copy of the batch's embeddings forward and another
backward. When the output's keys are already in that order with one width, the values are the
[B, F * D] block it rebuilds, and a view does.
"""
from __future__ import annotations

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


class StackedSparseArch(SparseArch):
    """``SparseArch`` (same module path to the collection, same output) without the copy."""

    def forward(self, features) -> torch.Tensor:
        return self.stack(self.embedding_bag_collection(features))

    def stack(self, pooled: KeyedTensor) -> torch.Tensor:
        """[B, F, D] from the collection's output (waits for it if it is still in flight)."""
        return stack_pooled(pooled, self.sparse_feature_names, self.F, self.D)
