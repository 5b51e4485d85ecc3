"""The per-query trace every offline loop returns: one row per replicate x query.

Its own module so that every loop (:func:`neuro_opt.simulate.simulate`, the BoTorch reference
loop in :mod:`neuro_opt.reference_loop`, the continual sessions of :mod:`neuro_opt.continual` and
the pattern searches of :mod:`neuro_opt.algorithms.hierarchical`) writes the same columns,
built the same way, without importing another loop. A loop with more to say appends its own
columns after the common ones (:func:`trace_schema`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pyarrow as pa

TRACE_SCHEMA = pa.schema(
    [
        ("rep", pa.int32()),
        ("query", pa.int32()),  # 1-based
        ("point", pa.int32()),
        ("response", pa.float64()),
        ("best", pa.int32()),
        ("exploration", pa.float64()),
        ("exploitation", pa.float64()),
    ]
)


def trace_schema(*extra: tuple[str, pa.DataType]) -> pa.Schema:
    """:data:`TRACE_SCHEMA` followed by a loop's own ``(name, type)`` columns."""
    clash = [name for name, _ in extra if name in TRACE_SCHEMA.names]
    if clash:
        raise ValueError(f"trace columns {clash} are already in TRACE_SCHEMA")
    return pa.schema(list(TRACE_SCHEMA) + [pa.field(name, typ) for name, typ in extra])


def trace_table(columns: Mapping[str, Any], schema: pa.Schema = TRACE_SCHEMA) -> pa.Table:
    """A trace with ``schema``'s columns in its order, from arrays of one length (``b * Q`` rows,
    ordered by replicate, then query). An Arrow array is kept as given (e.g. with nulls)."""
    missing = [f.name for f in schema if f.name not in columns]
    if missing:
        raise ValueError(f"trace columns {missing} are missing")
    arrays = [
        columns[f.name]
        if isinstance(columns[f.name], pa.Array)
        else pa.array(np.asarray(columns[f.name]).ravel(), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)
