"""The pooled embeddings' all-to-all for CPU ranks on one host, moved in the layouts the step uses.

torchrec's table-wise all-to-all copies the pooled embeddings into a second buffer before sending,
concatenates the parts it receives along the feature dimension, splits and concatenates the
gradient into per-rank blocks before sending it back, and divides the received gradient by the
world size in a pass of its own. Over the shared-memory group every one of those can ride on the
copy that moves the bytes anyway: a peer's rows go from the pooled output straight into this rank's
slot, a peer's block goes straight into its columns of the result, the gradient's columns go
straight into the slot, and the received gradient is divided as it is copied out. The values are
torchrec's bit for bit (same copies, the same division), in about half its passes over the data
(six a step against eleven).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.autograd import Function
from torchrec.distributed import comm_ops
from torchrec.distributed.dist_data import PooledEmbeddingsAwaitable
from torchrec.distributed.embedding_sharding import EmbeddingShardingContext
from torchrec.distributed.sharding.tw_sharding import TwPooledEmbeddingDist
from torchrec.distributed.types import Awaitable

from torchrec_models.runtime.local_group import LocalShmGroup, starts


class _Layout:
    """Which rows of the pooled output each rank receives and which columns of the result each
    rank's tables fill."""

    def __init__(self, rank: int, dim_sum_per_rank: list[int], batch_size_per_rank: list[int]) -> None:
        self.rank = rank
        self.dims = list(dim_sum_per_rank)
        self.batches = list(batch_size_per_rank)
        self.col_starts = starts(self.dims)
        self.row_starts = starts(self.batches)

    def columns(self, matrix: torch.Tensor, rank: int) -> torch.Tensor:
        return matrix[:, self.col_starts[rank]:self.col_starts[rank] + self.dims[rank]]

    def rows(self, matrix: torch.Tensor, rank: int) -> torch.Tensor:
        return matrix[self.row_starts[rank]:self.row_starts[rank] + self.batches[rank]]


def _as_matrix(part: torch.Tensor, dtype: torch.dtype, rows: int, cols: int) -> torch.Tensor:
    """A peer's bytes viewed as its [rows, cols] block."""
    return part.view(dtype).view(rows, cols)


class _Request(Awaitable[torch.Tensor]):
    """One all-to-all of pooled embeddings: posted forward, completed on ``wait``; its backward
    runs the other way (posted by the wait's backward, completed by the post's backward)."""

    def __init__(self, group: LocalShmGroup, layout: _Layout, divide: bool) -> None:
        super().__init__()
        self.group, self.layout, self.divide = group, layout, divide
        self.pending = None
        self.result: torch.Tensor | None = None
        self.link: torch.Tensor | None = None  # ties the wait to the post in the autograd graph

    def _wait_impl(self) -> torch.Tensor:
        link, self.link = self.link, None  # the link's graph node refers back to this request
        return _Wait.apply(self, link)

    def post_forward(self, pooled: torch.Tensor) -> None:
        """Sends each peer its rows of this rank's pooled output; fills this rank's own columns."""
        lay, pooled = self.layout, pooled.contiguous()
        width = pooled.size(1)
        result = pooled.new_empty(lay.batches[lay.rank], sum(lay.dims))
        lay.columns(result, lay.rank).copy_(lay.rows(pooled, lay.rank))
        row_bytes = width * pooled.element_size()

        def fill(slot: torch.Tensor) -> dict[int, tuple[int, int]]:
            parts = {}
            for peer in self.group.peers():
                start, length = lay.row_starts[peer] * row_bytes, lay.batches[peer] * row_bytes
                _as_matrix(slot[start:start + length], pooled.dtype, lay.batches[peer], width).copy_(
                    lay.rows(pooled, peer))
                parts[peer] = (start, length)
            return parts

        def take(peer: int, part: torch.Tensor) -> None:
            block = _as_matrix(part, result.dtype, lay.batches[lay.rank], lay.dims[peer])
            lay.columns(result, peer).copy_(block)

        self.result = result
        expected = {peer: lay.batches[lay.rank] * lay.dims[peer] * result.element_size() for peer in self.group.peers()}
        self.pending = self.group.post(fill, pooled.numel() * pooled.element_size(), take, expected)

    def post_backward(self, grad: torch.Tensor) -> None:
        """Sends each peer the gradient of its columns; its rows of the pooled output's gradient
        come back divided by the world size when torchrec divides them."""
        lay = self.layout
        mine = lay.batches[lay.rank]
        grad_pooled = grad.new_empty(sum(lay.batches), lay.dims[lay.rank])
        self._store(lay.rows(grad_pooled, lay.rank), lay.columns(grad, lay.rank))

        def fill(slot: torch.Tensor) -> dict[int, tuple[int, int]]:
            parts = {}
            for peer in self.group.peers():
                start = mine * lay.col_starts[peer] * grad.element_size()  # blocks in rank order
                length = mine * lay.dims[peer] * grad.element_size()
                _as_matrix(slot[start:start + length], grad.dtype, mine, lay.dims[peer]).copy_(
                    lay.columns(grad, peer))
                parts[peer] = (start, length)
            return parts

        def take(peer: int, part: torch.Tensor) -> None:
            block = _as_matrix(part, grad_pooled.dtype, lay.batches[peer], lay.dims[lay.rank])
            self._store(lay.rows(grad_pooled, peer), block)

        self.result = grad_pooled
        nbytes = mine * sum(lay.dims) * grad.element_size()
        expected = {peer: lay.batches[peer] * lay.dims[lay.rank] * grad.element_size() for peer in self.group.peers()}
        self.pending = self.group.post(fill, nbytes, take, expected)

    def _store(self, out: torch.Tensor, block: torch.Tensor) -> None:
        if self.divide:
            torch.div(block, len(self.layout.dims), out=out)
        else:
            out.copy_(block)

    def complete(self) -> torch.Tensor:
        self.group.complete(self.pending)
        result, self.result, self.pending = self.result, None, None
        assert result is not None
        return result


