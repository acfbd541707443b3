"""Criteo TSV -> the binary layout of ``torchrec.datasets.criteo.BinaryCriteoUtils``.

Input lines (Kaggle ``train.txt`` or 1TB ``day_N``, optionally gzipped): label, 13 integer
features, 26 categorical features as hex, tab separated, missing values as empty fields.
Each input ``<stem>`` becomes, in the output directory:

- ``<stem>_dense.npy``   float32 [N, 13]: log(1 + max(x, 0)), missing = 0
- ``<stem>_sparse.npy``  int64   [N, 26]: category ids (see ``preprocess``)
- ``<stem>_labels.npy``  int32   [N, 1]

plus ``meta.json`` (files and rows, table sizes, bad lines skipped) and, with a frequency
threshold, ``vocab.npz`` (each feature's frequent raw values). Input is parsed in blocks
of lines with vectorized numpy (memory bounded by the block size), and every output is
written under a temporary name and renamed only when all inputs are done.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from torchrec_models.errors import DataError

LABEL_FIELDS, DENSE_FEATURES, CAT_FEATURES = 1, 13, 26
FIELDS = LABEL_FIELDS + DENSE_FEATURES + CAT_FEATURES
ARRAYS = ("dense", "sparse", "labels")
META, VOCAB = "meta.json", "vocab.npz"
BAD_LINE_MODES = ("error", "skip")

_MAX_INT_DIGITS, _MAX_HEX_DIGITS, _PAD = 18, 16, 20
_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_POW10 = 10 ** np.arange(_MAX_INT_DIGITS + 1, dtype=np.int64)


class CriteoDataError(DataError):
    """Bad input or stored data; the message names the file and the line, row or feature."""


def dense_name(j: int) -> str:
    return f"int_{j}"


def cat_name(j: int) -> str:
    return f"cat_{j}"


def array_path(directory: Path | str, stem: str, array: str) -> Path:
    """``<dir>/<stem>_<dense|sparse|labels>.npy``, the names torchrec's Criteo utilities use."""
    return Path(directory) / f"{stem}_{array}.npy"


def input_stem(path: Path | str) -> str:
    """``train.txt`` -> ``train``, ``day_3.gz`` -> ``day_3``, ``day_3`` -> ``day_3``."""
    name = Path(path).name
    for suffix in (".gz", ".tsv", ".txt"):
        name = name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name
    return name


# ---------------------------------------------------------------- parsing


@dataclass
class ParsedBlock:
    """One block of lines: values of the good lines, and which lines were bad."""

    labels: np.ndarray  # int32 [n_good]
    dense: np.ndarray  # float32 [n_good, 13]
    cats: np.ndarray  # uint64 [n_good, 26], raw hex values, missing = 0
    bad: np.ndarray  # bool [n_lines]


