"""The run's Parquet result store: one file per finished cell under ``results/``.

Each file is written to a temporary name and renamed into place, so a killed
sweep leaves only whole cells behind and ``resume=`` skips exactly those.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class ResultStore:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir) / "results"
        self.dir.mkdir(parents=True, exist_ok=True)

    def done(self) -> set[str]:
        """Keys of the cells already stored."""
        return {p.stem for p in self.dir.glob("*.parquet")}

    def write(self, key: str, table: pa.Table) -> Path:
        path = self.dir / f"{key}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
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