class _Post(Function):
    """Forward: posts the pooled output's exchange. Backward: completes the gradient's."""

    @staticmethod
    def forward(ctx, request: _Request, pooled: torch.Tensor) -> torch.Tensor:
        request.post_forward(pooled)
        ctx.request = request
        return torch.zeros(1)

    @staticmethod
    def backward(ctx, *unused):
        return None, ctx.request.complete()


class _Wait(Function):
    """Forward: completes the pooled output's exchange. Backward: posts the gradient's."""

    @staticmethod
    def forward(ctx, request: _Request, link: torch.Tensor) -> torch.Tensor:
        ctx.request = request
        return request.complete()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.request.post_backward(grad.contiguous())
        return None, torch.zeros(1)


class ShmPooledAllToAll(nn.Module):
    """In place of torchrec's ``PooledEmbeddingsAllToAll`` for a shared-memory group without a
    quantized codec: same call, same awaitable, same values."""

    def __init__(self, group: LocalShmGroup, dim_sum_per_rank: list[int],
                 callbacks: list[Callable[[torch.Tensor], torch.Tensor]] | None = None) -> None:
        super().__init__()
        self._pg = group
        self._dim_sum_per_rank = list(dim_sum_per_rank)
        self._callbacks = list(callbacks or [])

    def forward(self, local_embs: torch.Tensor, batch_size_per_rank: list[int] | None = None
                ) -> PooledEmbeddingsAwaitable:
        world = self._pg.size()
        if not batch_size_per_rank:
            if local_embs.size(0) % world:
                raise ValueError(f"{world} ranks do not divide a global batch of {local_embs.size(0)}")
            batch_size_per_rank = [local_embs.size(0) // world] * world
        layout = _Layout(self._pg.rank(), self._dim_sum_per_rank, batch_size_per_rank)
        request = _Request(self._pg, layout, comm_ops.get_gradient_division())
        request.link = _Post.apply(request, local_embs)
        awaitable = PooledEmbeddingsAwaitable(tensor_awaitable=request)
        awaitable.callbacks.extend(self._callbacks)
        return awaitable

    @property
    def callbacks(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        return self._callbacks


def _output_dists(model: nn.Module) -> list[nn.Module]:
    """The output dists of ``model``'s sharded modules (torchrec keeps them in plain lists, out of
    ``modules()``), and any registered as submodules."""
    found = []
    for module in model.modules():
        found.append(module)
        found.extend(getattr(module, "_output_dists", None) or [])
    return found


def install(model: nn.Module, choice: str) -> int:
    """Gives every table-wise (and column-wise) output dist of ``model`` that runs over the
    shared-memory group without a codec this module's all-to-all; returns how many it changed."""
    if choice == "torchrec" or comm_ops.get_use_sync_collectives():
        return 0
    changed = 0
    for module in _output_dists(model):
        if isinstance(module, TwPooledEmbeddingDist) and isinstance(module._pg, LocalShmGroup) \
                and module._codecs is None and module._dist is None:
            # torchrec's own modules first, so batches of variable size per feature keep its path
            module._create_output_dist_module(EmbeddingShardingContext(variable_batch_per_feature=True))
            module._dist = ShmPooledAllToAll(module._pg, module._dim_sum_per_rank, module._callbacks)
            changed += 1
    return changed


def describe(model: nn.Module) -> str:
    """Which all-to-all carries ``model``'s pooled embeddings, for the run's summary: "none" when
    no table is table-wise or column-wise (row-wise tables reduce-scatter instead)."""
    dists = [m for m in _output_dists(model) if isinstance(m, TwPooledEmbeddingDist)]
    if any(isinstance(d._dist, ShmPooledAllToAll) for d in dists):
        return "shm_direct"
    return "torchrec" if dists else "none"
