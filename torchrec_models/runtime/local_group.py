"""A process group for CPU ranks on one host: the step's collectives through shared memory.

The collectives a sharded step repeats (the embeddings' all-to-all, or for row-wise tables their
reduce-scatter and its all-gather backward, and DDP's gradient all-reduce) skip the loopback TCP
stack; everything else (broadcasts, barriers, object gathers, other reductions) goes to a gloo
group underneath. A collective copies this rank's payload into its slot when issued and the
peers' parts out when waited on, so compute between the two overlaps the peers' arrival. Sums
are taken in rank order: an all-reduce leaves the same bits on every rank, and for two ranks
every sum is the one gloo produces.
"""
from __future__ import annotations

import itertools
import weakref
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import _create_work_from_future

from torchrec_models.config import ConfigError
from torchrec_models.runtime import shm_transport

BACKEND = "torchrec_models_shm"
_DIR_KEY = "shm_dir"
_LIVE: "weakref.WeakSet[LocalShmGroup]" = weakref.WeakSet()


class _PostedWork(dist.Work):
    """A collective whose peers' parts are copied out on ``wait``."""

    def __init__(self, transport: shm_transport.ShmTransport, pending: shm_transport.Pending,
                 output: torch.Tensor) -> None:
        super().__init__()
        self._transport, self._pending, self._output = transport, pending, output

    def wait(self, timeout: timedelta | None = None) -> bool:
        self._transport.complete(self._pending)
        return True

    def is_completed(self) -> bool:
        return self._pending.done

    def get_future(self) -> torch.futures.Future:
        self.wait()
        future: torch.futures.Future = torch.futures.Future()
        future.set_result([self._output])
        return future


def _done(tensors: list[torch.Tensor]) -> dist.Work:
    future: torch.futures.Future = torch.futures.Future()
    future.set_result(tensors)
    return _create_work_from_future(future)


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


