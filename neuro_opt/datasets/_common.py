"""Helpers shared by the loaders: file discovery, grids from channel coordinates,
repetition matrices and ground truth.

Every loader turns a file into *channel arrays* (one row per recorded channel or
condition) and hands them to :func:`problems_from_channels`, which places the
channels on a :class:`~neuro_opt.space.SearchSpace` and builds one
:class:`~neuro_opt.datasets.base.Problem` per selected muscle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from neuro_opt.datasets.base import Problem
from neuro_opt.space import SearchSpace

TRUTH_MODES = ("valid_mean", "all_mean", "stored")


class DataFormatError(ValueError):
    """A data file does not follow its documented layout.

    The message always names the file and, where it applies, the missing
    field, the bad shape or the NaN.
    """


def require_path(path, dataset: str) -> Path:
    """The existing file or folder ``path``; raises a clear error when it is missing."""
    if path is None or (isinstance(path, str) and not path.strip()):
        raise ValueError(
            f"dataset {dataset!r}: dataset.path is required (a folder or a file), "
            f"e.g. dataset={dataset} dataset.path=/data/neuromosaics"
        )
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise ValueError(f"dataset {dataset!r}: dataset.path {str(p)!r} does not exist")
    return p


def find_files(path: Path, suffixes: Sequence[str], subfolders: Sequence[str], dataset: str) -> list[Path]:
    """Data files under ``path``.

    ``path`` may be a file (returned as is), a folder holding files with one of
    ``suffixes``, or a folder whose subfolder (one of ``subfolders``, e.g. the
    ``nhp/`` of the OSF layout) holds them. Files are returned sorted by name.
    """
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            raise ValueError(f"dataset {dataset!r}: {str(path)!r} is not a {'/'.join(suffixes)} file")
        return [path]
    tried = [path] + [path / s for s in subfolders]
    for folder in tried:
        if folder.is_dir():
            files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
            if files:
                return files
    raise ValueError(f"dataset {dataset!r}: no {'/'.join(suffixes)} file in {', '.join(repr(str(t)) for t in tried)}")


def select_files(
    files: list[Path], subjects: Sequence[str] | None, dataset: str, n_subjects: int | None = None
) -> list[Path]:
    """Keep the files whose stem is in ``subjects`` (None keeps all), then the first ``n_subjects``."""
    if subjects is not None:
        if isinstance(subjects, str):
            subjects = [subjects]
        stems = {f.stem: f for f in files}
        missing = [s for s in subjects if s not in stems]
        if missing:
            raise ValueError(f"dataset {dataset!r}: no file for subject(s) {missing}; found {sorted(stems)}")
        files = [stems[s] for s in subjects]
    return files[: check_count(n_subjects, len(files), dataset, "n_subjects", [f.stem for f in files])]


def check_count(n: int | None, available: int, where: str, key: str, names: Sequence[str]) -> int:
    """``n`` (None: ``available``) after checking ``1 <= n <= available``."""
    if n is None:
        return available
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{where}: {key} must be a positive integer or null, got {n!r}")
    if n > available:
        raise ValueError(f"{where}: {key}={n} but only {available} available: {list(names)}")
    return int(n)


def as_name_list(value, where: str, what: str) -> list[str]:
    """A list of stripped names from a MATLAB cell/char array, numpy array or list."""
    if isinstance(value, str):
        return [value.strip()]
    arr = np.asarray(value, dtype=object) if not isinstance(value, np.ndarray) else value
    if arr.dtype.kind in ("U", "S"):
        return [str(s).strip() for s in arr.ravel()]
    names = []
    for item in arr.ravel():
        item = np.asarray(item)
        if item.dtype.kind not in ("U", "S", "O") or item.size != 1:
            raise DataFormatError(f"{where}: {what} must hold one text name per muscle, got {item!r}")
        names.append(str(item.ravel()[0]).strip())
    return names


def check_unique(names: Sequence[str], where: str, what: str) -> None:
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise DataFormatError(f"{where}: {what} repeats the name(s) {dup}")


def select_muscles(names: list[str], wanted, where: str, aliases: list[str] | None = None) -> list[int]:
    """Indices of the wanted muscles (None: all), matched by name (or alias), exactly then case-insensitively."""
    if wanted is None:
        return list(range(len(names)))
    if isinstance(wanted, str):
        wanted = [wanted]
    out = []
    for w in wanted:
        w = str(w)
        hits = [i for i, n in enumerate(names) if n == w]
        if not hits and aliases:
            hits = [i for i, n in enumerate(aliases) if n == w]
        if not hits:
            hits = [i for i, n in enumerate(names) if n.lower() == w.lower()]
        if not hits and aliases:
            hits = [i for i, n in enumerate(aliases) if n.lower() == w.lower()]
        if not hits:
            extra = f" (abbreviations {aliases})" if aliases else ""
            raise ValueError(f"{where}: no muscle named {w!r}; the file has {names}{extra}")
        out.append(hits[0])
    return out


def first_muscles(n_muscles: int | None, available: int, where: str) -> int:
    """How many muscles to keep: at most ``n_muscles`` (None: all)."""
    if n_muscles is None:
        return available
    if isinstance(n_muscles, bool) or not isinstance(n_muscles, (int, np.integer)) or n_muscles < 1:
        raise ValueError(f"{where}: n_muscles must be a positive integer or null, got {n_muscles!r}")
    return min(int(n_muscles), available)


def coords_to_grid(coords: np.ndarray, base: int | str, where: str, field: str = "ch2xy") -> np.ndarray:
    """Integer 0-based grid indices (``n x d``) from ``base``-based coordinates.

    ``base`` is 1 (MATLAB), 0, or ``"auto"`` (0 if any coordinate is 0, else 1).
    """
    coords = np.asarray(coords, dtype=np.float64)
    if not np.all(np.isfinite(coords)):
        bad = np.flatnonzero(~np.all(np.isfinite(coords), axis=1))[:5].tolist()
        raise DataFormatError(f"{where}: {field} has NaN/inf at rows {bad} (0-based)")
    if not np.all(coords == np.round(coords)):
        raise DataFormatError(f"{where}: {field} must hold integer grid coordinates")
    if base == "auto":
        base = 0 if coords.min() == 0 else 1
    if base not in (0, 1):
        raise ValueError(f"{where}: coordinate base must be 0, 1 or 'auto', got {base!r}")
    grid = coords.astype(np.int64) - int(base)
    if grid.min() < 0:
        raise DataFormatError(f"{where}: {field} must be {base}-based, found coordinate {int(coords.min())}")
    return grid


def grid_space(
    grid: np.ndarray, names: Sequence[str], where: str, values: Sequence[Sequence] | None = None
) -> tuple[SearchSpace, np.ndarray]:
    """The space whose valid points are the rows of ``grid`` (``n x d`` 0-based indices).

    Returns the space (grid shape = extent of the coordinates, or the lengths of
    ``values``) and ``point_of_row`` (``n``), the flat point of each row.
    Raises if two rows sit on the same grid point.
    """
    grid = np.asarray(grid, dtype=np.int64)
    shape = tuple(int(m) + 1 for m in grid.max(axis=0)) if values is None else tuple(len(v) for v in values)
    if values is None:
        values = [range(1, n + 1) for n in shape]
    flat = np.ravel_multi_index(tuple(grid.T), shape)
    uniq, first, counts = np.unique(flat, return_index=True, return_counts=True)
    if np.any(counts > 1):
        rows = np.flatnonzero(flat == uniq[np.argmax(counts > 1)]).tolist()
        raise DataFormatError(f"{where}: rows {rows} (0-based) sit on the same grid point {grid[rows[0]].tolist()}")
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(grid.T)] = True
    space = SearchSpace(dict(zip(names, values)), mask=mask)
    lookup = np.full(int(np.prod(shape)), -1, dtype=np.int64)
    lookup[np.ravel_multi_index(tuple(space.index.T), shape)] = np.arange(space.n_points)
    return space, lookup[flat]


def pad_rows(rows: Iterable[np.ndarray], fill=np.nan, dtype=np.float64) -> np.ndarray:
    """Stack 1-D arrays of varying length into ``n x max_len``, padded with ``fill``."""
    rows = [np.asarray(r, dtype=dtype).ravel() for r in rows]
    width = max((r.size for r in rows), default=0)
    out = np.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : r.size] = r
    return out


def ground_truth(
    reps: np.ndarray, valid: np.ndarray, truth: str, stored: np.ndarray | None, where: str, label: Callable[[int], str]
) -> np.ndarray:
    """Ground-truth mean per row.

    Args:
        reps: ``n x R`` responses, NaN = no repetition.
        valid: ``n x R`` valid flags.
        truth: ``"valid_mean"`` (mean over valid repetitions), ``"all_mean"``
            (mean over every recorded repetition, outliers included) or
            ``"stored"`` (the file's own means, ``stored``).
        label: ``label(row)`` names a row in error messages (channel, condition).

    Returns:
        ``n`` means.
    """
    if truth not in TRUTH_MODES:
        raise ValueError(f"{where}: truth must be one of {TRUTH_MODES}, got {truth!r}")
    if truth == "stored":
        if stored is None:
            raise DataFormatError(f"{where}: truth='stored' but the file holds no stored means")
        stored = np.asarray(stored, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(stored))
        if bad.size:
            raise DataFormatError(f"{where}: stored mean is NaN/inf at {[label(int(i)) for i in bad[:5]]}")
        return stored
    use = np.isfinite(reps) if truth == "all_mean" else (np.isfinite(reps) & valid)
    counts = use.sum(axis=1)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        hint = " (try truth='all_mean' or truth='stored')" if truth == "valid_mean" else ""
        kind = "valid " if truth == "valid_mean" else ""
        raise DataFormatError(f"{where}: no {kind}repetition at {[label(int(i)) for i in empty[:5]]}{hint}")
    return np.where(use, reps, 0.0).sum(axis=1) / counts


def problems_from_channels(
    subject: str,
    where: str,
    space: SearchSpace,
    point_of_row: np.ndarray,
    muscles: list[str],
    reps: np.ndarray,
    valid: np.ndarray,
    stored: np.ndarray | None,
    truth: str,
    label: Callable[[int], str],
    meta: dict,
) -> list[Problem]:
    """One problem per muscle from per-row arrays.

    Args:
        point_of_row: ``n`` flat point of each row (a permutation of the points).
        muscles: names, ``M`` of them.
        reps: ``n x M x R`` responses, NaN padded.
        valid: ``n x M x R`` flags.
        stored: ``n x M`` stored means or None.
        label: ``label(row)`` names a row in error messages.
    """
    n = point_of_row.size
    if n != space.n_points:
        raise DataFormatError(f"{where}: {n} rows for {space.n_points} grid points")
    order = np.empty(n, dtype=np.int64)
    order[point_of_row] = np.arange(n)  # row of each point
    problems = []
    for m, muscle in enumerate(muscles):
        r = reps[:, m, :]
        v = valid[:, m, :] & np.isfinite(r)
        mean = ground_truth(r, v, truth, None if stored is None else stored[:, m], f"{where}, muscle {muscle!r}", label)
        problems.append(
            Problem(
                key=f"{subject}/{muscle}",
                space=space,
                truth=mean[order],
                repetitions=r[order],
                valid=v[order],
                meta=dict(meta, muscle_index=m, truth=truth),
            )
        )
    return problems
