"""train.cpu_keep_freed_memory: freed host memory kept for reuse (no page faults for each step's buffers again)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from torchrec_models.config import load_config
from torchrec_models.runtime import host_memory

from conftest import TINY

# 48 MB blocks: above the largest threshold glibc's own adjustment reaches (32 MB), so by default
# each one is a fresh mmap whose pages fault in again.
FAULTS_OF_40_BLOCKS = """
import resource, sys, torch
from torchrec_models.runtime.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.ones(12 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    torch.ones(12 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS_OF_40_BLOCKS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_reused_without_faulting_in_again():
    pages_per_block = (48 << 20) // 4096
    assert _faults("default") > 35 * pages_per_block  # the premise: by default the blocks fault in every time
    # kept: only the first few fault in (1-4 blocks seen, as the heap settles), whatever the count
    assert _faults("keep") < 10 * pages_per_block


def test_the_setting_is_applied_only_to_cpu_runs_that_ask(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    keep = load_config(TINY).train  # on by default
    host_memory.apply(keep, "cuda")
    host_memory.apply(load_config(TINY, ["train.cpu_keep_freed_memory=false"]).train, "cpu")
    assert calls == []
    host_memory.apply(keep, "cpu")
    assert calls == [1]
