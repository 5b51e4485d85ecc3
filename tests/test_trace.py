"""One trace schema: every offline loop's table starts with TRACE_SCHEMA's columns, in order,
and means the same by them; a loop's own columns follow."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from neuro_opt.trace import TRACE_SCHEMA, trace_schema, trace_table


def _common(table: pa.Table) -> None:
    assert table.schema.names[:len(TRACE_SCHEMA)] == TRACE_SCHEMA.names
    assert table.schema.types[:len(TRACE_SCHEMA)] == TRACE_SCHEMA.types


def test_simulate_and_continual_write_the_trace():
    from neuro_opt.continual import TABLE_SCHEMA, continual
    from neuro_opt.datasets import load
    from neuro_opt.simulate import simulate

    problem = load("synthetic_rat", n_subjects=1, n_muscles=1)
    problem = problem[problem.keys()[0]]
    sim = simulate(problem, "gpbo", n_reps=2, n_queries=4, seed=0)
    assert sim.schema == TRACE_SCHEMA and sim.num_rows == 8
    drift = load("nonstationary", scenario="plasticity", n_subjects=1, n_sessions=2, queries_per_session=3)["rat1/TA"]
    cont = continual(drift, "gpbo", n_lineages=1, queries_per_session=3)
    _common(cont)
    assert cont.schema == TABLE_SCHEMA and TABLE_SCHEMA.names[len(TRACE_SCHEMA):] == [
        "session", "global_query", "arm", "lost_point"]
    # exploitation: the truth at the queried point over the largest truth, in every loop
    top = problem.truth.max()
    expected = problem.truth[np.asarray(sim["point"])] / top
    assert np.allclose(np.asarray(sim["exploitation"]), expected)


def test_pattern_searches_write_the_trace_with_exploitation_only_in_the_final_space():
    from neuro_opt.algorithms.hierarchical import TRACE_SCHEMA as PATTERNS, run_patterns
    from neuro_opt.datasets import load

    problem = load("two_electrode")["sim0/EMG0+EMG4@40ms"]
    table = run_patterns(problem, "hierarchical", n_reps=2, n_queries=30, seed=1,
                         hyperparameters={"stage_queries": [25]})
    _common(table)
    assert table.schema == PATTERNS
    stage = np.asarray(table["stage"])
    exploit = table["exploitation"]
    assert (stage == 1).any() and (stage == problem.n_events).any()
    final = stage == problem.n_events
    assert exploit.null_count == int((~final).sum())
    pts = np.asarray(table["point"])[final]
    assert np.allclose(np.asarray(exploit.drop_null()), problem.truth[pts] / problem.truth.max())


def test_a_loop_cannot_redefine_or_omit_a_trace_column():
    with pytest.raises(ValueError, match=r"\['best'\] are already"):
        trace_schema(("best", pa.float64()))
    with pytest.raises(ValueError, match=r"\['exploitation'\] are missing"):
        trace_table({n: [0] for n in TRACE_SCHEMA.names if n != "exploitation"})
