"""The per-query trace every offline loop returns: one row per replicate x query.

Its own module so that every loop (:func:`neuro_opt.simulate.simulate`, the BoTorch reference
loop in :mod:`neuro_opt.gp.reference`) writes the same schema without importing another loop.
"""

from __future__ import annotations

import pyarrow as pa

TRACE_SCHEMA = pa.schema([
    ("rep", pa.int32()),
    ("query", pa.int32()),  # 1-based
    ("point", pa.int32()),
    ("response", pa.float64()),
    ("best", pa.int32()),
    ("exploration", pa.float64()),
    ("exploitation", pa.float64()),
])
