"""Fig. S7 (prior quantity x quality): paired truths across prior conditions, the no-prior
condition by design, and +exp=prior_study end to end with its findings and sweeps.report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from neuro_opt.datasets import load
from neuro_opt.simulate import simulate
from tests.launching import launch, results, run_module, without_algorithm

SMALL = {"n_subjects": 3, "n_values": 3, "seed": 5}


def test_truth_of_every_subject_is_the_same_in_every_prior_condition():
    conditions = [(0, 0.0), (2, -1.0), (2, 0.66), (6, 0.33), (["x", "g3"], 1.0)]
    sets = [list(load("prior_quality", prior_dims=q, prior_r=r, **SMALL)) for q, r in conditions]
    for s in range(SMALL["n_subjects"]):
        ref = sets[0][s]
        for ds in sets[1:]:
            p = ds[s]
            np.testing.assert_array_equal(p.truth, ref.truth)
            assert p.meta["peaks"] == ref.meta["peaks"] and p.meta["betas"] == ref.meta["betas"]
    # for one quantity, every quality informs the same dimensions with the same noise draw
    a, b = (load("prior_quality", prior_dims=3, prior_r=r, **SMALL) for r in (0.33, 0.66))
    for pa_, pb in zip(a, b):
        assert pa_.meta["prior_dims"] == pb.meta["prior_dims"] and not np.array_equal(pa_.prior, pb.prior)
    # the seed still changes the truth
    other = load("prior_quality", prior_dims=2, prior_r=0.0, **{**SMALL, "seed": 6})
    assert any(not np.array_equal(p.truth, q.truth) for p, q in zip(sets[0], other))


def test_no_prior_by_design_runs_with_use_prior_and_other_missing_priors_still_fail():
    none = next(iter(load("prior_quality", prior_dims=0, **SMALL)))
    assert none.prior is None and none.meta["prior_dims"] == []
    for alg in ("gpbo", "extensive", "greedy"):
        trace = simulate(none, alg, n_reps=2, n_queries=5, seed=0, use_prior=True)
        assert trace.num_rows == 10
    plain = next(iter(load("gamma_smoothness", n_subjects=1, n_dims=2)))
    assert plain.prior is None
    with pytest.raises(ValueError, match="has no prior"):
        simulate(plain, "gpbo", n_reps=1, n_queries=3, use_prior=True)


@pytest.mark.parametrize("exp,ok", [("prior_study", True), ("noise_sweep", False)])
def test_launch_validation_accepts_only_the_no_prior_condition(exp, ok):
    from hydra import compose, initialize_config_dir

    from sweeps.grid import CONF_DIR
    from sweeps.runner import build_cells
    from sweeps.schema import ConfigError

    overrides = [f"+exp={exp}", "use_prior=true", "dataset.n_subjects=1", "grid.algorithm=[extensive]"]
    overrides += ["grid.dataset.prior_dims=[0]", "grid.dataset.prior_r=[0.0]"] if ok else \
        ["dataset.n_muscles=1", "grid.noise=[0.0]"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    if ok:
        assert len(build_cells(cfg, overrides)[1]) == 1
    else:
        with pytest.raises(ConfigError, match="has no prior map"):
            build_cells(cfg, overrides)


def test_tiny_prior_study_states_findings_draws_the_figure_and_reports_again(tmp_path):
    proc = launch(tmp_path, "+exp=prior_study", "n_queries=8", "dataset.n_subjects=2", "dataset.n_values=2",
                  "grid={algorithm.kappa:[1.0,3.0]}", "grid.dataset.prior_dims=[0,6]",
                  "grid.dataset.prior_r=[-1.0,1.0]", "progress=false", "cluster.num_cpus=2",
                  f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    path = Path(proc.stdout.strip().splitlines()[-1])
    summary = json.loads(path.read_text())
    # 2 subjects x 2 quantities x 2 qualities x (GP-BO at 2 kappas + extensive + both readings of greedy search)
    assert summary["n_cells"] == 2 * 2 * 2 * 5 and summary["failed_cells"] == 0
    table = results(path.parent)
    assert set(table["dataset_prior_dims"].to_pylist()) == {0.0, 6.0}
    assert len(summary["findings"]) == 7  # quality, quantity, recovery, ahead of each of 3 benchmarks, kappa
    ahead = [f["finding"] for f in summary["findings"] if "in every condition" in f["finding"]]
    assert [s.split(" ahead of ")[1] for s in ahead] == [
        "prior-ranked extensive search in every condition",
        "prior-started greedy search (companion code, hyperplane) in every condition",
        "prior-started greedy search (STAR Methods line) in every condition",
    ]
    assert {(c["a"], c["b"]) for c in summary["comparisons"]} == {
        ("gpbo_prior", b) for b in ("extensive", "greedy", "greedy_line")
    }
    for f in summary["findings"]:
        assert set(f) == {"finding", "published", "holds", "numbers"}
        assert f["holds"] in (True, False, None) and "rule" in f["numbers"]
    study = summary["prior_study"]
    assert study["quantities"] == [0, 6] and study["qualities"] == [-1.0, 1.0]
    gp = np.array(study["gpbo_auc"])
    assert gp.shape == (2, 2) and np.all(gp[0] == gp[0, 0])  # no prior: one baseline for every r
    assert set(study["gpbo_minus"]) == {"extensive", "greedy", "greedy_line"}
    fig = path.parent / "figures" / "prior_study.png"
    assert fig.stat().st_size > 20_000

    shutil.rmtree(path.parent / "figures")
    again = run_module(tmp_path, "sweeps.report", f"run={path.parent}")
    assert again.returncode == 0, again.stderr
    assert fig.is_file()
    assert json.loads(path.read_text())["findings"] == summary["findings"]

    # a run launched before greedy_line was in the experiment: reported with the benchmarks it has
    older = without_algorithm(path.parent, tmp_path / "older", "greedy_line", config_too=True)
    proc = run_module(tmp_path, "sweeps.report", f"run={older}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    old = json.loads((older / "summary.json").read_text())
    assert len(old["findings"]) == 6 and not any("STAR Methods" in f["finding"] for f in old["findings"])
    assert set(old["prior_study"]["gpbo_minus"]) == {"extensive", "greedy"}
    assert (older / "figures" / "prior_study.png").is_file()
