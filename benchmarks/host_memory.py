"""How fast a process can fill memory it has just mapped: the price of every fresh page.

On a virtual machine whose host backs guest memory only when it is first written, and takes
freed guest pages back within seconds, each page a process maps costs a host fault on top of the
guest's own (seen on a 2-core Firecracker VM: 18 GB filled at 0.6-0.7 GB/s, and at 2.4 GB/s
when filled again at once). Rows whose steps map fresh buffers then move with it, which is what
``train.cpu_keep_freed_memory`` avoids; the suite records the rate beside its other ceilings.
"""
from __future__ import annotations

import time

import torch


def fresh_page_fill_gbps(gib: float = 1.0) -> float:
    """GB/s at which ``gib`` GiB of newly mapped memory is written once (then freed)."""
    size = int(gib * (1 << 30))
    start = time.perf_counter()
    filled = torch.ones(size, dtype=torch.uint8)
    seconds = time.perf_counter() - start
    del filled
    return size / seconds / 1e9
