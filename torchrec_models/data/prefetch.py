"""Batches made in a background thread while the step that reads them trains.

Making a batch (the synthetic generator's hashing and gathers, or a file reader's parsing) is
host work that a training step does not overlap: on the CPU it runs between steps on the trainer's
thread. A producer thread keeps ``depth`` batches ready instead, using whatever core time the step
leaves idle (its single-threaded stretches, a rank's waits in an all-to-all). The batches and their
order are the same; an error raised while making one is raised, unchanged, where it is read.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator, TypeVar

import torch

T = TypeVar("T")
_DONE = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """``items`` made ``depth`` ahead in a daemon thread (``depth`` 0: ``items`` as they are)."""
    if depth <= 0:
        yield from items
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        torch.set_num_threads(1)  # one core's worth: the step's own threads keep theirs
        try:
            for item in items:
                if not _put(ready, item, stop):
                    return
            _put(ready, _DONE, stop)
        except BaseException as err:  # handed to the reader, which raises it
            _put(ready, _Failed(err), stop)

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def _put(ready: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Waits for room unless the reader has gone; False if it has."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
