"""TBFM vs LSSM vs AE-LSTM vs state-agnostic TBFM (seed 004, Section 4.2) as findings.

The model orderings are judged by the TBFM kind's generic ``orderings`` block (``report.order``);
this analysis puts their absolute R2 in context: each model's test R2 beside the evoked-response
predictor's (the mean training response forecast for every test trial), and each model's R2 beyond
the evoked response (:mod:`sweeps.analyses._tbfm_r2`).

Reads the Parquet table only (``python -m sweeps.report`` reruns it).
"""

from __future__ import annotations

from sweeps.analyses._tbfm_r2 import r2_context


def analyze(ctx) -> dict:
    return {"findings": [r2_context(ctx.table.to_pylist(), model="tbfm")]}