def parse_block(block: bytes) -> ParsedBlock:
    """Parses complete ``\\n``-terminated lines with vectorized numpy, no per-line Python."""
    buf = np.frombuffer(block, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    seps = np.flatnonzero((buf == 9) | (buf == 10))
    last_sep = np.searchsorted(seps, newlines)  # each line's newline, as an index into seps
    fields = np.diff(last_sep, prepend=-1)
    whole = fields == FIELDS
    ends = seps[last_sep[whole, None] - (FIELDS - 1) + np.arange(FIELDS)]  # [n, 40] field ends
    line_starts = np.concatenate(([0], newlines[:-1] + 1))[whole]
    starts = np.concatenate((line_starts[:, None], ends[:, :-1] + 1), axis=1)
    padded = np.concatenate((np.zeros(_PAD, dtype=np.uint8), buf))
    labels, ok_label = _parse_labels(buf, starts[:, 0], ends[:, 0])
    dense, ok_dense = _parse_grid(padded, starts[:, 1:14], ends[:, 1:14], _int_fast, _int_general)
    cats, ok_cats = _parse_grid(padded, starts[:, 14:], ends[:, 14:], _hex_fast, _hex_general)
    ok = ok_label & ok_dense & ok_cats
    bad = ~whole
    bad[np.flatnonzero(whole)[~ok]] = True
    transformed = np.log1p(np.maximum(dense[ok], 0).astype(np.float64)).astype(np.float32)
    return ParsedBlock(labels[ok], transformed, cats[ok].astype(np.uint64), bad)


def _parse_labels(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first = buf[np.minimum(starts, len(buf) - 1)]
    ok = (ends - starts == 1) & ((first == ord("0")) | (first == ord("1")))
    return (first == ord("1")).astype(np.int32), ok


def _parse_grid(padded, starts, ends, fast, general) -> tuple[np.ndarray, np.ndarray]:
    """Parses a [lines, columns] grid of fields: ``fast`` on the 8 bytes before each field end,
    ``general`` for the fields ``fast`` cannot vouch for. Returns (values, line ok)."""
    words = np.ndarray((len(padded) - 7,), dtype=">u8", buffer=padded, strides=(1,))
    values, ok = fast(words[ends + _PAD - 8].astype(np.uint64), ends - starts)
    redo = ~ok
    if redo.any():
        values[redo], ok[redo] = general(padded, starts[redo], ends[redo])
    return values, ok.all(axis=1)


def _lanes(x: int) -> int:
    """A byte repeated in all 8 lanes of a 64-bit word."""
    return x * 0x0101010101010101


_LOW_LANES = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [2**64 - 1], dtype=np.uint64)


def _int_fast(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integers of up to 8 characters (sign included) held in the low bytes of ``x``, SWAR style."""
    n = np.minimum(lengths, 8)
    first = (x >> (8 * np.maximum(n - 1, 0)).astype(np.uint64)) & np.uint64(0xFF)
    negative = (lengths > 0) & (first == ord("-"))
    digits = _LOW_LANES[n - negative]
    low = x & _lanes(0x0F)
    ok = ((x & _lanes(0xF0) & digits) == (_lanes(0x30) & digits))
    ok &= ((low + _lanes(0x06)) & _lanes(0x10) & digits) == 0
    ok &= (lengths <= 8) & ((lengths == 0) | (lengths - negative >= 1))
    v = low & digits
    v = ((v >> 8) & 0x00FF00FF00FF00FF) * 10 + (v & 0x00FF00FF00FF00FF)
    v = ((v >> 16) & 0x0000FFFF0000FFFF) * 100 + (v & 0x0000FFFF0000FFFF)
    v = ((v >> 32) * 10000 + (v & 0xFFFFFFFF)).astype(np.int64)
    return np.where(negative, -v, v), ok


def _int_general(padded: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optionally signed decimal integers of any length up to 18 digits, missing = 0."""
    lengths = ends - starts
    width = int(min(max(lengths.max(initial=0), 1), _MAX_INT_DIGITS + 1))
    chars = _windows(padded, ends, width)
    k = np.arange(width)
    first = np.take_along_axis(chars, np.clip(width - lengths, 0, width - 1)[:, None], axis=1)[:, 0]
    negative = (lengths > 0) & (first == ord("-"))
    digit = k >= (width - lengths + negative)[:, None]
    d = chars.astype(np.int64) - ord("0")
    ok = ((d >= 0) & (d <= 9) | ~digit).all(axis=1)
    ok &= (lengths - negative <= _MAX_INT_DIGITS) & ((lengths == 0) | (lengths - negative >= 1))
    value = (np.where(digit, d, 0) * _POW10[width - 1 - k]).sum(axis=1)
    return np.where(negative, -value, value), ok


def _hex_fast(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exactly 8 hex digits in one case (Criteo's form), or missing; SWAR, checked by re-encoding."""
    nibbles = (x & _lanes(0x0F)) + 9 * ((x >> 6) & _lanes(0x01))
    v = (nibbles | (nibbles >> 4)) & 0x00FF00FF00FF00FF
    v = (v | (v >> 8)) & 0x0000FFFF0000FFFF
    v = (v | (v >> 16)) & 0xFFFFFFFF
    back = _spread_nibbles(v)
    above9 = ((back + _lanes(0x06)) >> 4) & _lanes(0x01)
    ascii_digits = back + _lanes(0x30)
    same = (ascii_digits + above9 * 0x27 == x) | (ascii_digits + above9 * 0x07 == x)
    eight = lengths == 8
    return np.where(eight, v, 0), (eight & same) | (lengths == 0)


def _spread_nibbles(v: np.ndarray) -> np.ndarray:
    """A 32-bit value's 8 nibbles, most significant first, one per byte lane."""
    x = ((v << 16) | v) & 0x0000FFFF0000FFFF
    x = ((x << 8) | x) & 0x00FF00FF00FF00FF
    return ((x << 4) | x) & _lanes(0x0F)


def _hex_general(padded: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hex values of 1 to 16 digits in any case, missing = 0."""
    lengths = ends - starts
    width = int(min(max(lengths.max(initial=0), 1), _MAX_HEX_DIGITS))
    width += width % 2
    nibbles = _HEX[_windows(padded, ends, width)]  # [m, width]
    inside = np.arange(width) >= (width - lengths)[:, None]
    ok = ((nibbles != 255) | ~inside).all(axis=1) & (lengths <= _MAX_HEX_DIGITS)
    nibbles = np.where(inside & (nibbles != 255), nibbles, 0).astype(np.uint8)
    packed = np.zeros((len(nibbles), 8), dtype=np.uint8)
    packed[:, 8 - width // 2:] = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    return packed.view(">u8")[:, 0].astype(np.uint64), ok


def _windows(padded: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` bytes before each field end, right-aligned: [..., width] uint8."""
    view = np.lib.stride_tricks.as_strided(padded, shape=(len(padded) - width + 1, width), strides=(1, 1))
    return view[ends + _PAD - width]


def describe_bad_line(line: bytes) -> str:
    """Why one line is malformed, in words (used for the error message only)."""
    fields = line.rstrip(b"\n").split(b"\t")
    if len(fields) != FIELDS:
        return f"expected {FIELDS} tab-separated fields, got {len(fields)}"
    text = [f.decode("latin1") for f in fields]
    if text[0] not in ("0", "1"):
        return f"label {text[0]!r} is not 0 or 1"
    for j in range(DENSE_FEATURES):
        value = text[1 + j]
        if value and not re.fullmatch(r"-?[0-9]{1,%d}" % _MAX_INT_DIGITS, value):
            return f"integer feature {dense_name(j)} (field {2 + j}): {value!r} is not an integer"
    for j in range(CAT_FEATURES):
        value = text[14 + j]
        if value and not re.fullmatch(r"[0-9a-fA-F]{1,%d}" % _MAX_HEX_DIGITS, value):
            return f"categorical feature {cat_name(j)} (field {15 + j}): {value!r} is not hexadecimal"
    return "malformed line"


# ---------------------------------------------------------------- reading input


def open_input(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(the decoded byte stream, the raw file whose position measures progress)."""
    raw = path.open("rb")
    if path.suffix == ".gz":
        return gzip.GzipFile(fileobj=raw), raw  # type: ignore[return-value]
    return raw, raw


class _CheckedStream:
    """Reads a (possibly compressed) input; a damaged or cut-short stream becomes one
    CriteoDataError naming the file and how far it was read, not a decoder traceback."""

    def __init__(self, fh: BinaryIO, scan: "Scan") -> None:
        self.fh, self.scan = fh, scan

    def read(self, size: int) -> bytes:
        try:
            return self.fh.read(size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise CriteoDataError(
                f"{self.scan.path}: compressed input is damaged or cut short after about line "
                f"{self.scan.lines:,} ({exc})") from None


def line_blocks(fh: BinaryIO, chunk_rows: int) -> Iterator[tuple[bytes, int]]:
    """Blocks of at most ``chunk_rows`` complete lines: (bytes ending in ``\\n``, line count)."""
    read_bytes = max(1 << 20, chunk_rows * 256)  # usually one read holds a whole block
    pending = b""
    while True:
        data = fh.read(read_bytes)
        pending += data
        ends = np.flatnonzero(np.frombuffer(pending, dtype=np.uint8) == 10)
        cut = 0
        while len(ends) - cut >= chunk_rows:
            stop = int(ends[cut + chunk_rows - 1]) + 1
            yield pending[int(ends[cut - 1]) + 1 if cut else 0: stop], chunk_rows
            cut += chunk_rows
        if cut:
            pending = pending[int(ends[cut - 1]) + 1:]
        if not data:
            if pending:
                tail = pending if pending.endswith(b"\n") else pending + b"\n"
                yield tail, tail.count(b"\n")
            return


@dataclass
class Scan:
    """How far one input has been read, and how many bad lines were dropped."""

    path: Path
    lines: int = 0
    skipped: int = 0
    first_skipped: str = ""  # the first dropped line's file:line: reason


def scan_file(scan: Scan, chunk_rows: int, on_bad_line: str, bar) -> Iterator[ParsedBlock]:
    """Parsed blocks of one input; a bad line raises ``CriteoDataError`` ("error") or is dropped ("skip")."""
    fh, raw = open_input(scan.path)
    try:
        for block, n_lines in line_blocks(_CheckedStream(fh, scan), chunk_rows):  # type: ignore[arg-type]
            block = block.replace(b"\r\n", b"\n")
            parsed = parse_block(block)
            bad = np.flatnonzero(parsed.bad)
            if len(bad) and (on_bad_line == "error" or not scan.first_skipped):
                first = int(bad[0])
                line = block.split(b"\n")[first]
                where = f"{scan.path}:{scan.lines + first + 1}: {describe_bad_line(line)}"
                if on_bad_line == "error":
                    raise CriteoDataError(where)
                scan.first_skipped = where
            scan.lines += n_lines
            scan.skipped += len(bad)
            bar.update(raw.tell() - bar.n)
            yield parsed
    finally:
        fh.close()
        raw.close()


# ---------------------------------------------------------------- vocabulary


class ValueCounts:
    """Occurrences of each raw value of each feature. Block counts are buffered and merged in
    batches at least as large as the counts so far, so merging costs O(n log n) overall;
    memory grows with the number of distinct values, not with the rows read."""

    def __init__(self, features: int = CAT_FEATURES, min_merge: int = 1 << 20) -> None:
        self.keys = [np.zeros(0, dtype=np.uint64) for _ in range(features)]
        self.counts = [np.zeros(0, dtype=np.int64) for _ in range(features)]
        self.pending: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(features)]
        self.min_merge = min_merge

    def add(self, cats: np.ndarray) -> None:
        for f in range(cats.shape[1]):
            self.pending[f].append(np.unique(cats[:, f], return_counts=True))
            if sum(len(k) for k, _ in self.pending[f]) >= max(self.min_merge, len(self.keys[f])):
                self._merge(f)

    def _merge(self, f: int) -> None:
        keys = np.concatenate([self.keys[f]] + [k for k, _ in self.pending[f]])
        counts = np.concatenate([self.counts[f]] + [c for _, c in self.pending[f]])
        self.keys[f], inverse = np.unique(keys, return_inverse=True)
        self.counts[f] = np.bincount(inverse, weights=counts, minlength=len(self.keys[f])).astype(np.int64)
        self.pending[f] = []

    def vocabulary(self, threshold: int) -> list[np.ndarray]:
        """Each feature's values seen at least ``threshold`` times, ascending."""
        for f in range(len(self.keys)):
            self._merge(f)
        return [k[c >= threshold] for k, c in zip(self.keys, self.counts)]


def map_ids(cats: np.ndarray, vocab: list[np.ndarray] | None, table_sizes: Sequence[int] | None) -> np.ndarray:
    """Raw values -> ids: vocabulary rank + 1 (rare values 0) when ``vocab``, then modulo the table sizes."""
    ids = np.empty(cats.shape, dtype=np.int64)
    for f in range(cats.shape[1]):
        col = cats[:, f]
        if vocab is not None:
            pos = np.searchsorted(vocab[f], col)
            hit = pos < len(vocab[f])
            hit[hit] = vocab[f][pos[hit]] == col[hit]
            col = np.where(hit, pos + 1, 0).astype(np.uint64)
        if table_sizes is not None:
            col = col % np.uint64(table_sizes[f])
        ids[:, f] = col.astype(np.int64)
    return ids


# ---------------------------------------------------------------- writing


_HEADER_BYTES = 128


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` header of a fixed size, so it can be rewritten once the row count is known."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    text = text.ljust(_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


class NpyAppender:
    """Appends rows to a C-order ``.npy`` file; ``close`` writes the final shape into the header."""

    def __init__(self, path: Path, dtype: type, width: int) -> None:
        self.path, self.dtype, self.width, self.rows = path, np.dtype(dtype), width, 0
        self.fh = path.open("wb")
        self.fh.write(npy_header(self.dtype, (0, width)))

    def append(self, rows: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1, self.width).tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        self.fh.seek(0)
        self.fh.write(npy_header(self.dtype, (self.rows, self.width)))
        self.fh.close()


# ---------------------------------------------------------------- the whole pass


@dataclass
class PreprocessOptions:
    """What ``preprocess`` does besides reading and writing."""

    table_sizes: Sequence[int] | None = None  # ids modulo these; None keeps ids as they are
    frequency_threshold: int = 0  # 0 = no vocabulary
    vocab_from: Path | None = None  # reuse the vocabulary of an earlier output directory
    on_bad_line: str = "error"
    chunk_rows: int = 32768  # lines per parsed block; small blocks stay in cache
    progress: bool = True
    allow_empty: bool = False  # an input with no data rows is an error unless this is set

    def validate(self) -> None:
        from torchrec_models.config import ConfigError

        if self.on_bad_line not in BAD_LINE_MODES:
            raise ConfigError("--on-bad-line", f"must be one of {', '.join(BAD_LINE_MODES)}", where="option")
        if self.chunk_rows < 1:
            raise ConfigError("--chunk-rows", f"must be >= 1, got {self.chunk_rows}", where="option")
        if self.frequency_threshold < 0:
            raise ConfigError("--frequency-threshold", "must be >= 0", where="option")
        if self.frequency_threshold and self.vocab_from:
            raise ConfigError("--vocab-from", "give --frequency-threshold or --vocab-from, not both", where="option")
        if self.table_sizes is not None and (len(self.table_sizes) != CAT_FEATURES or min(self.table_sizes) < 1):
            raise ConfigError("table sizes", f"need {CAT_FEATURES} sizes >= 1, got {list(self.table_sizes)}",
                              where="option")


def preprocess(inputs: Sequence[Path | str], out_dir: Path | str, options: PreprocessOptions | None = None) -> dict:
    """Converts Criteo TSV files into ``out_dir``; returns the summary also written to ``meta.json``.

    Category ids: the hex value as an integer (missing = 0), modulo the table size when
    ``table_sizes`` is given, as the Criteo 1TB reference does. With ``frequency_threshold=K``
    a first pass counts each feature's values over all inputs; values seen at least K times get
    ids 1..V in ascending order of their hex value, all others (and values never seen) share
    id 0, and these ids are then taken modulo the table size. ``vocab_from`` applies the
    vocabulary saved by an earlier run (e.g. training days) to new inputs (e.g. the eval day).
    """
    options = options or PreprocessOptions()
    options.validate()
    paths = _check_inputs(inputs)
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(_mkdtemp(out))
    started = time.perf_counter()
    try:
        vocab = _vocabulary(paths, options)
        files = [_convert(path, work, vocab, options) for path in paths]
        meta = _meta(files, time.perf_counter() - started, vocab, options)
        _write_json(work / META, meta)
        if vocab is not None:
            np.savez(work / VOCAB, **{cat_name(f): v for f, v in enumerate(vocab)})
        _publish(work, out)
        return meta
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()


def _check_inputs(inputs: Sequence[Path | str]) -> list[Path]:
    from torchrec_models.config import ConfigError

    paths = [Path(p) for p in inputs]
    if not paths:
        raise ConfigError("--input", "needs at least one file", where="option")
    seen: dict[str, Path] = {}
    for path in paths:
        if not path.is_file():
            raise ConfigError(str(path), "no such file", where="input file")
        stem = input_stem(path)
        if stem in seen:
            raise ConfigError(str(path), f"has the same name {stem!r} as {seen[stem]}", where="input file")
        seen[stem] = path
    return paths


def _mkdtemp(out: Path) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=".preprocess-", dir=out)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled,
                mininterval=0.5 if sys.stderr.isatty() else 10.0)


def _vocabulary(paths: list[Path], options: PreprocessOptions) -> list[np.ndarray] | None:
    """The frequent values per feature (a first pass over all inputs), a saved one, or None."""
    if options.vocab_from is not None:
        return load_vocabulary(options.vocab_from)
    if not options.frequency_threshold:
        return None
    counts = ValueCounts()
    with _progress(sum(p.stat().st_size for p in paths), "count", options.progress) as bar:
        for path in paths:
            for parsed in scan_file(Scan(path), options.chunk_rows, options.on_bad_line, bar):
                counts.add(parsed.cats)
    return counts.vocabulary(options.frequency_threshold)


def load_vocabulary(directory: Path | str) -> list[np.ndarray]:
    """The ``vocab.npz`` an earlier ``preprocess --frequency-threshold`` wrote."""
    from torchrec_models.config import ConfigError

    path = Path(directory) / VOCAB
    if not path.is_file():
        raise ConfigError(str(path), "no such file (written by preprocess --frequency-threshold)",
                          where="vocabulary")
    import zipfile

    try:
        with np.load(path) as saved:
            return [saved[cat_name(f)].astype(np.uint64) for f in range(CAT_FEATURES)]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CriteoDataError(f"{path}: not a readable vocabulary ({type(exc).__name__}: {exc})") from None


def _convert(path: Path, work: Path, vocab: list[np.ndarray] | None, options: PreprocessOptions) -> dict:
    """Writes one input's three arrays into ``work``; returns its entry of ``meta.json``."""
    stem = input_stem(path)
    scan = Scan(path)
    writers = [
        NpyAppender(array_path(work, stem, "dense"), np.float32, DENSE_FEATURES),
        NpyAppender(array_path(work, stem, "sparse"), np.int64, CAT_FEATURES),
        NpyAppender(array_path(work, stem, "labels"), np.int32, 1),
    ]
    try:
        with _progress(path.stat().st_size, stem, options.progress) as bar:
            for parsed in scan_file(scan, options.chunk_rows, options.on_bad_line, bar):
                writers[0].append(parsed.dense)
                writers[1].append(map_ids(parsed.cats, vocab, options.table_sizes))
                writers[2].append(parsed.labels)
    finally:
        for w in writers:
            w.close()
    if writers[0].rows == 0 and not options.allow_empty:
        what = f"all {scan.skipped:,} lines were bad and skipped" if scan.skipped else "it is empty"
        raise CriteoDataError(f"{path}: no data rows ({what}); an empty input is usually a failed download "
                              "or copy (pass --allow-empty to accept it)")
    entry = {"stem": stem, "input": str(path), "rows": writers[0].rows, "bad_lines_skipped": scan.skipped}
    if scan.first_skipped:
        entry["first_bad_line"] = scan.first_skipped
    return entry


def _meta(files: list[dict], seconds: float, vocab, options: PreprocessOptions) -> dict:
    rows = sum(f["rows"] for f in files)
    skipped = sum(f["bad_lines_skipped"] for f in files)
    return {
        "format": "torchrec BinaryCriteoUtils npy: <stem>_dense.npy float32 [N,13], "
                  "<stem>_sparse.npy int64 [N,26], <stem>_labels.npy int32 [N,1]",
        "files": files,
        "rows": rows,
        "bad_lines_skipped": skipped,
        "table_sizes": list(options.table_sizes) if options.table_sizes is not None else None,
        "frequency_threshold": options.frequency_threshold,
        "vocab_from": str(options.vocab_from) if options.vocab_from else None,
        "vocabulary_sizes": [len(v) for v in vocab] if vocab is not None else None,
        "dense_transform": "log(1 + max(x, 0)), missing = 0",
        "seconds": round(seconds, 3),
        "rows_per_sec": rows / seconds if seconds > 0 else None,
    }


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _publish(work: Path, out: Path) -> None:
    """Moves the finished files into ``out``; ``meta.json`` goes last."""
    names = sorted(p.name for p in work.iterdir() if p.name != META)
    for name in names + [META]:
        os.replace(work / name, out / name)


def read_meta(directory: Path | str) -> dict | None:
    """``meta.json`` of a preprocessed directory (None without one), checked for the fields
    the reader uses: ``files``, each with a ``stem`` and a row count."""
    path = Path(directory) / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CriteoDataError(f"{path}: unreadable ({exc})") from None
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, list) or not files:
        raise CriteoDataError(f"{path}: 'files' must be a non-empty list of {{stem, rows}} entries")
    for i, entry in enumerate(files):
        ok = isinstance(entry, dict) and isinstance(entry.get("stem"), str) and isinstance(entry.get("rows"), int)
        if not ok or entry["rows"] < 0:
            raise CriteoDataError(f"{path}: files[{i}] must hold a 'stem' (text) and 'rows' (an integer >= 0)")
    return meta
