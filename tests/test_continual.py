"""Continual learning (Fig. 5): the session loop of neuro_opt.continual, and the
continual_learning experiment end to end through the real launcher (Ray + MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from mlflow.tracking import MlflowClient

from neuro_opt.continual import continual, session_truths
from neuro_opt.datasets import load
from sweeps.results import read_curves
from tests.launching import launch

S, Q, L = 3, 5, 3


@pytest.fixture(scope="module")
def problem():
    return load("nonstationary", scenario="plasticity", n_subjects=1, n_sessions=S, queries_per_session=Q)["rat1/TA"]


def _arrays(table, column):
    return table[column].to_numpy().reshape(L, S, Q)


@pytest.mark.parametrize("algorithm", ["gpbo", "extensive", "greedy"])
def test_shape_order_and_determinism(problem, algorithm):
    t = continual(problem, algorithm, n_lineages=L, seed=7, noise=0.1)
    assert t.num_rows == L * S * Q
    np.testing.assert_array_equal(_arrays(t, "session")[0, :, 0], np.arange(1, S + 1))
    np.testing.assert_array_equal(_arrays(t, "query")[1, 1], np.arange(1, Q + 1))
    np.testing.assert_array_equal(_arrays(t, "global_query")[2].ravel(), np.arange(1, S * Q + 1))
    assert set(t["arm"].to_pylist()) == {"standard"} and set(t["lost_point"].to_pylist()) == {-1}
    for c in ("exploration", "exploitation"):
        v = t[c].to_numpy()
        assert np.all((v >= 0) & (v <= 1 + 1e-12))
    assert continual(problem, algorithm, n_lineages=L, seed=7, noise=0.1).equals(t)
    assert not continual(problem, algorithm, n_lineages=L, seed=8, noise=0.1)["point"].equals(t["point"])


def test_lineages_are_independent_of_each_other(problem):
    """Lineage k draws from its own stream: running fewer lineages leaves it unchanged."""
    three = continual(problem, "extensive", n_lineages=3, seed=3, noise=0.1)
    two = continual(problem, "extensive", n_lineages=2, seed=3, noise=0.1)
    assert three.slice(0, 2 * S * Q).equals(two)


@pytest.mark.parametrize("algorithm", ["gpbo", "extensive", "greedy"])
def test_each_session_starts_from_what_the_previous_one_learned(problem, algorithm):
    chained = continual(problem, algorithm, n_lineages=L, seed=1, noise=0.1)
    # the next prior's argmax is what the session believed best: GP-BO's posterior-mean argmax,
    # the benchmarks' best observed point; a prior's argmax is the first query of the next session
    first, best = _arrays(chained, "point")[:, 1:, 0], _arrays(chained, "best")[:, :-1, -1]
    np.testing.assert_array_equal(first, best)
    cold = continual(problem, algorithm, n_lineages=L, seed=1, noise=0.1, chain=False)
    np.testing.assert_array_equal(_arrays(cold, "point")[:, 0], _arrays(chained, "point")[:, 0])  # same session 1
    assert not np.array_equal(_arrays(cold, "point")[:, 1, 0], first[:, 0])


def test_a_first_session_prior_sets_the_first_query(problem):
    prior = np.zeros(problem.space.n_points)
    prior[5] = 1.0
    for algorithm in ("gpbo", "extensive", "greedy"):  # greedy: the start point is its first query
        t = continual(problem, algorithm, n_lineages=L, seed=2, prior=prior, n_sessions=1)
        assert set(t["point"].to_numpy().reshape(L, Q)[:, 0].tolist()) == {5}


def test_electrode_loss_is_scored_against_the_truth_in_force(problem):
    t = continual(problem, "greedy", n_lineages=L, seed=4, noise=0.0, loss_session=2)
    truths, lost = session_truths(problem, S, loss_session=2)
    assert lost == int(np.argmax(problem.sessions[1])) and truths[1:, lost].max() == 0 and truths[0, lost] > 0
    assert set(t["arm"].to_pylist()) == {"electrode_loss"}
    lost_col, session = _arrays(t, "lost_point"), _arrays(t, "session")
    assert np.all(lost_col[session >= 2] == lost) and np.all(lost_col[session == 1] == -1)
    pts, resp, best = _arrays(t, "point"), _arrays(t, "response"), _arrays(t, "best")
    explore, exploit = _arrays(t, "exploration"), _arrays(t, "exploitation")
    for s in range(S):
        truth = truths[s]
        np.testing.assert_allclose(resp[:, s], truth[pts[:, s]])
        np.testing.assert_allclose(explore[:, s], truth[best[:, s]] / truth.max())
        np.testing.assert_allclose(exploit[:, s], truth[pts[:, s]] / truth.max())
    assert np.all(exploit[:, 1:][pts[:, 1:] == lost] == 0)
    with pytest.raises(ValueError, match="loss_session"):
        continual(problem, "greedy", n_lineages=1, loss_session=S + 1)
    with pytest.raises(ValueError, match="sessions"):
        continual(problem, "greedy", n_lineages=1, n_sessions=S + 1)


def test_config_errors_name_the_key():
    from hydra import compose, initialize_config_dir

    from sweeps.grid import CONF_DIR
    from sweeps.runner import build_cells
    from sweeps.schema import ConfigError

    for overrides, message in ((["params.loss_session=9"], r"params.loss_session=9.*2\.\.8"),
                               (["params.loss_session=1"], "params.loss_session=1"),
                               (["dataset.queries_per_session=0"], "queries_per_session"),
                               (["dataset.n_sessions=0"], "n_sessions"),
                               (["n_queries=0"], "n_queries=0"),
                               (["n_reps=0"], "n_reps=0"),
                               (["grid.params.arm=[standard,fire]"], "params.arm='fire'"),
                               (["grid.algorithm=[gpbo,nope]"], "nope"),
                               (["dataset=nonstationary_drift"], "needs a truth per session"),
                               (["dataset.n_subjects=1"], "population prior")):
        with pytest.raises(ConfigError, match=message):
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name="config", overrides=["+exp=continual_learning", *overrides])
            build_cells(cfg, ["+exp=continual_learning", *overrides])


def test_continual_learning_experiment_end_to_end(tmp_path):
    tiny = ["+exp=continual_learning", "dataset.n_subjects=2", "n_reps=2", "dataset.n_sessions=3",
            "dataset.queries_per_session=4", "params.loss_session=2", "progress=false"]
    proc = launch(tmp_path, *tiny, "cluster.num_cpus=2", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    summary = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    assert summary["failed_cells"] == 0 and summary["n_cells"] == 3 * 2 * 2
    groups = {(g["params"]["algorithm"], g["params"]["arm"]): g for g in summary["groups"]}
    assert set(groups) == {(a, r) for a in ("gpbo", "extensive", "greedy") for r in ("standard", "electrode_loss")}
    for g in groups.values():
        assert g["n"] == 4 and "per_query" not in g
        assert {"exploration_s1", "exploration_s3", "exploitation_final"} <= set(g["metrics"])
    curves = read_curves(Path(summary["run_dir"]))  # per-query curves beside summary.json, over the global query
    for i in range(len(summary["groups"])):
        assert curves.filter(pc.and_(pc.equal(curves["group"], i), pc.equal(curves["curve"], "exploration"))
                             )["query"].to_pylist() == list(range(1, 3 * 4 + 1))
    cmp = [c for c in summary["comparisons"] if c["b"] == "greedy" and c["params"]["arm"] == "standard"][0]
    assert len(cmp["exploration"]["points_by_session"]) == 3 and cmp["exploration"]["n"] == 3
    findings = summary["findings"]
    assert len(findings) == 7
    for f in findings:
        assert isinstance(f["holds"], bool) and f["published"] and "rule" in f["numbers"]
    assert (Path(summary["run_dir"]) / "figures" / "continual.png").stat().st_size > 10_000
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("continual_learning").experiment_id])
    assert sum(r.data.tags.get("mlflow.parentRunId") == summary["mlflow_run_id"] for r in runs) == 6
