"""Hierarchical GP-BO (seed 003): the two-electrode dataset, the stage-2 prior built from stage 1,
hierarchical against flat GP-BO, and a tiny experiment through the real launcher (Ray + MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from neuro_opt.algorithms import make
from neuro_opt.algorithms.hierarchical import HierarchicalGPBO, make_method, run_patterns
from neuro_opt.datasets import load
from neuro_opt.datasets.two_electrode import SynergyObjective, pattern_space
from neuro_opt.gp.product import ProductGP
from tests.launching import launch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def problem():
    return load("two_electrode")["sim0/EMG0+EMG4@40ms"]


# ----------------------------------------------------------------------------- dataset
def test_dataset_has_the_papers_layout(problem):
    p = problem
    assert p.channels.grid_shape == (2, 5) and p.channels.n_points == 10
    assert p.muscles == ("EMG0", "EMG1", "EMG2", "EMG3", "EMG4") and p.synergy == (0, 4)
    assert p.recorded_delays_ms == (0, 10, 20, 40, 60, 80, 100)
    assert p.space.names == ("x1", "y1", "x2", "y2", "delay_ms") and p.space.n_points == 10 * 10 * 3
    assert p.single_peaks.shape == (10, 10, 5)  # channels x trials x muscles
    assert p.repetitions.shape == (300, 10)  # 10 trials of every pattern searched
    assert p.pair_objective_all.shape == (10, 10, 7, 10)  # every ordered pair x every recorded delay
    assert p.pair_mean.shape[:4] == (10, 10, 7, 5)
    np.testing.assert_allclose(p.truth, p.repetitions.mean(1))
    # point numbering: (c1 * 10 + c2) * 3 + d, channels numbered x * 5 + y
    pt = (7 * 10 + 2) * 3 + 1
    assert p.space.values_of(pt) == {"x1": 1, "y1": 2, "x2": 0, "y2": 2, "delay_ms": 40}
    np.testing.assert_allclose(p.repetitions[pt], p.pair_objective_all[7, 2, 3])
    # EMG-sized responses (V) and trial noise of the size the paper's noise bounds encompass
    assert 0.01 < p.truth.max() < 0.06 and p.single_peaks.max() < 0.05
    assert 1e-4 < np.median(p.repetitions.std(1, ddof=1)) < 1.5e-3
    # one pattern stands out (min_margin)
    top2 = np.sort(p.truth)[-2:]
    assert top2[1] >= 1.1 * top2[0]
    # same seed, same data; the generator's arguments are checked
    again = load("two_electrode")["sim0/EMG0+EMG4@40ms"]
    np.testing.assert_array_equal(again.repetitions, p.repetitions)
    with pytest.raises(ValueError, match="search_delays_ms"):
        load("two_electrode", search_delays_ms=[20, 30])
    with pytest.raises(ValueError, match="synergy"):
        load("two_electrode", synergy=["EMG0", "EMG9"])


def test_pair_responses_hold_interactions_the_single_responses_do_not_predict(problem):
    p = problem
    t, dt = p.t_ms, 2.0
    single = p.single_mean.astype(float)  # C x M x T
    C, M, T = single.shape
    # linear prediction: the first channel's single response plus the second's, shifted by the delay
    pred = np.empty((C, C, 7, M, T))
    for d, delay in enumerate(p.recorded_delays_ms):
        s = int(delay / dt)
        shifted = np.zeros_like(single)
        shifted[..., s:] = single[..., :T - s]
        pred[:, :, d] = single[:, None] + shifted[None, :]
    ratio = p.pair_mean.max(-1) / pred.max(-1)  # C x C x D x M peak ratio, measured / linear
    strong = pred.max(-1) > 0.3 * pred.max()
    assert ratio[strong].max() > 1.15  # facilitation
    assert ratio[strong].min() < 0.8  # occlusion
    objective = p.objective(p.pair_mean.astype(float), t) / p.objective(pred, t)  # C x C x D
    assert objective.max() > 1.25 and objective.min() < 0.75
    same = np.arange(C)
    assert np.all(ratio[same, same, 0][strong[same, same, 0]] < 0.75)  # same channel, no delay: refractory
    # the interactions depend on the delay: the ratio of a pair changes with it
    spread = ratio.max(axis=2) - ratio.min(axis=2)
    assert np.median(spread[strong.any(axis=2)]) > 0.1
    # and change which pattern is best: the additive single-electrode prediction ranks patterns differently
    sp = p.single_truth()
    additive = (sp[:, 0][:, None] + sp[:, 4][None, :]).ravel()
    truth40 = p.truth.reshape(C, C, 3)[:, :, 1].ravel()
    assert 0.5 < np.corrcoef(additive, truth40)[0, 1] < 0.999
    assert not np.allclose(np.argsort(additive)[-10:], np.argsort(truth40)[-10:])


def test_objective_is_the_two_muscle_synergy_at_the_target_delay(problem):
    t = problem.t_ms
    obj = SynergyObjective(first=0, second=4, delay_ms=40.0, window_ms=150.0)

    def bump(center, amp):
        return amp * np.exp(-0.5 * ((t - center) / 6.0) ** 2)

    r = np.zeros((3, 5, len(t)))
    r[0, 0], r[0, 4] = bump(30, 1.0), bump(70, 2.0)  # 40 ms apart: the peaks add
    r[1, 0], r[1, 4] = bump(30, 1.0), bump(90, 2.0)  # 60 ms apart: they do not
    r[2, 0], r[2, 4] = bump(170, 1.0), bump(210 - 2, 2.0)  # EMG0 peak after the 150 ms window
    v = obj(r, t)
    assert v[0] == pytest.approx(3.0, rel=1e-6)
    assert v[1] == pytest.approx(2.0, rel=1e-2)
    assert v[2] < 0.1
    # the dataset's trials are this objective of each trial's envelopes: the mean of the pattern
    # with the best pair at the target delay beats the same pair 20 ms off (without interaction)
    gain = problem.gain[[0, 4]]  # muscles x C x C x D
    quiet = np.argwhere(np.all(np.abs(gain[:, :, :, [2, 3, 4]] - 1) < 0.05, axis=(0, 3)))
    sp = problem.single_truth()
    c1, c2 = max(quiet, key=lambda cc: sp[cc[0], 0] + sp[cc[1], 4])
    at = problem.pair_objective_all[c1, c2].mean(-1)  # by recorded delay
    assert at[3] > at[2] and at[3] > at[4]  # 40 ms beats 20 and 60 ms


# ----------------------------------------------------------------------------- stage 2 prior
def test_stage2_prior_mean_is_a1_mu1_plus_a2_mu2_on_hand_built_inputs():
    space = pattern_space(2, xs=(0, 1), ys=(0, 1, 2), delays_ms=(20, 40))  # 6 channels x 6 x 2 delays
    C = 6
    mu1 = np.array([0.1, 0.5, 0.2, 0.9, 0.3, 0.4])
    mu2 = np.array([0.7, 0.1, 0.6, 0.2, 0.8, 0.05])
    idx = space.index
    c1, c2 = idx[:, 0] * 3 + idx[:, 1], idx[:, 2] * 3 + idx[:, 3]
    H = np.stack([mu1[c1], mu2[c2]], axis=-1)[None]  # 1 x P x 2
    from neuro_opt.gp.product import split_inputs
    S, T = split_inputs(space, time_unit_ms=1.0)
    gp = ProductGP(S, T, 1, n_basis=2, weight_mean=[0.7, 1.3], rho_time=(5.0, 20.0))
    gp.set_scale(1.0)
    gp.set_basis(H)
    mean, var = gp.posterior()
    np.testing.assert_allclose(mean[0].numpy(), 0.7 * mu1[c1] + 1.3 * mu2[c2])
    assert mean.shape == (1, C * C * 2) and bool((var > 0).all())
    # the weights are refit: responses built as 0.4 mu1 + 1.6 mu2 bring the MAP weights there
    gp = ProductGP(S, T, 1, n_basis=2, weight_mean=[1.0, 1.0], weight_sd=10.0, rho_time=(5.0, 20.0),
                   noise=(1e-3, 2e-3), outputscale=(1e-3, 1e-2))
    gp.set_scale(1.0)
    gp.set_basis(H)
    rng = np.random.default_rng(0)
    for pt in rng.choice(space.n_points, 20, replace=False):
        gp.observe([pt], [0.4 * mu1[c1[pt]] + 1.6 * mu2[c2[pt]]])
        gp.fit()
    np.testing.assert_allclose(gp.a[0].numpy(), [0.4, 1.6], atol=0.05)
    np.testing.assert_allclose(gp.posterior()[0][0].numpy(), 0.4 * mu1[c1] + 1.6 * mu2[c2], atol=0.02)


def test_stage2_starts_from_stage1_posterior(problem):
    opt = HierarchicalGPBO(problem, n_reps=3, seed=0, kappa=3.0, stage_queries=12, fit_steps=5,
                           weight_mean=[0.8, 1.2])
    rng = np.random.default_rng(1)
    for _ in range(12):
        ev, x = opt.ask()
        assert ev.tolist() == [1, 1, 1] and x.max() < 10  # channels
        y, peaks = problem.sample(ev, x, rng)
        opt.tell(ev, x, y, peaks)
    assert opt.stage.tolist() == [2, 2, 2]
    # the basis is stage 1's posterior means (V) of EMG0 at c1 and of EMG4 at c2, for every pattern
    m1 = opt.gp1.posterior()[0].numpy().reshape(3, 2, 10) * opt.gp1.scale.numpy().reshape(3, 2, 1)
    idx = problem.space.index
    c1, c2 = idx[:, 0] * 5 + idx[:, 1], idx[:, 2] * 5 + idx[:, 3]
    gp2 = opt.gps[1]
    scale = gp2.scale.numpy()[:, None]
    np.testing.assert_allclose(gp2.H[..., 0].numpy() * scale, m1[:, 0, c1])
    np.testing.assert_allclose(gp2.H[..., 1].numpy() * scale, m1[:, 1, c2])
    # before any pair is queried the stage-2 posterior mean is that prior with the prior weights
    mean, _ = opt._posterior(2)
    np.testing.assert_allclose(mean * scale, 0.8 * m1[:, 0, c1] + 1.2 * m1[:, 1, c2])
    assert np.allclose(mean.max(1), 1.0)  # normalized to the prior's best
    # ... so the first pair queried is the prior's best, at one of its (tied) delays
    ev, x = opt.ask()
    assert ev.tolist() == [2, 2, 2]
    assert np.allclose(mean[np.arange(3), x], mean.max(1))
    assert np.array_equal(opt.best() // 3, x // 3)  # the believed best pair, too


def test_recursion_to_three_events():
    """Stage j's prior is a1 * (stage j-1 mean of the first j-1 events) + a2 * (stage-1 mean at c_j)."""

    class ThreeEvents:
        n_events, muscles, synergy = 3, ("A", "B"), (0, 1)

        def __init__(self):
            self.spaces = [pattern_space(k, xs=(0, 1), ys=(0, 1), delays_ms=(20, 40)) for k in (1, 2, 3)]
            self.amp = np.array([[0.2, 1.0, 0.4, 0.1], [0.5, 0.2, 1.0, 0.3]])  # muscle x channel
            self.truth = self.value(3, np.arange(self.spaces[2].n_points))

        def pattern_space(self, k):
            return self.spaces[k - 1]

        def value(self, k, pts):
            idx = self.spaces[k - 1].index[pts]
            ch = [idx[:, 2 * i] * 2 + idx[:, 2 * i + 1] for i in range(k)]
            return self.amp[0, ch[0]] + sum(self.amp[1, c] for c in ch[1:])

        def sample(self, n_events, points, rng):
            out = np.array([self.value(int(k), np.array([p]))[0] for k, p in zip(n_events, points)])
            peaks = np.full((len(points), 2), np.nan)
            one = n_events == 1
            peaks[one] = self.amp[:, points[one]].T
            return out + rng.normal(0, 1e-3, len(out)), peaks

    prob = ThreeEvents()
    opt = HierarchicalGPBO(prob, n_reps=2, seed=0, stage_queries=[6, 8], fit_steps=3, noise_min=1e-3,
                           noise_max=1e-2, rho_time=(5.0, 20.0), time_unit_ms=1.0)
    rng = np.random.default_rng(0)
    stages = []
    for _ in range(20):
        ev, x = opt.ask()
        stages.append(ev[0])
        y, peaks = prob.sample(ev, x, rng)
        opt.tell(ev, x, y, peaks)
    assert stages == [1] * 6 + [2] * 8 + [3] * 6
    gp3 = opt.gps[2]
    prev = opt.stage_mean(2)  # b x 32, frozen since stage 2 ended
    mu = opt.stage1_means()
    idx = prob.spaces[2].index
    prefix = [prob.spaces[1].point_of_index(list(g[:4]) + [g[6]]) for g in idx]
    last = idx[:, 4] * 2 + idx[:, 5]
    np.testing.assert_allclose(gp3.H[..., 0].numpy() * gp3.scale.numpy()[:, None], prev[:, prefix], rtol=1e-6)
    np.testing.assert_allclose(gp3.H[..., 1].numpy() * gp3.scale.numpy()[:, None], mu[:, 1, last], rtol=1e-6)
    assert opt.best().max() < prob.spaces[2].n_points


