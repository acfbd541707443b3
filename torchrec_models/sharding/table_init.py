"""Plan-independent table initialization.

torchrec initializes each shard where it lives, so the same seed would give different tables
under different plans or world sizes. Here every element is a pure function of
(seed, table, row, column), written into whatever shards this rank holds; no rank ever
materializes a whole table, so this scales to tables of any size.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from torchrec_models.data.hashing import uniform

_INIT_STREAM = 7
_ROWS_PER_CHUNK = 1 << 13


def table_values(seed: int, table: int, num_rows: int, rows: range, cols: range,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform(-1/sqrt(num_rows), 1/sqrt(num_rows)) values of one block of one table (torchrec's default)."""
    bound = math.sqrt(1.0 / num_rows)
    r = torch.arange(rows.start, rows.stop, dtype=torch.int64, device=device)[:, None]
    c = torch.arange(cols.start, cols.stop, dtype=torch.int64, device=device)[None, :]
    return ((uniform(seed, _INIT_STREAM, table, r, c) * 2.0 - 1.0) * bound).float()


def fill_block(out: torch.Tensor, seed: int, table: int, num_rows: int, row0: int, col0: int) -> None:
    """Writes the values of the block at (row0, col0) into ``out``, chunk by chunk."""
    rows, cols = out.shape
    for start in range(0, rows, _ROWS_PER_CHUNK):
        stop = min(rows, start + _ROWS_PER_CHUNK)
        block = table_values(seed, table, num_rows, range(row0 + start, row0 + stop), range(col0, col0 + cols),
                             device=out.device)
        out[start:stop].copy_(block.to(dtype=out.dtype))


@torch.no_grad()
def init_tables(model: nn.Module, table_names: list[str], seed: int) -> int:
    """Overwrites every table shard held by this rank; returns how many blocks were written."""
    index = {name: i for i, name in enumerate(table_names)}
    written = 0
    for key, value in model.state_dict().items():
        table = _table_of(key)
        if table is None or table not in index:
            continue
        num_rows = _global_rows(value)
        for tensor, (row0, col0) in _local_blocks(value):
            fill_block(tensor, seed, index[table], num_rows, row0, col0)
            written += 1
    return written


def _table_of(key: str) -> str | None:
    parts = key.split(".")
    if len(parts) >= 3 and parts[-1] == "weight" and parts[-3] == "embedding_bags":
        return parts[-2]
    return None


def _global_rows(value: torch.Tensor) -> int:
    return int(value.size(0))


def _local_blocks(value: torch.Tensor):
    """(local tensor, (row offset, column offset)) for each piece of the table on this rank."""
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            offsets = shard.metadata.shard_offsets
            yield shard.tensor, (int(offsets[0]), int(offsets[1]))
        return
    local = getattr(value, "to_local", None)
    if local is not None:  # DTensor
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        _, offset = compute_local_shape_and_global_offset(value.shape, value.device_mesh, value.placements)
        yield value.to_local(), (int(offset[0]), int(offset[1]))
        return
    yield value, (0, 0)
