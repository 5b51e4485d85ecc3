"""What a launch keeps in its run folder: one Parquet file per finished cell under
``results/``, and ``launch.json`` (the design it ran and its MLflow parent run).

Each result file is written to a temporary name, fsynced and renamed into place (the folder
fsynced too), so a killed sweep leaves only whole cells behind and ``resume=`` skips exactly
those; a damaged file (a disk that lost it) is dropped with a warning and its cell recomputed.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# top-level config keys a resumed launch may change: how it runs, not what it computes
RESUMABLE_KEYS = ("resume", "progress", "cluster", "tracking")
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")


class ResultStore:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir) / "results"
        self.dir.mkdir(parents=True, exist_ok=True)

    def done(self) -> set[str]:
        """Keys of the cells already stored whole; a damaged file is removed (with a warning) so its
        cell runs again."""
        keys = set()
        for p in sorted(self.dir.glob("*.parquet")):
            try:
                pq.read_metadata(p)
            except (OSError, pa.ArrowException) as exc:
                print(
                    f"warning: {p} is damaged ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); "
                    f"its cell is computed again",
                    file=sys.stderr,
                )
                p.unlink()
                continue
            keys.add(p.stem)
        for tmp in self.dir.glob("*.parquet.tmp"):  # a write the process did not finish
            tmp.unlink()
        return keys

    def write(self, key: str, table: pa.Table) -> Path:
        path = self.dir / f"{key}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.dir)
        return path

    def read(self) -> pa.Table:
        files = sorted(self.dir.glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no results in {self.dir}")
        return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def coord_columns(table: pa.Table, cell_key: str, coords: dict) -> pa.Table:
    """Add the cell key and its grid coordinates as constant columns."""
    n = table.num_rows
    table = table.append_column("cell", pa.array([cell_key] * n, pa.string()))
    for k, v in coords.items():
        name = k.replace(".", "_")
        if v is None:  # a grid key that does not apply to this cell (see grid.expand)
            arr = pa.nulls(n)
        elif isinstance(v, bool):
            arr = pa.array([v] * n, pa.bool_())
        elif isinstance(v, (int, float)):
            arr = pa.array([float(v)] * n, pa.float64())  # one numeric type per grid key, whatever the literal
        elif isinstance(v, str):
            arr = pa.array([v] * n, pa.string())
        else:
            arr = pa.array([json.dumps(v, sort_keys=True)] * n, pa.string())
        table = table.append_column(name, arr)
    return table


def _strict(o):
    """``o`` with numpy scalars and arrays as plain Python and every non-finite float as None."""
    if isinstance(o, dict):
        return {k: _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    if hasattr(o, "tolist") and type(o).__module__ == "numpy":  # numpy scalar or array
        return _strict(o.tolist())
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def write_summary(path: str | Path, summary: dict, default=None) -> Path:
    """Write ``summary.json`` as strict JSON: a NaN or infinite number (a metric a run could not
    compute, such as queries to reach a benchmark that was never reached) becomes null, which every
    JSON reader accepts (``json.dumps`` would write the non-standard ``NaN``). ``default`` converts
    other objects (e.g. ``str``); without it they raise ``TypeError``."""
    path = Path(path)
    path.write_text(json.dumps(_strict(summary), indent=1, allow_nan=False, default=default))
    return path


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flat(d, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


class LaunchRecord:
    """``launch.json`` in a run folder: the design a launch ran (its resolved config without
    :data:`RESUMABLE_KEYS`), its MLflow parent run, and the composed config files Hydra wrote,
    so a resume can be held to the same design and, if refused, leave the folder as it was."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "launch.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else None

    @staticmethod
    def design(config: dict) -> dict:
        return {k: v for k, v in config.items() if k not in RESUMABLE_KEYS}

    def differences(self, config: dict) -> list[str]:
        """``key (old -> new)`` for every dotted key whose value differs from the recorded design
        (empty: the same design, or no record)."""
        if self.data is None:
            return []
        old, new = _flat(self.data["design"]), _flat(json.loads(json.dumps(self.design(config), default=str)))
        return [
            f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
        ]

    def restore_hydra(self) -> None:
        """Put back the composed config files Hydra overwrote at the start of a refused resume."""
        hydra = self.path.parent / ".hydra"
        for name, text in ((self.data or {}).get("hydra") or {}).items():
            if text is not None and hydra.is_dir():
                (hydra / name).write_text(text)

    @property
    def parent_run_id(self) -> str | None:
        return (self.data or {}).get("mlflow_run_id")

    def save(self, config: dict, parent_run_id: str) -> None:
        hydra = self.path.parent / ".hydra"
        kept = (self.data or {}).get("hydra") or {}
        files = {n: (hydra / n).read_text() if (hydra / n).is_file() else None for n in HYDRA_FILES}
        self.data = {
            "design": json.loads(json.dumps(self.design(config), default=str)),
            "mlflow_run_id": parent_run_id,
            "hydra": kept or files,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)