class LocalShmGroup(dist.ProcessGroup):
    """gloo for everything, except all-to-all, all-gather and the sum all-reduce and reduce-scatter
    of CPU tensors: shared memory."""

    def __init__(self, store: dist.Store, rank: int, size: int, timeout: timedelta) -> None:
        super().__init__(rank, size)
        self._gloo = dist.ProcessGroupGloo(dist.PrefixStore("gloo", store), rank, size, timeout)
        if rank == 0:
            path = shm_transport.make_shared_dir(size)
            store.set(_DIR_KEY, path)
        path = store.get(_DIR_KEY).decode()
        self._sum_buffer = torch.empty(0, dtype=torch.uint8)
        try:
            self._transport = shm_transport.ShmTransport(path, rank, size, timeout.total_seconds())
            self._gloo.barrier().wait()  # every rank's slots and pipes exist
            self._transport.open_peers()
            self._gloo.barrier().wait()  # every rank holds what it needs open
        finally:  # the names can go, also when setting up failed
            if rank == 0:
                shm_transport.remove_shared_dir(path)
        _LIVE.add(self)

    def getBackendName(self) -> str:
        return BACKEND

    def _get_backend_name(self) -> str:
        """What torch's and torchrec's CPU checks ask (e.g. a ShardedTensor with no shard on this
        rank places itself on the CPU only for a "gloo" group): this group keeps gloo's contract."""
        return "gloo"

    def alltoall_base(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        if not _shm_eligible(output, input):
            return self._gloo.alltoall_base(output, input, output_split_sizes, input_split_sizes,
                                            opts or dist.AllToAllOptions())
        world = self.size()
        out_rows = list(output_split_sizes) or [output.size(0) // world] * world
        in_rows = list(input_split_sizes) or [input.size(0) // world] * world
        out_row = _row_bytes(output)
        in_row = _row_bytes(input)
        src, dst = _as_bytes(input), _as_bytes(output)
        in_starts = starts(in_rows, in_row)
        out_starts = starts(out_rows, out_row)
        rank = self.rank()

        def fill(slot: torch.Tensor) -> dict[int, tuple[int, int]]:
            parts = {}
            for peer in self._transport.peers:
                start, length = in_starts[peer], in_rows[peer] * in_row
                slot[start:start + length].copy_(src[start:start + length])
                parts[peer] = (start, length)
            return parts

        def take(peer: int, part: torch.Tensor) -> None:
            dst[out_starts[peer]:out_starts[peer] + part.numel()].copy_(part)

        own = out_rows[rank] * out_row
        dst[out_starts[rank]:out_starts[rank] + own].copy_(src[in_starts[rank]:in_starts[rank] + own])
        expected = {peer: out_rows[peer] * out_row for peer in self._transport.peers}
        pending = self.post(fill, src.numel(), take, expected)
        return _PostedWork(self._transport, pending, output)

    def allreduce(self, tensors, opts=None):
        opts = opts or dist.AllreduceOptions()
        if len(tensors) != 1 or opts.reduceOp != dist.ReduceOp.SUM or not _shm_eligible(tensors[0]):
            return self._gloo.allreduce(tensors, opts)
        tensor = tensors[0]
        data = _as_bytes(tensor)
        nbytes = data.numel()

        def fill(slot: torch.Tensor) -> dict[int, tuple[int, int]]:
            slot[:nbytes].copy_(data)
            return {peer: (0, nbytes) for peer in self._transport.peers}

        views = {self.rank(): tensor}

        def take(peer: int, part: torch.Tensor) -> None:
            views[peer] = part.view(tensor.dtype).view(tensor.shape)
            if len(views) < self.size():
                return
            if self.size() == 2:  # a + b == b + a: both ranks add in place
                tensor.add_(views[peer])
                return
            total = self._scratch(tensor)
            _sum_in_rank_order([views[r] for r in range(self.size())], total)
            tensor.copy_(total)

        pending = self.post(fill, nbytes, take, {peer: nbytes for peer in self._transport.peers})
        self._transport.complete(pending)
        return _done([tensor])

    def peers(self) -> list[int]:
        return self._transport.peers

    def post(self, fill: Callable[[torch.Tensor], dict[int, tuple[int, int]]], nbytes: int,
             take: Callable[[int, torch.Tensor], None], expected: dict[int, int]) -> shm_transport.Pending:
        """Posts an exchange: ``fill(slot)`` writes this rank's parts into ``nbytes`` of its slot
        and returns, per peer, the (offset, length) that peer reads; once the peers' messages are
        in, ``take(peer, part)`` gets each peer's part for this rank, which must be
        ``expected[peer]`` bytes long. Completed, in issue order, by ``complete``."""
        rank = self.rank()

        def finish(parts: dict[int, tuple[int, int]]) -> None:
            for peer, (start, length) in parts.items():
                if length != expected[peer]:
                    raise RuntimeError(f"shared-memory exchange: rank {peer} sent {length} bytes, "
                                       f"rank {rank} expected {expected[peer]}")
                take(peer, self._transport.peer_bytes(peer, pending.seq, start + length)[start:start + length])

        pending = self._transport.post(fill, nbytes, finish)
        return pending

    def complete(self, pending: shm_transport.Pending) -> None:
        self._transport.complete(pending)

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        """A reused buffer for ordered sums (fresh allocations page-fault on every call)."""
        nbytes = like.numel() * like.element_size()
        if self._sum_buffer.numel() < nbytes:
            self._sum_buffer = torch.empty(nbytes, dtype=torch.uint8)
        return self._sum_buffer[:nbytes].view(like.dtype).view(like.shape)

    def blocked_seconds(self) -> float:
        """Time this rank has waited for peers' parts in this group's collectives."""
        return self._transport.blocked_s

    def shutdown(self) -> None:
        _LIVE.discard(self)
        self._transport.close()

    # the single-tensor gathers, under the names the Python API calls: shared memory for CPU tensors
    def all_gather_single(self, output, input, opts=None):
        if not _shm_eligible(output, input) or output.numel() != input.numel() * self.size():
            return self._gloo._allgather_base(output, input, opts or dist.AllgatherOptions())
        src, dst, nbytes = _as_bytes(input), _as_bytes(output), input.numel() * input.element_size()

        def fill(slot: torch.Tensor) -> dict[int, tuple[int, int]]:
            slot[:nbytes].copy_(src)
            return {peer: (0, nbytes) for peer in self._transport.peers}

        def take(peer: int, part: torch.Tensor) -> None:
            dst[peer * nbytes:(peer + 1) * nbytes].copy_(part)

        dst[self.rank() * nbytes:(self.rank() + 1) * nbytes].copy_(src)
        pending = self.post(fill, nbytes, take, {peer: nbytes for peer in self._transport.peers})
        return _PostedWork(self._transport, pending, output)

    def reduce_scatter_single(self, output, input, opts=None):
        opts = opts or dist.ReduceScatterOptions()
        if opts.reduceOp != dist.ReduceOp.SUM or not _shm_eligible(output, input) or self.size() == 1 \
                or input.numel() != output.numel() * self.size():
            return self._gloo._reduce_scatter_base(output, input, opts)
        src, nbytes = _as_bytes(input), output.numel() * output.element_size()
        own = input.reshape(self.size(), -1)[self.rank()].view(output.shape)
        parts = {self.rank(): own}

        def fill(slot: torch.Tensor) -> dict[int, tuple[int, int]]:
            for peer in self._transport.peers:
                slot[peer * nbytes:(peer + 1) * nbytes].copy_(src[peer * nbytes:(peer + 1) * nbytes])
            return {peer: (peer * nbytes, nbytes) for peer in self._transport.peers}

        def take(peer: int, part: torch.Tensor) -> None:
            parts[peer] = part.view(output.dtype).view(output.shape)
            if len(parts) == self.size():
                _sum_in_rank_order([parts[r] for r in range(self.size())], output)

        pending = self.post(fill, src.numel(), take, {peer: nbytes for peer in self._transport.peers})
        return _PostedWork(self._transport, pending, output)

    def all_gather_single_coalesced(self, outputs, inputs, opts=None):
        return _last(self.all_gather_single(o, i, opts) for o, i in zip(outputs, inputs, strict=True))

    def reduce_scatter_single_coalesced(self, outputs, inputs, opts=None):
        return _last(self.reduce_scatter_single(o, i, opts) for o, i in zip(outputs, inputs, strict=True))

    allgather_into_tensor_coalesced = all_gather_single_coalesced
    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced


def _delegate(name: str):
    def call(self, *args, **kwargs):
        return getattr(self._gloo, name)(*args, **kwargs)
    call.__name__ = name
    return call


for _name in ("allgather", "allgather_coalesced", "allreduce_coalesced", "alltoall", "barrier", "broadcast",
              "gather", "reduce", "reduce_scatter", "scatter", "send", "recv", "recv_anysource"):
    setattr(LocalShmGroup, _name, _delegate(_name))


def _last(works) -> dist.Work:
    """Waits on all but the last of a sequence of works and returns the last."""
    works = list(works)
    for work in works[:-1]:
        work.wait()
    return works[-1]


def _sum_in_rank_order(parts: list[torch.Tensor], out: torch.Tensor) -> None:
    """``out`` = parts[0] + parts[1] + ..., added in that order (``out`` may not alias any part)."""
    torch.add(parts[0], parts[1], out=out)
    for part in parts[2:]:
        out += part


def _shm_eligible(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.is_contiguous() and not t.is_sparse for t in tensors)


def _row_bytes(tensor: torch.Tensor) -> int:
    rows = tensor.size(0) if tensor.dim() else 1
    return tensor.numel() * tensor.element_size() // max(rows, 1)


def starts(sizes: list[int], unit: int = 1) -> list[int]:
    """Where each of consecutive blocks of ``sizes`` (times ``unit``) begins."""
    return [unit * at for at in itertools.accumulate([0, *sizes[:-1]])] if sizes else []


def _create(store: dist.Store, rank: int, size: int, timeout: timedelta) -> LocalShmGroup:
    return LocalShmGroup(store, rank, size, timeout)


def register() -> None:
    """Makes ``dist.new_group(backend=BACKEND)`` available (idempotent)."""
    if BACKEND.upper() not in dist.Backend._plugins:
        dist.Backend.register_backend(BACKEND, _create, devices=["cpu"])


def blocked_seconds() -> float | None:
    """Time this process has waited on peers in its shared-memory groups (None: it has none)."""
    groups = list(_LIVE)
    return sum(g.blocked_seconds() for g in groups) if groups else None


def new_local_group() -> dist.ProcessGroup:
    """A group of all ranks over shared memory; every rank must be on this host."""
    register()
    return dist.new_group(backend=BACKEND)


def training_group(transport: str, device_type: str, world_size: int, local_world_size: int) -> dist.ProcessGroup:
    """The group a sharded model's collectives run in: shared memory for CPU ranks on one host
    (``sharding.cpu_transport`` shm, or auto), else the default group."""
    if device_type != "cpu" or world_size == 1 or transport == "gloo":
        return dist.group.WORLD
    if local_world_size != world_size:
        if transport == "shm":
            raise ConfigError("sharding.cpu_transport",
                              f"shm needs every rank on one host ({local_world_size} of {world_size} are here)")
        return dist.group.WORLD
    return new_local_group()
