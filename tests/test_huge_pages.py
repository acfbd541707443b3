"""train.cpu_huge_pages: the tables' host memory moved into 2 MiB pages, values untouched."""
from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import pytest
import torch

from conftest import TINY
from torchrec_models import runinfo
from torchrec_models.config import load_config
from torchrec_models.runtime import huge_pages
from torchrec_models.runtime.distributed import process_group
from torchrec_models.runtime.launcher import launch_local

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
BIG_TABLES = "model.num_embeddings_per_feature=[40000, 40000, 40000, 40000, 500, 500, 2000, 2000]"


def test_only_whole_huge_pages_inside_a_storage_are_advised() -> None:
    mib2 = huge_pages.HUGE_PAGE
    assert huge_pages.huge_page_span(mib2, 3 * mib2) == (mib2, 3 * mib2)
    assert huge_pages.huge_page_span(mib2 + 64, 3 * mib2) == (2 * mib2, 2 * mib2)  # both ends rounded inwards
    assert huge_pages.huge_page_span(mib2 + 64, mib2) is None  # no whole page inside


def _huge_bytes_around(address: int) -> int:
    """AnonHugePages of the mapping that holds ``address``, from /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "AnonHugePages:":
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no mapping holds {address:#x}")


def _bytes(storage: torch.UntypedStorage) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(storage)


def _tables_before_and_after(enabled: bool) -> dict:
    """What ``huge_pages.apply`` did to a built model's table storages: bytes collapsed, huge
    page bytes in the mapping of each storage's whole pages afterwards, whether every byte of them kept its value."""
    from torchrec_models.sharding import sharded_model

    cfg = load_config(TINY, [BIG_TABLES, f"train.cpu_huge_pages={str(enabled).lower()}"])
    seen = {}
    real_apply = huge_pages.apply

    def observed_apply(model, on, device):
        storages = huge_pages.table_storages(model)
        before = [_bytes(s).clone() for s in storages]
        seen["collapsed"] = real_apply(model, on, device)
        spans = [huge_pages.huge_page_span(s.data_ptr(), s.nbytes()) for s in storages]
        seen["huge"] = [_huge_bytes_around(span[0]) for span in spans if span]  # advising splits the mapping
        seen["unchanged"] = len(storages) > 0 and all(
            torch.equal(b, _bytes(s)) for b, s in zip(before, storages))
        return seen["collapsed"]

    with process_group("cpu") as env:
        huge_pages.apply = observed_apply
        try:
            sharded_model.build_sharded_model(cfg, env)
        finally:
            huge_pages.apply = real_apply
    return seen


def _kernel_collapses_a_fresh_block() -> bool:
    """Whether the kernel hands out 2 MiB pages at all right now (host memory can be too
    fragmented), asked of a fresh 4 MiB mapping outside torch."""
    block = mmap.mmap(-1, 3 * huge_pages.HUGE_PAGE, flags=mmap.MAP_PRIVATE)  # anonymous, private
    first_byte = ctypes.c_char.from_buffer(block)
    start, length = huge_pages.huge_page_span(ctypes.addressof(first_byte), len(block))
    block.write(b"x" * len(block))
    madvise = huge_pages._madvise()
    collapsed = madvise(start, length, huge_pages.MADV_HUGEPAGE) == 0 and \
        madvise(start, length, huge_pages.MADV_COLLAPSE) == 0
    del first_byte
    block.close()
    return collapsed


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages")
def test_the_tables_move_into_huge_pages_with_their_values() -> None:
    on = launch_local(_tables_before_and_after, (True,), 1)[0]
    if on["collapsed"] == 0 and not _kernel_collapses_a_fresh_block():
        pytest.skip("the kernel has no 2 MiB pages to give now (host memory fragmented)")
    assert on["collapsed"] >= 4 * huge_pages.HUGE_PAGE  # the tables share one 10.7 MB storage
    assert sum(on["huge"]) >= on["collapsed"] and on["unchanged"]
    off = launch_local(_tables_before_and_after, (False,), 1)[0]
    assert off["collapsed"] == 0 and off["unchanged"]


def test_cuda_runs_and_runs_that_opt_out_are_left_alone(monkeypatch) -> None:
    monkeypatch.setattr(huge_pages, "back_with_huge_pages", lambda storages: pytest.fail("advised"))
    assert huge_pages.apply(torch.nn.Linear(2, 2), True, "cuda") == 0
    assert huge_pages.apply(torch.nn.Linear(2, 2), False, "cpu") == 0


def test_the_machine_record_names_the_huge_page_mode(tmp_path: Path) -> None:
    sysfs = tmp_path / "enabled"
    sysfs.write_text("always [madvise] never\n")
    assert runinfo.transparent_huge_pages(str(sysfs)) == "madvise"
    assert runinfo.transparent_huge_pages(str(tmp_path / "absent")) is None
    assert "transparent_huge_pages" in runinfo.hardware()
