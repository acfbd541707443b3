"""Bytes between processes on one host through shared memory, with pipes as doorbells.

Each rank owns ``SLOTS`` files in a shared directory (``/dev/shm`` when it has room) and writes a
collective's payload into the next one; a short message down a named pipe tells each peer the
offset and length of its part. Peers map the file and copy their part out. A rank may only
reuse a slot once every peer has finished reading it; ``post`` guarantees that by completing
the rank's own collectives up to two behind first (a peer's message for collective k proves it
had completed k - 2, so slot k mod 4 is free when k is posted).
"""
from __future__ import annotations

import mmap
import os
import select
import shutil
import struct
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

SLOTS = 4
_MESSAGE = struct.Struct("<qqq")  # sequence number, offset, length (bytes)
_EMPTY = torch.empty(0, dtype=torch.uint8)
_GROWTH = 1 << 20  # slot files grow in whole MiB
SHM_ROOT = "/dev/shm"
MIN_SHM_FREE = 1 << 30
DIR_PREFIX = "torchrec_models_shm_"


def make_shared_dir(world_size: int) -> str:
    """A fresh directory for one group's slots, with a named pipe for every ordered rank pair."""
    path = tempfile.mkdtemp(prefix=DIR_PREFIX, dir=_base_dir())
    for src in range(world_size):
        for dst in range(world_size):
            if src != dst:
                os.mkfifo(os.path.join(path, f"bell_{src}_{dst}"), 0o600)
    return path


def _base_dir() -> str | None:
    """``/dev/shm`` when it has room; else the temp directory (a container's /dev/shm is often
    64 MiB), whose files are shared through the page cache all the same."""
    try:
        stat = os.statvfs(SHM_ROOT)
    except OSError:
        return None
    roomy = stat.f_bavail * stat.f_frsize >= MIN_SHM_FREE
    return SHM_ROOT if roomy and os.access(SHM_ROOT, os.W_OK) else None


def remove_shared_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class _SlotMapping:
    """An open slot file and its current mapping as a byte tensor."""

    def __init__(self, path: str, flags: int) -> None:
        self.fd = os.open(path, flags, 0o600)
        self.size = 0
        self.map: mmap.mmap | None = None
        self.bytes: torch.Tensor | None = None

    def _unmap(self) -> None:
        self.bytes = None
        if self.map is not None:
            self.map.close()
            self.map = None

    def close(self) -> None:
        self._unmap()
        os.close(self.fd)


class _PeerSlot(_SlotMapping):
    """A read-only mapping of one peer's slot file, remapped when the peer has grown it."""

    def __init__(self, path: str) -> None:
        super().__init__(path, os.O_RDONLY)

    def view(self, end: int) -> torch.Tensor:
        if end == 0:
            return _EMPTY
        if end > self.size:
            self._unmap()
            self.size = os.fstat(self.fd).st_size
            if end > self.size:
                raise RuntimeError(f"a peer's slot holds {self.size} bytes, {end} announced")
            self.map = mmap.mmap(self.fd, self.size, prot=mmap.PROT_READ)
            with warnings.catch_warnings():  # read-only by design: this rank only copies out
                warnings.simplefilter("ignore", UserWarning)
                self.bytes = torch.frombuffer(memoryview(self.map), dtype=torch.uint8)
        assert self.bytes is not None
        return self.bytes


