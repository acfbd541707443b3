"""Plan-independent table init: any block equals the same block of the whole table."""
from __future__ import annotations

import math

import torch

from torchrec_models.sharding.table_init import fill_block, table_values


def test_blocks_match_the_whole_table() -> None:
    whole = table_values(seed=3, table=1, num_rows=100, rows=range(100), cols=range(16))
    block = torch.empty(30, 8)
    fill_block(block, seed=3, table=1, num_rows=100, row0=50, col0=8)
    assert torch.equal(block, whole[50:80, 8:16])


def test_bound_and_distinct_tables() -> None:
    a = table_values(0, 0, 400, range(400), range(8))
    b = table_values(0, 1, 400, range(400), range(8))
    assert float(a.abs().max()) <= math.sqrt(1 / 400)
    assert float(a.std()) > 0.5 * math.sqrt(1 / 400) / math.sqrt(3)
    assert not torch.equal(a, b)
