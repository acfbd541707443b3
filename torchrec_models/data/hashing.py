"""Counter-based pseudo-randomness: values that are a pure function of integer coordinates.

Any slice of a global batch can then be generated on its own, bit-identical to the same
rows of the whole batch, which is what lets each rank make exactly its slice.
The mixing runs on int32 bit patterns (products wrap mod 2**32, as two's complement
arithmetic does on every torch device), half the bytes of int64 and a third of its operations.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF


def _signed32(c: int) -> int:
    """The int32 with the bit pattern of the 32-bit value ``c``."""
    c &= MASK32
    return c - (1 << 32) if c >= 1 << 31 else c


_C1, _C2, _GOLDEN = _signed32(0x85EBCA6B), _signed32(0xC2B2AE35), _signed32(0x9E3779B1)


def _as_bits32(c: torch.Tensor) -> torch.Tensor:
    """int32 tensor with the bit pattern of each value mod 2**32 (int64 -> int32 keeps the low 32 bits)."""
    return c if c.dtype == torch.int32 else c.to(torch.int64).to(torch.int32)


def _fmix32_bits(h: torch.Tensor) -> torch.Tensor:
    """fmix32 on int32 bit patterns: products wrap mod 2**32, shifts are made logical by a mask."""
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * _C1
    h = h ^ ((h >> 13) & 0x7FFFF)
    h = h * _C2
    return h ^ ((h >> 16) & 0xFFFF)


def _unsigned(h: torch.Tensor) -> torch.Tensor:
    return h.to(torch.int64) & MASK32


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer: an invertible mixing of 32-bit values (returned as int64)."""
    return _unsigned(_fmix32_bits(_as_bits32(torch.as_tensor(h))))


def _fmix32_int(h: int) -> int:
    """fmix32 on a Python int (same arithmetic as the tensor version)."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def hash_coords(*coords: torch.Tensor | int) -> torch.Tensor:
    """A 32-bit hash (int64 in [0, 2**32)) of broadcastable integer coordinates, each reduced mod 2**32.

    Leading plain ints are folded in Python first, so the tensor work is one round per
    tensor coordinate; the result is the same as folding everything as tensors.
    """
    h: int | None = None
    for i, c in enumerate(coords):
        if not isinstance(c, int):
            tensor = torch.as_tensor(c)
            if h is None:
                bits = _fmix32_bits(_as_bits32(tensor) ^ _signed32(0x5BD1E995))
            else:
                bits = _fmix32_bits(_as_bits32(tensor) + _signed32(h * 0x9E3779B1))
            return _unsigned(_fold(bits, coords[i + 1:]))
        c &= MASK32
        h = _fmix32_int(c ^ 0x5BD1E995) if h is None else _fmix32_int(((h * 0x9E3779B1) + c) & MASK32)
    assert h is not None
    return torch.tensor(h, dtype=torch.int64)


def _fold(bits: torch.Tensor, coords) -> torch.Tensor:
    """One mixing round per coordinate, on int32 bit patterns."""
    for c in coords:
        c = torch.as_tensor(c, device=bits.device)
        bits = _fmix32_bits(bits * _GOLDEN + _as_bits32(c))
    return bits


def extend_hash(h: torch.Tensor, *coords: torch.Tensor | int) -> torch.Tensor:
    """Folds more coordinates into hashes: ``extend_hash(hash_coords(a, b), c) == hash_coords(a, b, c)``,
    so a hash of leading coordinates can be computed once and gathered or broadcast before the rest."""
    return _unsigned(_fold(_as_bits32(h), coords))


def to_uniform(h: torch.Tensor) -> torch.Tensor:
    """Uniform floats in (0, 1), 24-bit resolution, from 32-bit hashes (int64 values or int32 bit patterns)."""
    return (((h >> 8) & 0xFFFFFF).double() + 0.5) / float(1 << 24)


def uniform_extended(h: torch.Tensor, *coords: torch.Tensor | int) -> torch.Tensor:
    """``to_uniform(extend_hash(h, *coords))`` without widening the hashes to int64 in between."""
    return to_uniform(_fold(_as_bits32(h), coords))


def uniform(*coords: torch.Tensor | int) -> torch.Tensor:
    """Uniform floats in (0, 1), 24-bit resolution, from the hash of the coordinates."""
    return to_uniform(hash_coords(*coords))
