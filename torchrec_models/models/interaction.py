"""DLRM's dot interaction with a backward that uses the symmetry of the dot products.

``X X^T`` is symmetric, so its gradient through X is ``(G + G^T) X``: one batched matmul
instead of the two (and the sum) autograd makes of ``bmm(X, X^T)``, and the gradient of the kept
upper triangle is written straight into ``G + G^T`` instead of being scattered into a zero
matrix first. Forward values are those of torchrec's ``InteractionArch``; fp32 gradients agree to
rounding (the sum happens before the matmul instead of after). On the CPU both directions run in
this project's fused kernel instead (``kernels/dot_interaction.py``, ``train.cpu_interaction``).
"""
from __future__ import annotations

import torch
import torch.fx
from torchrec.models.dlrm import InteractionArch
from torchrec.sparse.jagged_tensor import KeyedTensor

from torchrec_models.kernels import dot_interaction as native
from torchrec_models.models.sparse_stack import pooled_in_key_order, stack_pooled


def _pair_positions(triu_indices: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions in an n x n matrix of the given upper-triangle pairs, and of both triangles."""
    rows, cols = triu_indices
    upper = rows * n + cols
    return upper, torch.cat([upper, cols * n + rows])


class _PairwiseDots(torch.autograd.Function):
    """[B, N, D] -> [B, N(N-1)/2]: the dot product of every pair of the N vectors (row < col)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: torch.Tensor, both: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, both)
        dots = torch.bmm(x, x.transpose(1, 2))
        return dots.view(x.size(0), -1).index_select(1, upper)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, both = ctx.saved_tensors
        n = x.size(1)
        symmetric = grad.new_zeros(x.size(0), n * n)
        symmetric.index_copy_(1, both, torch.cat([grad, grad], dim=1))
        return torch.bmm(symmetric.view(-1, n, n), x.to(grad.dtype)), None, None


def dot_interaction(dense: torch.Tensor, sparse: torch.Tensor, upper: torch.Tensor, both: torch.Tensor) -> torch.Tensor:
    """[dense, pairwise dots of (dense, sparse...)]; under autocast the dots run in its dtype."""
    dtype = _compute_dtype(dense)
    if dense.dtype == dtype and native.usable(dense, sparse := sparse.to(dtype)):
        return native.NativeDotInteraction.apply(dense, sparse)
    combined = torch.cat((dense.unsqueeze(1), sparse.to(dense.dtype)), dim=1).to(dtype)
    dots = _PairwiseDots.apply(combined, upper, both)
    return torch.cat((dense, dots.to(dense.dtype)), dim=1)


torch.fx.wrap("dot_interaction")  # a leaf for the pipeline's symbolic trace


def _compute_dtype(dense: torch.Tensor) -> torch.dtype:
    device_type = dense.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else dense.dtype


def dot_interaction_of_pooled(dense: torch.Tensor, pooled: KeyedTensor, names: list[str], dim: int,
                              upper: torch.Tensor, both: torch.Tensor) -> torch.Tensor:
    """``dot_interaction`` of the pooled embeddings taken in ``names`` order: the CPU kernel reads
    them where they lie (after two ranks' all-to-all, in the plan's order); otherwise they are
    stacked in that order first."""
    by_key = pooled_in_key_order(pooled, names, len(names), dim) if native.SWITCH.enabled() else None
    if by_key is not None and dense.dtype == _compute_dtype(dense):
        values, order = by_key
        if native.usable(dense, values := values.to(dense.dtype)):
            return native.NativeDotInteraction.apply(dense, values, order)
    return dot_interaction(dense, stack_pooled(pooled, names, len(names), dim), upper, both)


torch.fx.wrap("dot_interaction_of_pooled")


class SymmetricInteractionArch(InteractionArch):
    """torchrec's ``InteractionArch`` (same outputs, no parameters) with the symmetric backward."""

    def __init__(self, num_sparse_features: int, device: torch.device | str | None = None) -> None:
        super().__init__(num_sparse_features)
        # the pairs in torchrec's order (its triu_indices buffer), on the dense part's device
        device = torch.device(device or "cpu")
        upper, both = _pair_positions(self.triu_indices.to(device), num_sparse_features + 1)
        self.register_buffer("pair_upper", upper, persistent=False)
        self.register_buffer("pair_both", both, persistent=False)

    def forward(self, dense_features: torch.Tensor, sparse_features: torch.Tensor) -> torch.Tensor:
        if self.F <= 0:
            return dense_features
        return dot_interaction(dense_features, sparse_features, self.pair_upper, self.pair_both)

    def forward_pooled(self, dense_features: torch.Tensor, pooled: KeyedTensor, names: list[str], dim: int) -> torch.Tensor:
        """The same, from the collection's pooled output and the feature names in the model's order."""
        return dot_interaction_of_pooled(dense_features, pooled, names, dim, self.pair_upper, self.pair_both)
