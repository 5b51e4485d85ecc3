"""The benchmark experiments of issue 3 and the BoTorch reference loop they measure against.

Speed itself is measured by the experiments (``+exp=latency``, ``+exp=throughput``), not
here: these tests check that the reference loop is the model it claims to be and that tiny
launches through the real launcher (local Ray, MLflow sqlite) produce the promised summary.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from neuro_opt.algorithms.botorch_reference import BotorchGPBO
from neuro_opt.datasets import load
from neuro_opt.gp import BatchGP
from neuro_opt.gp.reference import fitted_hyperparameters
from neuro_opt.reference_loop import botorch_reference_run
from neuro_opt.simulate import TRACE_SCHEMA, simulate
from tests import launching

ROOT = Path(__file__).resolve().parents[1]


def launch(tmp: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    return launching.launch(tmp, *overrides, "progress=false", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
                            check=check)


def test_reference_loop_is_the_published_model_and_matches_the_engine():
    """At every query the reference's posterior over all points equals the engine's exact GP
    with the hyperparameters BoTorch fitted (to 1e-5), the fitted hyperparameters lie within
    their bounds, and the random start and responses match simulate(gpbo) with the same seed."""
    d = load("synthetic_rat", n_subjects=1, n_muscles=1)
    problem = d[d.keys()[0]]
    bounds = dict(rho_low=0.1, rho_high=4.0, noise_min=1e-3, noise_max=0.2, outputscale_low=0.25,
                  outputscale_high=1.0)
    seen = []

    def record(t, model, mean, var, points, responses):
        seen.append((t, fitted_hyperparameters(model), mean, var, points, responses))

    trace = botorch_reference_run(problem, 5, seed=7, noise=0.2, kappa=3.0, n_random=2, on_query=record, **bounds)
    assert trace.schema == TRACE_SCHEMA and trace.num_rows == 5
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5]
    for t, hp, mean, var, points, responses in seen:
        assert all(bounds["rho_low"] <= ls <= bounds["rho_high"] for ls in hp["lengthscale"])
        assert bounds["noise_min"] - 1e-9 <= hp["noise"] <= bounds["noise_max"] + 1e-9
        assert bounds["outputscale_low"] <= hp["outputscale"] <= bounds["outputscale_high"]
        gp = BatchGP(problem.space.X, 1, 8, mode="fixed", lengthscale=hp["lengthscale"], noise=hp["noise"],
                     outputscale=hp["outputscale"])
        for x, y in zip(points, responses):
            gp.observe(np.array([x]), np.array([y]))
        with torch.no_grad():
            m, v = gp.posterior()
        np.testing.assert_allclose(m[0].numpy(), mean, atol=1e-5)
        np.testing.assert_allclose(v[0].numpy(), var, atol=1e-5)
    # the believed best is the argmax of the last posterior mean; exploration/exploitation as simulate
    last_mean = seen[-1][2]
    best = trace["best"].to_pylist()[-1]
    assert last_mean[best] == pytest.approx(last_mean.max())
    truth = problem.truth
    assert trace["exploration"].to_pylist()[-1] == pytest.approx(truth[best] / truth.max())
    pts = trace["point"].to_pylist()
    np.testing.assert_allclose(trace["exploitation"].to_numpy(), truth[pts] / truth.max())
    # same seed: the same random start and the same responses as the engine's GP-BO
    ref_engine = simulate(problem, "gpbo", n_reps=1, n_queries=2, seed=7, noise=0.2,
                          hyperparameters={"kappa": 3.0, "n_random": 2, **bounds})
    assert ref_engine["point"].to_pylist() == pts[:2]
    assert ref_engine["response"].to_pylist() == trace["response"].to_pylist()[:2]


def test_gpbo_botorch_optimizer_is_the_reference_loop():
    """``algorithms.make("gpbo_botorch")`` (the reference as an ask/tell optimizer, what a sweep
    costs without the engine) runs through simulate() query for query as the reference loop: the
    same points, responses and believed best, replicate 0 with the same seed."""
    d = load("synthetic_rat", n_subjects=1, n_muscles=1)
    problem = d[d.keys()[0]]
    hp = dict(kappa=3.0, n_random=2, rho_low=0.1, rho_high=4.0, noise_min=1e-3, noise_max=0.2)
    ref = botorch_reference_run(problem, 6, seed=3, noise=0.1, **hp)
    opt = simulate(problem, "gpbo_botorch", n_reps=1, n_queries=6, seed=3, noise=0.1, hyperparameters=hp)
    for col in ("point", "response", "best", "exploration"):
        assert opt[col].to_pylist() == ref[col].to_pylist(), col
    with pytest.raises(ValueError, match="no prior"):
        BotorchGPBO(problem.space, prior=np.ones(problem.space.n_points))


def test_reference_loop_rejects_bad_arguments():
    d = load("synthetic_rat", n_subjects=1, n_muscles=1)
    problem = d[d.keys()[0]]
    for kwargs, msg in (({"n_queries": 0}, "n_queries"), ({"kappa": -1.0}, "kappa"),
                        ({"n_random": 0}, "n_random"), ({"rho_low": 5.0, "rho_high": 1.0}, "rho")):
        with pytest.raises(ValueError, match=msg):
            botorch_reference_run(problem, **{"n_queries": 2, **kwargs})


TINY_LATENCY = ["+exp=latency", "cluster.num_cpus=2", "cluster.cpus_per_cell=1", "params.values.n_points=[150,300]", "params.values.n_dims=[1,2]",
                "params.values.history=[10,20]", "params.anchor.n_points=300", "params.anchor.n_dims=2",
                "params.anchor.history=20", "params.repeats=3", "params.warmup=0", "params.run_history=[15]",
                "params.rounds=2"]
ROUNDS = 2


def test_tiny_latency_launch(tmp_path):
    proc = launch(tmp_path, *TINY_LATENCY)
    summary = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    assert summary["experiment"] == "latency" and summary["failed_cells"] == 0
    assert summary["n_cells"] == 2 * 2 * 3  # modes x devices x axes
    groups = summary["groups"]
    settings = {(g["params"]["n_points"], g["params"]["n_dims"], g["params"]["history"], g["params"]["history_from"])
                for g in groups}
    # each axis varied with the other two at the anchor (300 points, 2-D, history 20), history at
    # distinct points; and the query after an actual 15-query GP-BO run at the anchor
    assert settings == {(150, 2, 20, "distinct"), (300, 2, 20, "distinct"), (300, 1, 20, "distinct"),
                        (300, 2, 10, "distinct"), (300, 2, 15, "run")}
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    assert {(g["params"]["mode"], g["params"]["device"]) for g in groups} == \
        {(m, dv) for m in ("fixed_rho", "variable_rho") for dv in devices}
    assert len(groups) == 5 * 2 * len(devices)
    for g in groups:
        assert set(g["params"]) == {"mode", "n_points", "n_dims", "history", "history_from", "device"}
        median, sem = g["metrics"]["ms_per_query"]
        assert median > 0 and sem >= 0
        steps = g["metrics"]["fit_steps"][0]  # Adam steps of the timed refits: none in fixed-rho
        assert steps == 0 if g["params"]["mode"] == "fixed_rho" else 0 <= steps <= 10
        anchor = (g["params"]["n_points"], g["params"]["n_dims"], g["params"]["history"]) == (300, 2, 20)
        assert g["n"] == 3 * ROUNDS * (3 if anchor else 1)  # the anchor is timed in each of the 3 axis cells
        if g["params"]["history_from"] == "run":  # GP-BO's own queries: repeats collapse
            assert 1 <= g["n_unique"] <= 15
        else:
            assert g["n_unique"] == g["params"]["history"]
    if not torch.cuda.is_available():
        assert any("cuda" in s for s in summary["skipped"])
    run_dir = Path(summary["run_dir"])
    _check_latency_rounds(pq.read_table(run_dir / "results").to_pylist(), groups)
    assert (run_dir / "figures" / "latency.png").stat().st_size > 10_000
    # the report reads the Parquet table only: it remakes the same summary
    again = launching.run_module(tmp_path, "sweeps.report", f"run={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["groups"] == groups
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("latency").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["mlflow_run_id"]]
    assert len(children) == len(groups)
    assert all({"ms_per_query", "ms_per_query_sem"} <= set(c.data.metrics) for c in children)


def _check_latency_rounds(rows: list[dict], groups: list[dict]) -> None:
    """Every setting of every cell is timed in rounds 1..ROUNDS, each with the same queries (the history does not grow
    from round to round); a group's ms_per_query is the lowest of its per-round medians, reported with them and their
    spread."""
    keys = ("mode", "device", "n_points", "n_dims", "history", "history_from")
    per_cell: dict = {}
    for r in rows:
        per_cell.setdefault((r["cell"], *(r[k] for k in keys)), {}).setdefault(r["round"], []).append(r)
    for by_round in per_cell.values():
        assert sorted(by_round) == list(range(1, ROUNDS + 1))
        assert len({len(rs) for rs in by_round.values()}) == 1  # later rounds time as many queries as round 1
        fits = [[r["fit_steps"] for r in rs] for rs in by_round.values()]
        assert all(f == fits[0] for f in fits)  # the same state every round: the same refits
    for g in groups:
        sub = [r for r in rows if all(r[k] == g["params"][k] for k in keys)]
        medians = [float(np.median([r["ms_query"] for r in sub if r["round"] == k])) for k in range(1, ROUNDS + 1)]
        assert g["rounds"]["ms_per_query"] == pytest.approx(medians)
        assert g["metrics"]["ms_per_query"][0] == pytest.approx(min(medians))
        assert g["rounds"]["best_round"] == 1 + int(np.argmin(medians))
        spread = (max(medians) - min(medians)) / min(medians)
        assert g["rounds"]["spread"] == pytest.approx(spread)
        assert g["metrics"]["ms_per_query_spread"][0] == pytest.approx(spread)


def test_tiny_throughput_launch(tmp_path):
    """Both conditions measured on the shared 2-CPU test Ray; the load really ran and is gone;
    batched equals apart run for run (no baseline overrides: the batch changes no decision);
    ratios, slowdown and targets come from the groups."""
    import os

    import pyarrow.parquet as pq

    problems = {"rat": 2}  # one design keeps it short; the NHP design differs only in its dataset
    passes = 2  # each batched/apart measurement runs the design twice over, with new seeds
    proc = launch(tmp_path, "+exp=throughput", "n_queries=3", "n_reps=2", "params.rounds=1", "params.designs=[rat]",
                  "params.design_specs.rat.n_problems=2", f"params.design_specs.rat.passes={passes}",
                  "params.load.max_s=120", "~params.baseline.fit_steps")
    summary = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    machine = summary["machine"]
    assert summary["experiment"] == "throughput" and machine["cpus"] == 2 and machine["workers"] == 2
    engines = ("batched", "apart", "botorch_reference")
    groups = {tuple(g["params"].values()): g for g in summary["groups"]}
    assert set(groups) == {(d, e, c) for d in problems for e in engines for c in ("quiet", "loaded")}
    for (d, e, c), g in groups.items():
        assert g["n"] == (2 * problems[d] * passes if e != "botorch_reference" else 2)  # reference: one per worker
        assert g["metrics"]["runs_per_s"][0] == pytest.approx(g["runs_per_round"] / g["wall_s"])
        assert g["load_processes"] == (2 if c == "loaded" else 0)
        assert (g["metrics"]["load_cpu_s"][0] > 0) == (c == "loaded")
    # the load: one busy process per CPU, really spinning, and every one ended and reaped
    (session,) = machine["loads"]
    assert len(session["pids"]) == 2 and session["cpu_s"] > 0
    assert machine["load_nice"] == machine["worker_nice"]
    for pid in session["pids"]:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[3] != str(os.getpid())
    # without baseline overrides, batched is the apart engine run for run
    comparisons = {c["params"]["design"]: c for c in summary["comparisons"]}
    for d, n in problems.items():
        c = comparisons[d]
        assert c["n_runs"] == c["identical_runs"] == 2 * n * passes * 2  # both conditions; every pass its own runs
        assert c["exploration_points_max_abs"] == c["exploitation_points_max_abs"] == 0.0
    rate = {k: g["metrics"]["runs_per_s"][0] for k, g in groups.items()}
    for r in summary["ratios"]:
        assert r["ratio"] == pytest.approx(rate[(r["design"], "batched", r["condition"])]
                                           / rate[(r["design"], "botorch_reference", r["condition"])])
    assert len(summary["ratios"]) == 2
    for s in summary["slowdown"]:
        assert s["fraction"] == pytest.approx(rate[(s["design"], s["engine"], "loaded")]
                                              / rate[(s["design"], s["engine"], "quiet")])
    assert len(summary["slowdown"]) == 3
    targets = summary["targets"]
    assert [t["target"].split(":")[0] for t in targets] == ["rat"] * 3
    assert all(isinstance(t["met"], bool) for t in targets)
    assert next(t for t in targets if t["unit"] == "points")["met"] is False  # 16 runs, not 800
    assert any(line.startswith("target rat: batched >= 300 runs/s") for line in summary["headline"])
    run_dir = Path(summary["run_dir"])
    assert pq.read_table(run_dir / "results" / "phases.parquet").num_rows == 6
    assert pq.read_table(run_dir / "results" / "runs.parquet").num_rows == sum(g["n"] for g in groups.values())
    assert (run_dir / "figures" / "throughput.png").stat().st_size > 10_000
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert {"ratio/rat quiet", "loaded_over_quiet/rat batched", "wall_s"} <= set(parent.data.metrics)
    runs = client.search_runs([client.get_experiment_by_name("throughput").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["mlflow_run_id"]]
    assert len(children) == 6
    assert all({"runs_per_s", "exploration_final", "load_cpu_s"} <= set(c.data.metrics) for c in children)


@pytest.mark.parametrize("overrides,message", [
    (["cluster.num_cpus=2", "cluster.cpus_per_cell=4"], "cpus_per_cell"),
    (["params.engines=[batched,bogus]"], "bogus"),
    (["params.designs=[rat,monkey]"], "monkey"),
    (["params.conditions=[quiet,noisy]"], "noisy"),
    (["params.design_specs.rat.n_problems=99"], "params.design_specs.rat.n_problems=99"),
    (["n_queries=97", "params.designs=[nhp]"], "n_queries=97"),
    (["params.design_specs.rat.n_queries=33"], "params.design_specs.rat.n_queries=33"),
    (["params.rounds=0"], "params.rounds=0"),
    (["params.design_specs.rat.passes=0"], "params.design_specs.rat.passes=0"),
    (["params.load.nice=30"], "params.load.nice=30"),
    (["+params.bogus=1"], "bogus"),
    (["cluster.address=127.0.0.1:9"], "the competing load runs on this machine"),
    (["algorithm=gpbo_fixed_rho"], "variable-rho"),
    (["+params.baseline.kappa=2.0"], "params.baseline: ['kappa'] cannot differ"),
    (["+params.baseline.fit_tol=-1"], "algorithm with params.baseline: fit_tol must be >= 0"),
])
def test_bad_throughput_config_stops_before_any_work(tmp_path, monkeypatch, overrides, message):
    """The drive kind validates everything before Ray or MLflow start (one line naming the key)."""
    from hydra import compose, initialize_config_dir

    import sweeps.run
    from sweeps.runner import run
    from sweeps.schema import ConfigError

    def no_ray(cfg):
        raise AssertionError("Ray was started before the config was checked")

    monkeypatch.setattr(sweeps.run, "connect_ray", no_ray)
    ov = ["+exp=throughput", *overrides, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=ov)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        run(cfg, ov, tmp_path / "run")
    assert not (tmp_path / "mlflow.db").exists()


def test_throughput_baseline_is_the_earlier_refit_effort_for_apart_only():
    """The apart engine runs the algorithm with params.baseline over it (the earlier 10 Adam
    steps); the batched engine and the BoTorch reference keep the algorithm as given."""
    from hydra import compose, initialize_config_dir

    from sweeps.kinds.throughput import KIND

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+exp=throughput", "params.designs=[rat]", "algorithm.kappa=2.5"])
    _, _, algs, ref_args = KIND.plan(cfg)
    assert algs["batched"]["fit_steps"] == 5 and algs["apart"]["fit_steps"] == 10
    assert {k: v for k, v in algs["apart"].items() if k != "fit_steps"} == {
        k: v for k, v in algs["batched"].items() if k != "fit_steps"
    }
    assert algs["apart"]["kappa"] == ref_args["kappa"] == 2.5


@pytest.mark.parametrize("overrides,message", [
    (["+exp=latency", "grid.params.mode=[bogus_rho]"], "bogus_rho"),
    (["+exp=latency", "params.values.history=[0]"], "params.values.history"),
    (["+exp=latency", "params.run_history=[0]"], "params.run_history"),
    (["+exp=latency", "n_queries=5"], "n_queries"),
    (["+exp=latency", "params.algorithms.variable_rho.rho_low=-1"], "variable_rho"),
    (["+exp=latency", "params.threads=0"], "params.threads"),
    (["+exp=tbfm_latency", "cluster.num_cpus=1"], "cluster.cpus_per_cell=2 but the local Ray has 1 CPU"),
    (["+exp=noise_sweep", "cluster.cpus_per_cell=0"], "positive CPU count"),
])
def test_bad_benchmark_config_stops_before_any_work(overrides, message):
    """Validation runs on the composed config before Ray or MLflow start (as the launcher calls it)."""
    from hydra import compose, initialize_config_dir

    from sweeps.runner import build_cells
    from sweeps.schema import ConfigError

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        build_cells(cfg, overrides)


@pytest.mark.parametrize("exp", ["latency", "tbfm_latency"])
@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5"])
def test_bad_rounds_stops_before_any_work(exp, value):
    """params.rounds must be an integer >= 1: anything else stops the launch at validation, in one line naming it."""
    from hydra import compose, initialize_config_dir

    from sweeps.runner import build_cells
    from sweeps.schema import ConfigError

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"+exp={exp}", f"params.rounds={value}"])
    with pytest.raises(ConfigError, match=r"params\.rounds=") as info:
        build_cells(cfg, [f"+exp={exp}", f"params.rounds={value}"])
    assert "\n" not in str(info.value) and "integer >= 1" in str(info.value)


def test_latency_setup_brings_a_converging_refit_to_convergence():
    """With fit_tol, the timed queries start where a real run's earlier refits would have left the
    hyperparameters: the setup refits (all fit_steps steps each) until a whole refit moves the log
    marginal likelihood by <= fit_tol, so a further whole refit gains little, and the timed queries'
    refits mostly stop early, as at the end of a real run."""
    import copy

    from omegaconf import OmegaConf

    from sweeps.query_timing import prepare_queries, time_round

    alg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "algorithm" / "gpbo.yaml"))
    medians, gains = [], []
    for seed in range(4):
        prep = prepare_queries({**alg, "fit_steps": 10, "fit_tol": 0.05}, 1000, 3, 200, capacity=8, seed=seed)
        assert prep.opt.gp.fit_tol == 0.05  # restored after the setup
        gp = copy.deepcopy(prep.opt.gp)
        gp.fit_tol = 0.0
        before = gp.mll()
        gp.fit()
        gains.append(float(gp.mll() - before))
        steps = time_round(prep, repeats=6, warmup=1, max_seconds=60.0)["fit_steps"]
        medians.append(float(np.median(steps)))
    assert max(abs(g) for g in gains) <= 0.2, gains  # more on every seed when the setup stopped at an early stop
    assert np.mean(medians) <= 4.0, medians
