"""The published suite's shared parts, end to end: smoothness_sweep (Fig. S5), rho_comparison
(Fig. S6), option-specific grid keys, map recording, findings and ``python -m sweeps.report``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from neuro_opt.datasets import load
from neuro_opt.simulate import simulate, squared_correlation
from sweeps.analyses._common import spearman
from sweeps.results import read_curves
from tests.launching import launch, results, run_module, without_algorithm


def report(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run_module(cwd, "sweeps.report", *args)


def _check_findings(summary: dict, n: int) -> None:
    assert len(summary["findings"]) == n
    for f in summary["findings"]:
        assert set(f) == {"finding", "published", "holds", "numbers"}
        assert f["holds"] in (True, False, None) and "rule" in f["numbers"]


@pytest.fixture(scope="module")
def smooth_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smooth")
    proc = launch(tmp, "+exp=smoothness_sweep", "n_reps=2", "n_queries=15", "dataset.n_subjects=3", "progress=false",
                  "cluster.num_cpus=2", f"tracking.uri=sqlite:///{tmp}/mlflow.db")
    return tmp, Path(proc.stdout.strip().splitlines()[-1])


def test_smoothness_sweep_kappa_applies_to_gpbo_only_and_states_findings(smooth_run):
    tmp, path = smooth_run
    summary = json.loads(path.read_text())
    # 3 subjects x (GP-BO at 3 kappas + extensive + both readings of greedy search)
    assert summary["n_cells"] == 18 and summary["failed_cells"] == 0
    table = results(path.parent)
    kappa = dict(zip(table["algorithm"].to_pylist(), table["algorithm_kappa"].to_pylist()))
    assert kappa["extensive"] is None and kappa["greedy"] is None and kappa["greedy_line"] is None
    assert set(table.filter(pc.equal(table["algorithm"], "gpbo"))["algorithm_kappa"].to_pylist()) == {1.0, 3.0, 6.0}
    # GP-BO at each kappa is compared with the one extensive / greedy / greedy_line search
    pairs = {(c["b"], c["params"]["algorithm.kappa"]) for c in summary["comparisons"]}
    assert pairs == {(b, k) for b in ("extensive", "greedy", "greedy_line") for k in (1.0, 3.0, 6.0)}
    curves = read_curves(path.parent)  # the per-query curves live beside summary.json, not in it
    for i, g in enumerate(summary["groups"]):
        assert "per_query" not in g
        for name in ("exploration", "exploitation"):
            rows = curves.filter(pc.and_(pc.equal(curves["group"], i), pc.equal(curves["curve"], name)))
            assert rows["query"].to_pylist() == list(range(1, 16)) and rows["sem"].null_count == 0
    _check_findings(summary, 5)
    # one "ahead" finding per benchmark, naming the reading of greedy search; line numbers = its comparison's
    texts = [f["finding"] for f in summary["findings"]]
    assert any("ahead of extensive search" in s for s in texts)
    assert any("ahead of greedy search (companion code, hyperplane)" in s for s in texts)
    line = next(f for f in summary["findings"] if "ahead of greedy search (STAR Methods line)" in f["finding"])
    c = next(c for c in summary["comparisons"] if c["b"] == "greedy_line" and c["params"]["algorithm.kappa"] == 3.0)
    assert line["numbers"]["exploration_points"] == round(c["exploration_points_final"], 2)
    trend = next(f for f in summary["findings"] if "grows with smoothness" in f["finding"])["numbers"]
    assert {"spearman_rho_vs_greedy", "spearman_rho_vs_greedy_line"} <= set(trend)
    smooth = summary["smoothness"]
    assert set(smooth["final_exploration"]) == {"gpbo", "extensive", "greedy", "greedy_line"}
    # the best kappa is the argmax of the per-subject finals reported next to it
    by_k = smooth["gpbo_final_exploration_by_kappa"]
    for i, best in enumerate(smooth["best_kappa"]):
        assert by_k[str(best)][i] == max(by_k[k][i] for k in by_k)
    assert (path.parent / "figures" / "smoothness_sweep.png").stat().st_size > 20_000


def test_smoothness_report_of_a_run_launched_before_greedy_line(smooth_run):
    tmp, path = smooth_run
    older = without_algorithm(path.parent, tmp / "older", "greedy_line", config_too=True)
    proc = report(tmp, f"run={older}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((older / "summary.json").read_text())
    _check_findings(summary, 4)
    assert not any("STAR Methods" in f["finding"] for f in summary["findings"])
    assert set(summary["smoothness"]["final_exploration"]) == {"gpbo", "extensive", "greedy"}
    assert (older / "figures" / "smoothness_sweep.png").is_file()


def test_report_remakes_figures_from_folder_and_from_mlflow_run_id(smooth_run):
    tmp, path = smooth_run
    run_dir = path.parent
    before = json.loads(path.read_text())
    shutil.rmtree(run_dir / "figures")
    proc = report(tmp, f"run={run_dir}")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip().splitlines()[-1]) == path
    assert (run_dir / "figures" / "smoothness_sweep.png").is_file()
    after = json.loads(path.read_text())
    assert after["findings"] == before["findings"] and after["wall_s"] == before["wall_s"]
    # the folder gone: the run id finds the Parquet results and config logged to MLflow
    moved = tmp / "elsewhere"
    run_dir.rename(moved)
    try:
        proc = report(tmp, f"run={before['mlflow_run_id']}", f"tracking.uri=sqlite:///{tmp}/mlflow.db")
        assert proc.returncode == 0, proc.stderr
        remade = Path(proc.stdout.strip().splitlines()[-1])
        assert remade.parent.name == f"report_{before['mlflow_run_id']}"
        assert json.loads(remade.read_text())["findings"] == before["findings"]
        assert (remade.parent / "figures" / "smoothness_sweep.png").is_file()
    finally:
        moved.rename(run_dir)
    bad = report(tmp, "run=no_such_run")
    assert bad.returncode == 2 and "neither a folder nor a run id" in bad.stderr
    assert report(tmp, "nonsense").returncode == 2


def test_rho_comparison_records_maps_and_r2(tmp_path):
    proc = launch(tmp_path, "+exp=rho_comparison", "n_reps=2", "n_queries=12", "progress=false", "cluster.num_cpus=2",
                  f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    path = Path(proc.stdout.strip().splitlines()[-1])
    summary = json.loads(path.read_text())
    _check_findings(summary, 2)
    table = results(path.parent)
    assert table["map_r2"].null_count == 0
    last = table.filter(pc.equal(table["query"], 12))
    assert last["posterior"].null_count == 0 and table["posterior"].null_count == table.num_rows - last.num_rows
    # the recorded r2 is the squared correlation of the recorded final map with the truth
    row = last.filter(pc.equal(last["dataset"], "synthetic_nhp")).slice(0, 1).to_pylist()[0]
    truth = load("synthetic_nhp", n_subjects=2, n_muscles=3, n_repetitions=20)[row["muscle"]].truth
    assert len(row["posterior"]) == truth.size
    r = np.corrcoef(np.asarray(row["posterior"], float), truth)[0, 1]
    assert row["map_r2"] == pytest.approx(r * r, abs=1e-4)
    assert (path.parent / "figures" / "rho_comparison.png").stat().st_size > 20_000


def test_map_recording_only_for_models_and_squared_correlation():
    p = load("gamma_smoothness", n_subjects=1, n_values=4)["gamma1/response"]
    ext = simulate(p, "extensive", n_reps=2, n_queries=5, seed=0, record_map=True)
    assert ext["map_r2"].null_count == ext.num_rows and ext["posterior"].null_count == ext.num_rows
    plain = simulate(p, "gpbo", n_reps=2, n_queries=5, seed=0)
    assert "map_r2" not in plain.column_names
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    maps = np.array([[2.0, 4.0, 6.0, 8.0], [4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert squared_correlation(maps, truth) == pytest.approx([1.0, 1.0, 0.0])


def test_stratified_betas_spread_mean_smoothness():
    ind = [q.meta["beta_mean"] for q in load("gamma_smoothness", n_subjects=10, seed=3)]
    strat = [q.meta["beta_mean"] for q in load("gamma_smoothness", n_subjects=10, seed=3, beta_sampling="stratified")]
    assert np.ptp(strat) > 2.5 > np.ptp(ind)
    with pytest.raises(ValueError, match="beta_sampling"):
        load("gamma_smoothness", beta_sampling="sorted")


def test_spearman_small_samples_use_exact_permutation_p():
    rho, p = spearman([1, 2, 3, 4], [4, 3, 2, 1])
    assert rho == -1.0 and p == pytest.approx(2 / 24)  # two of 24 orderings are as extreme
    assert np.isnan(spearman([1, 2], [2, 1])[1])