# ----------------------------------------------------------------------------- hierarchical vs flat
def test_hierarchical_beats_flat_on_a_fixed_seed_small_case(problem):
    hp = dict(kappa=3.0, noise_min=5e-4, noise_max=1e-3, noise_units="raw", rho_time=(5.0, 20.0), time_unit_ms=1.0,
              fit_steps=10)
    hier = run_patterns(problem, "hierarchical", n_reps=4, n_queries=35, seed=3,
                        hyperparameters={**hp, "stage_queries": 25})
    flat = run_patterns(problem, "flat", n_reps=4, n_queries=35, seed=3, hyperparameters=hp)
    acc_h = hier["accuracy"].to_numpy().reshape(4, 35)
    acc_f = flat["accuracy"].to_numpy().reshape(4, 35)
    assert set(hier["stage"].to_numpy()[:25].tolist()) == {1} and set(hier["stage"].to_numpy()[25:35].tolist()) == {2}
    assert acc_h[:, -5:].mean() >= 0.75  # found the best of 300 patterns within 35 queries
    assert acc_h[:, -5:].mean() > acc_f[:, -5:].mean()
    # accuracy and exploration agree with the truth
    best = hier["best"].to_numpy()
    np.testing.assert_array_equal(hier["accuracy"].to_numpy(), (best == problem.truth.argmax()).astype(float))
    np.testing.assert_allclose(hier["exploration"].to_numpy(), problem.truth[best] / problem.truth.max())


