"""Counter-based pseudo-randomness: values that are a pure function of integer coordinates.

Any slice of a global batch can then be generated on its own, bit-identical to the same
rows of the whole batch, which is what lets each rank make exactly its slice.
All arithmetic stays below 2**63 in int64, so it is exact on every device.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """(h * c) mod 2**32 for h < 2**32, split so no product leaves int64."""
    high = ((h * (c >> 16)) & 0xFFFF) << 16
    return (high + h * (c & 0xFFFF)) & MASK32


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer: an invertible mixing of 32-bit values."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _fmix32_int(h: int) -> int:
    """fmix32 on a Python int (same arithmetic as the tensor version)."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def hash_coords(*coords: torch.Tensor | int) -> torch.Tensor:
    """A 32-bit hash of broadcastable integer coordinates (each reduced mod 2**32).

    Leading plain ints are folded in Python first, so the tensor work is one round per
    tensor coordinate; the result is the same as folding everything as tensors.
    """
    h: torch.Tensor | int | None = None
    for c in coords:
        if isinstance(c, int) and (h is None or isinstance(h, int)):
            c &= MASK32
            h = _fmix32_int(c ^ 0x5BD1E995) if h is None else _fmix32_int(((h * 0x9E3779B1) + c) & MASK32)
            continue
        c = torch.as_tensor(c, dtype=torch.int64) & MASK32
        if h is None:
            h = fmix32(c ^ 0x5BD1E995)
        elif isinstance(h, int):
            h = fmix32((c + ((h * 0x9E3779B1) & MASK32)) & MASK32)
        else:
            h = fmix32((_mul32(h, 0x9E3779B1) + c) & MASK32)
    assert h is not None
    return torch.as_tensor(h, dtype=torch.int64)


def extend_hash(h: torch.Tensor, *coords: torch.Tensor | int) -> torch.Tensor:
    """Folds more coordinates into hashes: ``extend_hash(hash_coords(a, b), c) == hash_coords(a, b, c)``,
    so a hash of leading coordinates can be computed once and gathered or broadcast before the rest."""
    for c in coords:
        c = torch.as_tensor(c, dtype=torch.int64, device=h.device) & MASK32
        h = fmix32((_mul32(h, 0x9E3779B1) + c) & MASK32)
    return h


def to_uniform(h: torch.Tensor) -> torch.Tensor:
    """Uniform floats in (0, 1), 24-bit resolution, from 32-bit hashes."""
    return ((h >> 8).double() + 0.5) / float(1 << 24)


def uniform(*coords: torch.Tensor | int) -> torch.Tensor:
    """Uniform floats in (0, 1), 24-bit resolution, from the hash of the coordinates."""
    return to_uniform(hash_coords(*coords))