class _OwnSlot(_SlotMapping):
    """One of this rank's slot files, mapped read-write and grown (never shrunk) on demand."""

    def __init__(self, path: str) -> None:
        super().__init__(path, os.O_RDWR | os.O_CREAT)
        self.path = os.path.dirname(os.path.dirname(path))  # the file system (/dev/shm)

    def view(self, nbytes: int) -> torch.Tensor:
        if nbytes > self.size or self.bytes is None:
            self._unmap()
            size = -(-max(nbytes, 1) // _GROWTH) * _GROWTH
            try:  # reserve the pages now: a full tmpfs fails here, not with SIGBUS mid-copy
                os.posix_fallocate(self.fd, 0, size)
            except OSError as exc:
                raise RuntimeError(f"shared memory: no room for {size} bytes in {self.path} ({exc.strerror}); "
                                   "free space there or set sharding.cpu_transport=gloo") from exc
            self.size = size
            self.map = mmap.mmap(self.fd, self.size)
            self.bytes = torch.frombuffer(memoryview(self.map), dtype=torch.uint8)
        assert self.bytes is not None
        return self.bytes


def _finished(parts: dict[int, tuple[int, int]]) -> None:
    raise RuntimeError("collective already finished")


@dataclass
class Pending:
    """A posted collective; ``finish`` copies the peers' parts out once their messages arrived."""

    seq: int
    finish: Callable[[dict[int, tuple[int, int]]], None]
    done: bool = False
    error: BaseException | None = field(default=None)


class ShmTransport:
    """Posts and completes collectives of one group, in the order every rank issues them."""

    def __init__(self, path: str, rank: int, world_size: int, timeout_s: float) -> None:
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.peers = [r for r in range(world_size) if r != rank]
        self._path = path
        self._own = [_OwnSlot(os.path.join(path, f"slot_{rank}_{s}")) for s in range(SLOTS)]
        self._theirs: dict[tuple[int, int], _PeerSlot] = {}
        # O_RDWR: opening a named pipe this way never blocks waiting for the other end
        self._outgoing = {p: os.open(os.path.join(path, f"bell_{rank}_{p}"), os.O_RDWR) for p in self.peers}
        self._incoming = {p: os.open(os.path.join(path, f"bell_{p}_{rank}"), os.O_RDWR) for p in self.peers}
        self._pending: list[Pending] = []
        self._seq = 0
        self._lock = threading.RLock()
        self.blocked_s = 0.0  # time spent waiting for peers' messages, for pace balancing

    def open_peers(self) -> None:
        """Opens the peers' slot files; call once every rank has created its own."""
        self._theirs = {(p, s): _PeerSlot(os.path.join(self._path, f"slot_{p}_{s}"))
                        for p in self.peers for s in range(SLOTS)}

    def post(self, payloads: Callable[[torch.Tensor], dict[int, tuple[int, int]]], nbytes: int,
             finish: Callable[[dict[int, tuple[int, int]]], None]) -> Pending:
        """Writes this rank's payload into its next slot and rings each peer.

        ``payloads(slot_bytes)`` fills the slot and returns, per peer, the (offset, length) that
        peer should read; ``finish(parts)`` later receives, per peer, where its part for this
        rank lies in that peer's slot.
        """
        with self._lock:
            seq = self._seq
            self._complete_through(seq - 2)
            slot = self._own[seq % SLOTS].view(nbytes)
            parts = payloads(slot)
            for peer in self.peers:
                offset, length = parts[peer]
                os.write(self._outgoing[peer], _MESSAGE.pack(seq, offset, length))
            pending = Pending(seq, finish)
            self._pending.append(pending)
            self._seq += 1
            return pending

    def complete(self, pending: Pending) -> None:
        with self._lock:
            self._complete_through(pending.seq)
        if pending.error is not None:
            raise pending.error

    def peer_bytes(self, peer: int, seq: int, end: int) -> torch.Tensor:
        return self._theirs[(peer, seq % SLOTS)].view(end)

    def close(self) -> None:
        with self._lock:
            for slot in [*self._own, *self._theirs.values()]:
                slot.close()
            for fd in [*self._outgoing.values(), *self._incoming.values()]:
                os.close(fd)
            self._pending.clear()

    def _complete_through(self, seq: int) -> None:
        while self._pending and self._pending[0].seq <= seq:
            pending = self._pending.pop(0)
            try:
                pending.finish({p: self._receive(p, pending.seq) for p in self.peers})
            except BaseException as exc:  # surfaced by complete() of this collective
                pending.error = exc
            # the callback holds the collective's tensors and, through its closure, often this
            # Pending: dropping it frees them now rather than at the next cyclic collection
            pending.finish = _finished
            pending.done = True

    def _receive(self, peer: int, seq: int) -> tuple[int, int]:
        fd = self._incoming[peer]
        message = b""
        began = time.perf_counter()
        while len(message) < _MESSAGE.size:
            ready, _, _ = select.select([fd], [], [], self.timeout_s)
            if not ready:
                raise TimeoutError(f"rank {self.rank}: no word from rank {peer} on collective {seq} "
                                   f"within {self.timeout_s:.0f} s")
            message += os.read(fd, _MESSAGE.size - len(message))
        self.blocked_s += time.perf_counter() - began
        got_seq, offset, length = _MESSAGE.unpack(message)
        if got_seq != seq:
            raise RuntimeError(f"rank {self.rank}: rank {peer} sent collective {got_seq}, expected {seq}: "
                               "ranks issued collectives in different orders")
        return offset, length