def test_flat_method_is_a_registered_optimizer_and_bad_hyperparameters_are_named(problem):
    opt = make("gpbo_product", problem.space, n_reps=2, seed=0, kappa=2.0)
    x = opt.ask()
    opt.tell(x, problem.truth[x])
    assert opt.best().shape == (2,)
    with pytest.raises(ValueError, match="stage1_rule"):
        make_method("hierarchical", problem, stage1_rule="sometimes")
    with pytest.raises(ValueError, match="bad hyperparameters"):
        make_method("hierarchical", problem, kapa=3.0)
    with pytest.raises(ValueError, match="rho_space"):
        make_method("flat", problem, rho_space=(2.0, 1.0))


def test_stable_stopping_rule_ends_stage1_early_per_replicate(problem):
    opt = HierarchicalGPBO(problem, n_reps=3, seed=0, stage_queries=25, stage1_rule="stable", stage1_min=8,
                           stage1_patience=3, fit_steps=5)
    rng = np.random.default_rng(0)
    for _ in range(25):
        ev, x = opt.ask()
        y, peaks = problem.sample(ev, x, rng)
        opt.tell(ev, x, y, peaks)
    assert (opt.stage == 2).all()
    n1 = opt.gp1.n.numpy().reshape(3, 2)[:, 0]
    assert (n1 >= 8).all() and (n1 < 25).any()


