"""MovieLens ratings in the layouts people download -> one table of ratings plus user and item features.

Recognized layouts (by file name, in this order):

- atomic files: ``*.inter`` / ``*.user`` / ``*.item`` (tab separated, typed header line), as in the
  copy of ml-100k inside the ``recbole`` wheel;
- ml-100k: ``u.data`` / ``u.user`` / ``u.item`` (genre flags) with ``u.genre``;
- ml-1m: ``ratings.dat`` / ``users.dat`` / ``movies.dat`` (``::`` separated);
- ml-20m / ml-25m: ``ratings.csv`` / ``movies.csv`` (no user features).

Every reader returns :class:`RawRatings`: raw ids as strings, so nothing depends on a layout's id type.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchrec_models.errors import DataError

USER_FEATURES = ("age", "gender", "occupation")


class MovieLensDataError(DataError):
    """A MovieLens file that cannot be read; the message names the file and the line."""


@dataclass
class RawRatings:
    """Ratings and features with their raw ids (strings)."""

    layout: str
    users: np.ndarray  # [N] str
    items: np.ndarray  # [N] str
    ratings: np.ndarray  # [N] float64
    timestamps: np.ndarray  # [N] int64
    user_features: dict[str, dict[str, str]] = field(default_factory=dict)  # raw user id -> feature -> token
    item_genres: dict[str, list[str]] = field(default_factory=dict)  # raw item id -> genre tokens


def read_movielens(directory: Path) -> RawRatings:
    """Reads whichever layout ``directory`` holds; an error names what was looked for."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MovieLensDataError(f"{directory}: not a directory")
    inter = sorted(directory.glob("*.inter"))
    if inter:
        return _read_atomic(inter[0])
    if (directory / "u.data").is_file():
        return _read_100k(directory)
    if (directory / "ratings.dat").is_file():
        return _read_1m(directory)
    if (directory / "ratings.csv").is_file():
        return _read_csv(directory)
    raise MovieLensDataError(f"{directory}: no MovieLens ratings found (looked for *.inter, u.data, "
                             "ratings.dat, ratings.csv)")


def _lines(path: Path, encoding: str = "latin-1") -> list[str]:
    with open(path, encoding=encoding, newline="") as fh:
        return fh.read().splitlines()


def _ratings(path: Path, rows: list[list[str]], first_line: int, layout: str) -> RawRatings:
    """Rows of (user, item, rating, timestamp) strings -> arrays; a bad row is an error naming its line."""
    for i, row in enumerate(rows):
        if len(row) < 4:
            raise MovieLensDataError(f"{path}:{first_line + i}: expected user, item, rating, timestamp; "
                                     f"got {len(row)} field(s)")
    try:
        ratings = np.array([r[2] for r in rows], dtype=np.float64)
        timestamps = np.array([r[3] for r in rows], dtype=np.float64).astype(np.int64)
    except ValueError:
        bad = next(i for i, r in enumerate(rows) if not (_is_number(r[2]) and _is_number(r[3])))
        raise MovieLensDataError(f"{path}:{first_line + bad}: rating and timestamp must be numbers, "
                                 f"got {rows[bad][2]!r}, {rows[bad][3]!r}") from None
    if not rows:
        raise MovieLensDataError(f"{path}: no ratings")
    users = np.array([r[0].strip() for r in rows])
    items = np.array([r[1].strip() for r in rows])
    return RawRatings(layout, users, items, ratings, timestamps)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_atomic(inter: Path) -> RawRatings:
    lines = _lines(inter, "utf-8")
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    cols = [_column(inter, header, name) for name in ("user_id", "item_id", "rating", "timestamp")]
    rows = [[fields[c] if c < len(fields) else "" for c in cols] for fields in (ln.split("\t") for ln in lines[1:])]
    raw = _ratings(inter, rows, 2, "atomic")
    user_file, item_file = inter.with_suffix(".user"), inter.with_suffix(".item")
    if user_file.is_file():
        table = _atomic_table(user_file, "user_id")
        raw.user_features = {u: {f: row.get(f, "") for f in USER_FEATURES} for u, row in table.items()}
    if item_file.is_file():
        table = _atomic_table(item_file, "item_id")
        raw.item_genres = {i: row.get("class", "").split() for i, row in table.items()}
    return raw


def _column(path: Path, header: list[str], name: str) -> int:
    if name not in header:
        raise MovieLensDataError(f"{path}:1: header has no {name!r} column (has {', '.join(header)})")
    return header.index(name)


def _atomic_table(path: Path, key: str) -> dict[str, dict[str, str]]:
    lines = _lines(path, "utf-8")
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    k = _column(path, header, key)
    return {fields[k]: dict(zip(header, fields)) for fields in (ln.split("\t") for ln in lines[1:] if ln)}


def _read_100k(directory: Path) -> RawRatings:
    path = directory / "u.data"
    raw = _ratings(path, [ln.split("\t") for ln in _lines(path) if ln], 1, "ml-100k")
    if (directory / "u.user").is_file():  # id|age|gender|occupation|zip
        raw.user_features = {f[0]: dict(zip(USER_FEATURES, (f[1], f[2], f[3])))
                             for f in (ln.split("|") for ln in _lines(directory / "u.user") if ln)}
    if (directory / "u.item").is_file():  # id|title|date|video date|url|19 genre flags
        names = _genre_names(directory)
        raw.item_genres = {f[0]: [names[j] for j, flag in enumerate(f[5:5 + len(names)]) if flag == "1"]
                           for f in (ln.split("|") for ln in _lines(directory / "u.item") if ln)}
    return raw


def _genre_names(directory: Path) -> list[str]:
    path = directory / "u.genre"
    if not path.is_file():
        return [f"genre_{j}" for j in range(19)]
    pairs = [ln.split("|") for ln in _lines(path) if ln.strip()]
    return [name for name, _ in sorted(pairs, key=lambda p: int(p[1]))]


def _read_1m(directory: Path) -> RawRatings:
    path = directory / "ratings.dat"
    raw = _ratings(path, [ln.split("::") for ln in _lines(path) if ln], 1, "ml-1m")
    if (directory / "users.dat").is_file():  # id::gender::age::occupation::zip
        raw.user_features = {f[0]: {"age": f[2], "gender": f[1], "occupation": f[3]}
                             for f in (ln.split("::") for ln in _lines(directory / "users.dat") if ln)}
    if (directory / "movies.dat").is_file():  # id::title::genre|genre
        raw.item_genres = {f[0]: f[2].split("|") for f in (ln.split("::") for ln in _lines(directory / "movies.dat") if ln)}
    return raw


def _read_csv(directory: Path) -> RawRatings:
    path = directory / "ratings.csv"
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    raw = _ratings(path, [[r[0], r[1], r[2], r[3]] if len(r) >= 4 else r for r in rows[1:]], 2, "ml-csv")
    if (directory / "movies.csv").is_file():  # movieId,title,genres
        with open(directory / "movies.csv", encoding="utf-8", newline="") as fh:
            movies = list(csv.reader(fh))[1:]
        raw.item_genres = {m[0]: [g for g in m[2].split("|") if g != "(no genres listed)"] for m in movies if len(m) >= 3}
    return raw
