"""A lab's own recordings in an open format: Parquet or CSV, one row per trial.

Columns:

- one column per stimulation parameter (``x``, ``y``, ``frequency``, ...):
  numbers, or text for categorical parameters (``site = lumbar``);
- ``muscle``: the muscle (or any response channel) name;
- ``response``: the measured response of the trial (a finite number);
- ``valid`` (optional, default all true): 1/0 or true/false, 0 = a trial
  excluded from the ground truth (e.g. EMG activity before stimulation);
- ``subject`` (optional, default the file stem);
- ``trial`` (optional): the order of the trials; otherwise the row order.

Each subject's space is the grid of the values of its parameter columns
(numeric values sorted ascending, text values in order of first appearance),
masked to the combinations that occur. Every muscle of a subject must have at
least one trial at each of those combinations. Ground truth is the mean over
the valid trials (``truth="all_mean"``: over all trials).

:func:`to_trials` writes any dataset with repetitions in this format (a pyarrow
Table: ``pyarrow.parquet.write_table(to_trials(ds), path)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from neuro_opt.datasets._common import (
    DataFormatError,
    check_count,
    find_files,
    first_muscles,
    ground_truth,
    pad_rows,
    require_path,
    select_muscles,
)
from neuro_opt.datasets.base import Dataset, Problem
from neuro_opt.space import SearchSpace

if TYPE_CHECKING:
    import pyarrow as pa

RESERVED = ("subject", "muscle", "response", "valid", "trial")
SUFFIXES = (".parquet", ".pq", ".csv")


class Column:
    """One table column as numpy: ``values`` (float64 for numbers, bool, or object str) and ``missing``."""

    def __init__(self, kind: str, values: np.ndarray, missing: np.ndarray):
        self.kind, self.values, self.missing = kind, values, missing


def read_columns(file: Path) -> dict[str, Column]:
    """The columns of a ``.csv`` or ``.parquet`` file (pandas index columns dropped)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        table = pcsv.read_csv(file) if file.suffix.lower() == ".csv" else pq.read_table(file)
    except Exception as exc:  # noqa: BLE001
        raise DataFormatError(f"{file}: not a readable {file.suffix} table ({type(exc).__name__}: {exc})") from None
    out = {}
    for name in table.column_names:
        if name.startswith("__index_level_"):
            continue
        col = table.column(name)
        missing = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        t = col.type
        if pa.types.is_boolean(t):
            vals = np.asarray(col.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
            out[name] = Column("bool", vals, missing)
        elif pa.types.is_integer(t) or pa.types.is_floating(t):
            vals = np.asarray(col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
            out[name] = Column("num", vals, missing | np.isnan(vals))
        else:
            vals = np.array(["" if v is None else str(v) for v in col.to_pylist()], dtype=object)
            out[name] = Column("str", vals, missing)
    return out


def _axis(col: Column) -> tuple[list, np.ndarray]:
    """A parameter column's ordered values and each row's index into them."""
    if col.kind == "num":
        vals, inv = np.unique(col.values, return_inverse=True)
        return [int(v) if float(v).is_integer() else float(v) for v in vals], inv
    keys = col.values.astype(str) if col.kind == "bool" else col.values
    order = list(dict.fromkeys(keys.tolist()))
    lookup = {v: i for i, v in enumerate(order)}
    return order, np.array([lookup[k] for k in keys.tolist()], dtype=np.int64)


def _valid_flags(col: Column, where: str) -> np.ndarray:
    if col.kind == "bool":
        return col.values
    if col.kind == "num":
        ok = np.isin(col.values, (0.0, 1.0))
        if not ok.all():
            raise DataFormatError(
                f"{where}: column 'valid' must be 0/1 or true/false; bad rows {np.flatnonzero(~ok)[:5].tolist()}"
            )
        return col.values == 1.0
    text = np.char.lower(np.char.strip(col.values.astype(str)))
    ok = np.isin(text, ("true", "false", "1", "0"))
    if not ok.all():
        raise DataFormatError(
            f"{where}: column 'valid' must be 0/1 or true/false; bad rows {np.flatnonzero(~ok)[:5].tolist()}"
        )
    return np.isin(text, ("true", "1"))


def load_table(
    path=None,
    params: Sequence[str] | None = None,
    muscles: Sequence[str] | None = None,
    subjects: Sequence[str] | None = None,
    truth: str = "valid_mean",
    n_subjects: int | None = None,
    n_muscles: int | None = None,
    name: str | None = None,
) -> Dataset:
    """Trials from ``.parquet``/``.csv`` files: one problem per subject and muscle.

    Args:
        path: a file or a folder of them (every table in it, sorted by name).
        params: the parameter columns, in dimension order; None: every
            column that is not reserved (subject, muscle, response, valid, trial).
        muscles: names to keep; None keeps all.
        subjects: subjects to keep; None keeps all.
        truth: ``"valid_mean"`` or ``"all_mean"``.
        n_subjects: keep the first ``n_subjects`` subjects (in order of
            appearance over the files); None: all.
        n_muscles: keep at most the first ``n_muscles`` (selected) muscles of
            each subject.

    Returns:
        problems keyed ``"<subject>/<muscle>"`` with ``repetitions`` and
        ``valid`` (``P x R``, trials in order, NaN padded).
    """
    dataset = name or "lab_table"
    root = require_path(path, dataset)
    files = find_files(root, SUFFIXES, (), dataset)
    if truth not in ("valid_mean", "all_mean"):
        raise ValueError(f"dataset {dataset!r}: truth must be 'valid_mean' or 'all_mean' for tables, got {truth!r}")
    if n_subjects is not None:
        check_count(n_subjects, n_subjects, f"dataset {dataset!r}", "n_subjects", [])  # a positive integer
    wanted = None
    if subjects is not None:
        wanted = [str(s) for s in ([subjects] if isinstance(subjects, str) else subjects)]
    problems: list[Problem] = []
    seen: list[str] = []
    for f in files:
        where = str(f)
        cols = read_columns(f)
        present = list(cols)
        for c in ("muscle", "response"):
            if c not in cols:
                raise DataFormatError(f"{where}: missing column {c!r}; columns present: {present}")
        pcols = list(params) if params is not None else [c for c in present if c not in RESERVED]
        missing = [c for c in pcols if c not in cols]
        if missing:
            raise DataFormatError(f"{where}: missing parameter column(s) {missing}; columns present: {present}")
        if not pcols:
            raise DataFormatError(f"{where}: no parameter column (columns present: {present})")
        for c in pcols + [c for c in ("muscle", "subject", "valid", "trial") if c in cols]:
            if cols[c].missing.any():
                raise DataFormatError(
                    f"{where}: column {c!r} has NaN/empty at rows {np.flatnonzero(cols[c].missing)[:5].tolist()}"
                )
        if cols["response"].kind != "num":
            raise DataFormatError(f"{where}: column 'response' is not numeric")
        response = cols["response"].values
        if not np.all(np.isfinite(response)):
            raise DataFormatError(
                f"{where}: column 'response' has NaN/inf at rows {np.flatnonzero(~np.isfinite(response))[:5].tolist()}"
            )
        n = response.size
        valid = _valid_flags(cols["valid"], where) if "valid" in cols else np.ones(n, dtype=bool)
        subject_col = cols["subject"].values.astype(str) if "subject" in cols else np.full(n, f.stem, dtype=object)
        muscle_col = cols["muscle"].values.astype(str)
        order = np.arange(n)
        if "trial" in cols:
            if cols["trial"].kind != "num":
                raise DataFormatError(f"{where}: column 'trial' must be numeric")
            order = np.lexsort((order, cols["trial"].values))
        for subject in dict.fromkeys(subject_col.tolist()):
            if wanted is not None and subject not in wanted:
                continue
            if n_subjects is not None and len(seen) >= n_subjects:
                continue
            if subject in seen:
                raise DataFormatError(
                    f"{where}: subject {subject!r} also appears in an earlier file; "
                    f"put each subject's trials in one file"
                )
            seen.append(subject)
            rows = order[subject_col[order] == subject]
            table = {c: Column(cols[c].kind, cols[c].values[rows], cols[c].missing[rows]) for c in pcols}
            problems += _subject_problems(
                table, muscle_col[rows], response[rows], valid[rows], subject, pcols, muscles, truth, where, n_muscles
            )
    if wanted is not None:
        lost = [s for s in wanted if s not in seen]
        if lost:
            raise ValueError(f"dataset {dataset!r}: no trial for subject(s) {lost}")
    if not problems:
        raise ValueError(f"dataset {dataset!r}: no trial found in {root}")
    check_count(n_subjects, len(seen), f"dataset {dataset!r}", "n_subjects", seen)
    return Dataset(
        dataset, problems, meta={"source": "trial table", "path": str(root), "default_response": "repetition_valid"}
    )


def _subject_problems(
    table: dict,
    muscle_col: np.ndarray,
    response: np.ndarray,
    valid: np.ndarray,
    subject: str,
    cols: list[str],
    muscles,
    truth: str,
    where: str,
    n_muscles: int | None,
) -> list[Problem]:
    """Problems of one subject from its rows (``table``: parameter columns; arrays: one entry per row)."""
    axes = [_axis(table[c]) for c in cols]
    values = [a[0] for a in axes]
    grid = np.stack([a[1] for a in axes], axis=1)
    shape = tuple(len(v) for v in values)
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(grid.T)] = True
    space = SearchSpace(dict(zip(cols, values)), mask=mask)
    flat_lookup = np.full(int(np.prod(shape)), -1, dtype=np.int64)
    flat_lookup[np.ravel_multi_index(tuple(space.index.T), shape)] = np.arange(space.n_points)
    point = flat_lookup[np.ravel_multi_index(tuple(grid.T), shape)]
    names = list(dict.fromkeys(muscle_col.tolist()))
    idx = select_muscles(names, muscles, f"{where}, subject {subject!r}")
    idx = idx[: first_muscles(n_muscles, len(idx), where)]
    out = []
    for i in idx:
        muscle = names[i]
        rows = np.flatnonzero(muscle_col == muscle)
        pts = point[rows]
        counts = np.bincount(pts, minlength=space.n_points)
        if np.any(counts == 0):
            miss = [space.values_of(p) for p in np.flatnonzero(counts == 0)[:3]]
            raise DataFormatError(
                f"{where}: subject {subject!r}, muscle {muscle!r} has no trial at "
                f"{int((counts == 0).sum())} parameter combination(s), e.g. {miss}"
            )
        by_point = np.argsort(pts, kind="stable")
        splits = np.split(by_point, np.cumsum(counts)[:-1])
        reps = pad_rows([response[rows[s]] for s in splits])
        flags = pad_rows([valid[rows[s]] for s in splits], fill=False, dtype=bool)
        mean = ground_truth(
            reps,
            flags,
            truth,
            None,
            f"{where}, subject {subject!r}, muscle {muscle!r}",
            lambda p, sp=space: f"point {sp.values_of(p)}",  # type: ignore[misc]  # mypy cannot infer a lambda with a default
        )
        out.append(
            Problem(
                key=f"{subject}/{muscle}",
                space=space,
                truth=mean,
                repetitions=reps,
                valid=flags,
                meta={"source": "trial table", "file": where, "truth": truth},
            )
        )
    return out


def to_trials(dataset: Dataset) -> pa.Table:
    """One row per recorded repetition of every problem (the format :func:`load_table` reads).

    Returns:
        a ``pyarrow.Table`` with columns ``subject``, the parameter columns of
        the spaces, ``muscle``, ``response``, ``valid``, ``trial`` (repetition
        index within the point). Problems without repetitions raise; all
        problems must share their dimension names.
    """
    import pyarrow as pa

    tables = []
    for p in dataset:
        if p.repetitions is None:
            raise ValueError(f"problem {p.key!r} has no recorded repetitions to write as trials")
        assert p.valid is not None  # Problem sets valid whenever it has repetitions
        pt, rep = np.nonzero(np.isfinite(p.repetitions))
        cols = {"subject": pa.array([p.subject] * pt.size, pa.string())}
        for d, dim in enumerate(p.space.dims):
            cols[dim.name] = pa.array([dim.values[k] for k in p.space.index[pt, d].tolist()])
        cols.update(
            muscle=pa.array([p.muscle] * pt.size, pa.string()),
            response=pa.array(p.repetitions[pt, rep]),
            valid=pa.array(p.valid[pt, rep]),
            trial=pa.array(rep.astype(np.int64)),
        )
        tables.append(pa.table(cols))
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"dataset {dataset.name!r}: problems differ in their parameter columns ({exc})") from None