# ----------------------------------------------------------------------------- the experiment
def test_targets_hold_only_where_both_hold():
    from sweeps.kinds.hierarchical import targets

    def group(method, kappa, curve, sem):
        m = {f"accuracy_q{q}": [v, sem] for q, v in zip(range(30, 85, 5), curve)}
        m["accuracy_final"] = [curve[-1], sem]
        first = next((q for q, v in zip(range(30, 85, 5), curve) if v >= 0.9), None)
        m["queries_to_accuracy_0.9"] = [first, None]
        return {"params": {"method": method, "kappa": kappa}, "metrics": m}

    out = targets([
        group("hierarchical", 1.0, [0.9] * 11, 0.05), group("flat", 1.0, [0.5] * 11, 0.05),   # both hold
        group("hierarchical", 3.0, [0.9] * 11, 0.05), group("flat", 3.0, [0.5] * 10 + [0.88], 0.05),  # tied at 80
        group("hierarchical", 5.0, [0.8] * 11, 0.05), group("flat", 5.0, [0.1] * 11, 0.05),  # never 0.9
    ])
    rows = {r["kappa"]: r for r in out["per_setting"]}
    assert rows[1.0]["ahead_of_flat"] and rows[1.0]["hierarchical_reaches_target"]
    assert rows[3.0]["behind_or_tied_budgets"] == [80] and not rows[3.0]["ahead_of_flat"]
    assert not rows[5.0]["hierarchical_reaches_target"] and rows[5.0]["ahead_of_flat"]
    assert out["holds_at"] == [{"kappa": 1.0}] and out["holds"] is True
    assert out["final_accuracy_spread"]["flat"]["max"] == 0.88


