"""Touch host memory once before a suite, so that its rows do not pay a VM's first-touch cost.

On a virtual machine whose host backs guest memory only when the guest first writes it, every
page a process maps for the first time since boot costs a host fault on top of the guest's own
(seen on a 2-core Firecracker VM: 18 GB filled in 24.6 s the first time, 7.5 s the second). Rows
measured early in such a VM's life then move with whatever memory they happen to be handed.
"""
from __future__ import annotations

import time

import torch

CHUNK_BYTES = 1 << 30


def touch_host_memory(gib: float) -> dict[str, float]:
    """Fill ``gib`` GiB in 1 GiB chunks held together, then free them; the rate tells a cold host
    (well under the machine's copy bandwidth) from a warm one."""
    total = int(gib * (1 << 30))
    held: list[torch.Tensor] = []
    start = time.perf_counter()
    left = total
    while left > 0:
        size = min(CHUNK_BYTES, left)
        held.append(torch.ones(size, dtype=torch.uint8))
        left -= size
    seconds = time.perf_counter() - start
    del held
    return {"gib": gib, "seconds": seconds, "fill_gbps": total / seconds / 1e9 if seconds > 0 else 0.0}
