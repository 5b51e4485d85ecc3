"""Arrow results tables as the reports read them: row selection, distinct groups, per-run curves."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def select(table: pa.Table, where: dict) -> pa.Table:
    """Rows whose columns equal the given values (None matches null)."""
    for c, v in where.items():
        col = table[c]
        mask = pc.is_null(col) if v is None else pc.equal(col, pa.scalar(v, table.schema.field(c).type))
        table = table.filter(pc.fill_null(mask, False))
    return table


def unique_rows(table: pa.Table, cols: list[str]) -> list[tuple]:
    if not cols:
        return [()]
    seen = dict.fromkeys(zip(*[table[c].to_pylist() for c in cols]))
    return sorted(seen, key=lambda r: tuple((str(type(v)), v) for v in r))


def run_curves(sub: pa.Table, column: str) -> np.ndarray:
    """``runs x queries`` for every (cell, rep) run in ``sub``."""
    cell = sub["cell"].to_numpy(zero_copy_only=False)
    rep = sub["rep"].to_numpy()
    q = sub["query"].to_numpy()
    vals = sub[column].to_numpy()
    run_ids = {r: i for i, r in enumerate(sorted(set(zip(cell, rep))))}
    idx = np.array([run_ids[r] for r in zip(cell, rep)])
    out = np.full((len(run_ids), int(q.max())), np.nan)
    out[idx, q - 1] = vals
    return out