def test_config_errors_name_the_key():
    from hydra import compose, initialize_config_dir

    from sweeps.grid import CONF_DIR
    from sweeps.runner import build_cells
    from sweeps.schema import ConfigError

    for overrides, message in ((["n_queries=null"], "n_queries"),
                               (["grid.params.kappa=[-1.0]"], "kappa"),
                               (["params.hierarchical.stage_queries=90"], "stage_queries"),
                               (["grid.params.method=[hierarchical,nope]"], "nope")):
        with pytest.raises(ConfigError, match=message):
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name="config", overrides=["+exp=hierarchical", *overrides])
            build_cells(cfg, ["+exp=hierarchical", *overrides])


def test_tiny_hierarchical_experiment_through_ray_and_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    args = ["+exp=hierarchical", "n_reps=2", "n_queries=20", "grid.params.kappa=[1.0,3.0]",
            "params.hierarchical.stage_queries=10", "params.gp.fit_steps=5", "progress=false",
            "cluster.num_cpus=2", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    proc = launch(tmp_path, *args)
    summary_path = Path(proc.stdout.strip().splitlines()[-1])
    summary = json.loads(summary_path.read_text())
    run_dir = Path(summary["run_dir"])
    assert summary["experiment"] == "hierarchical" and summary["failed_cells"] == 0 and summary["n_cells"] == 4
    files = sorted((run_dir / "results").glob("*.parquet"))
    rows = sum(pq.read_table(f).num_rows for f in files)
    assert len(files) == 4 and rows == 4 * 2 * 20
    groups = {(g["params"]["method"], g["params"]["kappa"]): g for g in summary["groups"]}
    assert set(groups) == {(m, k) for m in ("hierarchical", "flat") for k in (1.0, 3.0)}
    for (method, _), g in groups.items():
        assert g["n"] == 2
        for q in (5, 10, 15, 20):
            value, sem = g["metrics"][f"accuracy_q{q}"]
            assert 0.0 <= value <= 1.0 and sem >= 0.0
            assert 0.0 <= g["metrics"][f"exploration_q{q}"][0] <= 1.0
        assert g["metrics"]["stage1_queries"][0] == (10.0 if method == "hierarchical" else 0.0)
    targets = summary["targets"]
    assert {r["kappa"] for r in targets["per_setting"]} == {1.0, 3.0}
    assert set(targets["final_accuracy_spread"]) == {"hierarchical", "flat"}
    assert targets["holds"] == bool(targets["holds_at"])
    for name in ("accuracy.png", "exploration.png"):
        assert (run_dir / "figures" / name).stat().st_size > 10_000
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("hierarchical")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["mlflow_run_id"]]
    assert len(children) == 4
    for c in children:
        assert {"accuracy_q20", "accuracy_q20_sem", "exploration_final", "stage1_queries"} <= set(c.data.metrics)
        assert sorted(m.step for m in client.get_metric_history(c.info.run_id, "accuracy_mean")) == list(range(1, 21))
    arts = {a.path for a in client.list_artifacts(summary["mlflow_run_id"])}
    assert {"results", "figures", "summary.json"} <= arts
