"""Optuna calibration (+exp=tune_gpbo), the one-at-a-time procedure (+exp=kappa_calibration) and
promotion to an online config (python -m sweeps.promote), end to end: a real local Ray, an
Optuna sqlite storage and an MLflow sqlite store in temp folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.schema import ConfigError
from tests.launching import ROOT, ensure_local_ray, launch

# 2 virtual rats x 2 muscles: rat1 trains, rat2 is held out; one problem per pruning step
TINY = ["dataset.n_subjects=2", "dataset.n_muscles=2", "n_reps=3", "n_queries=10", "params.heldout=1",
        "params.heldout_reps=4",
        "params.batch_problems=1", "cluster.num_cpus=2", "progress=false"]
TUNE = ["+exp=tune_gpbo", *TINY, "params.sampler.n_startup_trials=4", "params.pruner.n_startup_trials=3",
        "params.confirm.top_k=3", "params.confirm.reps=4"]
HP = ("kappa", "n_random", "rho_low", "rho_high", "noise_min", "noise_max")
BAD_KAPPA = 0.3


def summary_of(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())


def compose(*overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import sweeps.schema  # noqa: F401 - registers the schema

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


@pytest.fixture
def local_ray():
    """The test process's local Ray, which the in-process launches of this module connect to."""
    ensure_local_ray()


def run_in_process(run_dir: Path, *overrides: str) -> dict:
    """``sweeps.launch.run`` on a composed config, as the CLI does, without a new interpreter and Ray."""
    from sweeps.runner import run

    path = run(compose(*overrides), list(overrides), run_dir)
    return json.loads(path.read_text())


def load_study(storage: str, name: str = "tiny"):
    import optuna
    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """A small study that starts from a deliberately bad kappa."""
    tmp = tmp_path_factory.mktemp("tune")
    storage = f"sqlite:///{tmp}/optuna.db"
    proc = launch(tmp, *TUNE, "params.n_trials=8", "study.name=tiny", f"study.storage={storage}",
                  f"params.start=[{{kappa: {BAD_KAPPA}}}]", "params.space.kappa.low=0.2",
                  "params.confirm.keep_published=false", f"tracking.uri=sqlite:///{tmp}/mlflow.db")
    return tmp, storage, proc, summary_of(proc)


def test_study_beats_a_bad_starting_kappa_and_is_tracked(study_run):
    from optuna.trial import TrialState

    tmp, storage, proc, summary = study_run
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].startswith("MLflow UI: mlflow ui --backend-store-uri sqlite:///")
    study = load_study(storage)
    assert len(study.trials) == 8 == summary["study"]["n_trials"]
    first = study.trials[0]
    assert first.params["kappa"] == BAD_KAPPA and first.state == TrialState.COMPLETE
    assert study.best_value > first.value
    assert summary["study"]["best_trial"] == study.best_trial.number
    # every trial's bounds are ordered, whatever was sampled
    for t in study.trials:
        hp = t.user_attrs["hyperparameters"]
        assert hp["rho_low"] < hp["rho_high"] and hp["noise_min"] < hp["noise_max"]

    groups = {g["params"]["method"]: g for g in summary["groups"]}
    assert set(groups) == {"optuna", "published_defaults"}
    # the choice: the 3 best trials and the published defaults re-scored on fresh runs; here
    # (keep_published=false) the best of the trials there
    conf = summary["study"]["confirmation"]
    assert len(conf) == 4 and sum(c["chosen"] for c in conf) == 1
    top3 = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number))[:3]
    assert [c["trial"] for c in conf[:3]] == [t.number for t in top3] and conf[3]["label"] == "published_defaults"
    winner = next(c for c in conf if c["chosen"])
    assert winner["confirm_objective"][0] == max(c["confirm_objective"][0] for c in conf[:3])
    selected = study.user_attrs["selected"]
    assert selected["trial"] == winner["trial"] == summary["study"]["selected"]["trial"]
    chosen = selected["hyperparameters"]
    if winner["trial"] is not None:
        assert chosen == study.trials[winner["trial"]].user_attrs["hyperparameters"]
    assert {k: groups["optuna"]["params"][k] for k in HP} == {k: chosen[k] for k in HP}
    assert groups["published_defaults"]["params"]["kappa"] == 3.0
    for g in groups.values():
        assert g["n"] == 2 * 4  # held-out: 2 muscles x heldout_reps
        assert set(g["metrics"]) >= {"heldout_objective", "train_objective", "simulated_runs", "confirm_objective"}
        assert all(len(v) == 2 for v in g["metrics"].values())
        assert 0.0 <= g["metrics"]["heldout_objective"][0] <= 1.0
    runs = sum(t.user_attrs["simulated_runs"] for t in study.trials) + 4 * 2 * 4  # trials + confirmation
    assert groups["optuna"]["metrics"]["simulated_runs"] == [runs, 0.0]
    assert groups["published_defaults"]["metrics"]["simulated_runs"] == [0.0, 0.0]

    run_dir = Path(summary["run_dir"])
    table = pq.read_table(run_dir / "results" / "trials.parquet")
    assert table.num_rows == 8 and table["hp_kappa"][0].as_py() == BAD_KAPPA
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["chosen.algorithm"]) == chosen
    exp = client.get_experiment_by_name("tune_gpbo")
    children = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == summary["mlflow_run_id"]]
    assert len(children) == 8
    assert {c.data.tags["optuna.state"] for c in children} <= {"COMPLETE", "PRUNED", "FAIL"}
    arts = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "figures")}
    assert {"figures/optimization_history.png", "figures/param_importances.png", "figures/slices.png",
            "figures/heldout_curves.png"} <= arts
    assert "results/trials.parquet" in {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "results")}


def test_promotion_round_trips_into_the_online_config(study_run, tmp_path, capsys):
    from hardware.online import OnlineConfig, run_online

    tmp, storage, _, summary = study_run
    chosen = load_study(storage).user_attrs["selected"]["hyperparameters"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "sweeps.promote", f"source={summary['mlflow_run_id']}", "name=rat_tuned",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"out_dir={tmp_path}"]
    proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "rat_tuned.yaml"
    cfg = OnlineConfig.load(path)
    assert cfg.algorithm == chosen  # exactly the chosen values, every hyperparameter
    assert cfg.name == "rat_tuned" and cfg.n_queries == 10 and cfg.space == {"x": list(range(1, 9)),
                                                                               "y": [1, 2, 3, 4]}
    prov = cfg.provenance
    groups = {g["params"]["method"]: g for g in summary["groups"]}
    assert prov["source"] == summary["mlflow_run_id"] and prov["dataset"] == "synthetic_rat"
    assert prov["heldout_objective"] == pytest.approx(groups["optuna"]["metrics"]["heldout_objective"][0])
    assert prov["heldout_subjects"] == ["rat2"] and prov["date"] and prov["code_version"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    assert client.get_run(summary["mlflow_run_id"]).data.tags["neuro_opt.promoted"] == "rat_tuned"

    from sweeps import promote
    assert promote.main(args[3:]) == 2  # the file exists: refused
    assert "exists; pass overwrite=true" in capsys.readouterr().err
    assert promote.main(["source=tiny", "name=rat_tuned", "overwrite=true", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
                         f"out_dir={tmp_path}"]) == 0  # by study name: the storage is found through MLflow
    assert OnlineConfig.load(path).algorithm == chosen

    # the online runner accepts it: three queries on the simulated rig, in-process
    rig = yaml.safe_load((ROOT / "conf" / "rig" / "simulated.yaml").read_text())
    rig.update(latency_s=0.0, ch2xy=str(ROOT / "conf" / "rig" / "ch2xy_rat32.json"))
    rig["limits"]["min_interval_s"] = 0.0
    session = run_online(path, rig, run_dir=tmp_path / "session", mode="autonomous", n_queries=3, use_actor=False,
                         echo=lambda *a: None)
    assert session["n_queries"] == 3


def test_relaunch_with_the_same_study_name_adds_trials(study_run, local_ray, tmp_path):
    import time

    import optuna
    from optuna.trial import TrialState

    tmp, storage, _, first = study_run
    # a trial whose launch was killed (SIGKILL: nothing told it FAIL) stops beating, and stays RUNNING ...
    dead = optuna.load_study(study_name="tiny", storage=optuna.storages.RDBStorage(storage, heartbeat_interval=1))
    trial = dead.ask()
    dead._storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)  # > the 2 s grace period plus the 1 s resolution of sqlite's CURRENT_TIMESTAMP
    summary = run_in_process(tmp_path / "relaunch", *TUNE, "params.n_trials=3", "study.name=tiny",
                             f"study.storage={storage}", f"params.start=[{{kappa: {BAD_KAPPA}}}]",
                             "params.space.kappa.low=0.2", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
                             "study.heartbeat_s=1")
    study = load_study(storage)
    # ... until the next launch of the study fails it
    assert study.trials[8].state == TrialState.FAIL
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert len(study.trials) == 12 == summary["study"]["n_trials"]
    assert summary["study"]["resumed"] is True and summary["study"]["launch_trials"] == 3
    assert not any(t.user_attrs.get("start_point") for t in study.trials[8:])  # start points only once
    assert {t.user_attrs["launch"] for t in study.trials[9:]} == {Path(summary["run_dir"]).name}
    assert summary["mlflow_run_id"] != first["mlflow_run_id"]
    assert summary["study"]["best_value"] >= first["study"]["best_value"]
    assert study.user_attrs["selected"]["launch"] == Path(summary["run_dir"]).name  # chosen again, over 11
    # keep_published (the default): a trial replaces the published defaults only with a paired gain >= z sem
    conf = summary["study"]["confirmation"]
    winner = next(c for c in conf if c["chosen"])
    qualified = [c for c in conf if c["trial"] is not None and c["gain_over_published"][0] > 0
                 and c["gain_over_published"][0] >= 1.645 * c["gain_over_published"][1]]
    if qualified:
        assert winner["confirm_objective"][0] == max(c["confirm_objective"][0] for c in qualified)
    else:
        assert winner["label"] == "published_defaults"
        assert summary["groups"][0]["params"]["kappa"] == 3.0


def test_calibration_one_at_a_time_from_a_bad_kappa(local_ray, tmp_path):
    summary = run_in_process(tmp_path / "run", "+exp=kappa_calibration", *TINY, "params.calibrate=[kappa]",
                             f"params.values.kappa=[{BAD_KAPPA},3.0]", f"params.published.kappa={BAD_KAPPA}",
                             f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    groups = {g["params"]["method"]: g for g in summary["groups"]}
    assert set(groups) == {"one_at_a_time", "published_defaults"}
    assert groups["one_at_a_time"]["params"]["kappa"] == 3.0 and groups["published_defaults"]["params"]["kappa"] == BAD_KAPPA
    cal = summary["calibration"]
    assert cal["converged"] and cal["rounds"] == 2 and cal["distinct_settings"] == 2  # round 2 re-uses round 1
    assert groups["one_at_a_time"]["metrics"]["simulated_runs"] == [2 * 2 * 3, 0.0]
    assert groups["one_at_a_time"]["metrics"]["train_objective"][0] > groups["published_defaults"]["metrics"][
        "train_objective"][0]
    assert pq.read_table(Path(summary["run_dir"]) / "results" / "evaluations.parquet").num_rows == 4
    from hardware.online import OnlineConfig
    from sweeps import promote
    assert promote.main([f"source={summary['mlflow_run_id']}", "name=cal", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                         f"out_dir={tmp_path}"]) == 0
    cfg = OnlineConfig.load(tmp_path / "cal.yaml")
    assert cfg.algorithm["kappa"] == 3.0 and cfg.provenance["method"] == "one_at_a_time"


# ---------------------------------------------------------------------------------------------
# bad input: a clear error before any work (no Ray, no MLflow store, no study)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    (["params.space.kappa.low=5.0", "params.space.kappa.high=1.0"], "params.space.kappa: low=5.0 >= high=1.0"),
    (["params.space.noise_max.low=0"], "params.space.noise_max: log scale needs low > 0"),
    (["params.objective.name=best_ever"], "best_ever"),
    (["params.objective.name=exploration_at"], "params.objective.query"),
    (["params.objective.name=exploitation_at", "params.objective.query=99"], "params.objective.query=99"),
    (["params.objective.weights.exploitation_auc=-1"], "params.objective.weights.exploitation_auc=-1"),
    (["+params.space.rho_low={low: 0.01, high: 0.1}"], "rho_low and rho_high are both searched"),
    (["params.space.rho_ratio.low=0.5"], "params.space.rho_ratio must be > 1"),
    (["+params.space.bogus={low: 1, high: 2}"], "params.space.bogus"),
    (["params.space.n_random.high=12"], "n_random goes up to 12"),
    (["params.heldout=2"], "params.heldout=2"),
    (["params.heldout=[rat9]"], "rat9"),
    (["params.start=[{kappa: 50.0}]"], "kappa=50.0 is outside"),
    (["params.published.kappa=-1.0"], "kappa"),
    (["+params.bogus=1"], "bogus"),
    (["params.sampler.name=grid"], "params.sampler.name='grid'"),
    (["params.confirm.top_k=-1"], "params.confirm.top_k=-1"),
    (["algorithm=extensive"], "calibrates GP-BO"),
    (["+exp=kappa_calibration", "params.values.kappa=[]"], "params.values.kappa"),
    (["+exp=kappa_calibration", "params.calibrate=[bogus]"], "bogus"),
    (["+exp=kappa_calibration", "params.values.n_random=[1,20]"], "n_random=20 is more than n_queries=10"),
])
def test_bad_input_stops_before_any_work(tmp_path, monkeypatch, overrides, message):
    import sweeps.run
    from sweeps.runner import run

    def no_ray(cfg):
        raise AssertionError("Ray was started before the config was checked")

    monkeypatch.setattr(sweeps.run, "connect_ray", no_ray)

    exp = [o for o in overrides if o.startswith("+exp=")] or ["+exp=tune_gpbo"]
    rest = [o for o in overrides if not o.startswith("+exp=")]
    ov = [*exp, *TINY, *rest, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
          f"study.storage=sqlite:///{tmp_path}/optuna.db"]
    cfg = compose(*ov)
    with pytest.raises(ConfigError) as err:
        run(cfg, ov, tmp_path / "run")
    assert message in str(err.value)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


def test_bad_input_on_the_command_line_exits_2_with_the_message(tmp_path):
    proc = launch(tmp_path, "+exp=tune_gpbo", "params.space.kappa.low=5.0", "params.space.kappa.high=1.0",
                  f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", check=False)
    assert proc.returncode == 2
    assert "params.space.kappa: low=5.0 >= high=1.0" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr


def test_a_resumed_study_must_keep_its_settings(study_run, tmp_path):
    from sweeps.runner import run

    tmp, storage, _, _ = study_run
    n = len(load_study(storage).trials)
    ov = ["+exp=tune_gpbo", *TINY, "params.objective.name=exploitation_final", "study.name=tiny",
          f"study.storage={storage}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    with pytest.raises(ConfigError, match="was created with other objective"):
        run(compose(*ov), ov, tmp_path / "run")
    assert len(load_study(storage).trials) == n


def test_promotion_refuses_sources_without_hyperparameters(tmp_path, capsys):
    import optuna

    from sweeps import promote

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("noise_sweep"))
    assert promote.main([f"source={run.info.run_id}", "name=x", f"tracking.uri={uri}", f"out_dir={tmp_path}"]) == 2
    assert "no chosen hyperparameters" in capsys.readouterr().err
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="empty", storage=storage)
    assert promote.main(["source=empty", "name=x", f"study.storage={storage}", f"tracking.uri={uri}",
                         f"out_dir={tmp_path}"]) == 2
    assert "has no finished trial" in capsys.readouterr().err
    assert promote.main(["source=empty", "name=x", "colour=blue"]) == 2
    assert "unknown key 'colour'" in capsys.readouterr().err
    assert promote.main(["source=empty"]) == 2
    assert "name= is required" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.yaml"))


def test_promotion_refuses_values_outside_the_rig_safety_limits(tmp_path, capsys):
    from hardware.online import OnlineConfig
    from sweeps import promote

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("tune_gpbo"))
    client.log_param(run.info.run_id, "chosen.algorithm", json.dumps(
        {"name": "gpbo", "kappa": 3.0, "n_random": 1, "rho_low": 0.02, "rho_high": 5.0, "noise_min": 0.0001,
         "noise_max": 0.05}))
    template = yaml.safe_load((ROOT / "conf" / "online" / "example_rat.yaml").read_text())

    def base(name, amplitude):
        d = {**template, "stimulation": {**template["stimulation"], "amplitude_uA": amplitude}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        return path

    out = tmp_path / "out"
    common = [f"source={run.info.run_id}", f"tracking.uri={uri}", f"out_dir={out}"]

    # 500 uA on the default rig (conf/rig/synapse.yaml: at most 100 uA): refused before anything is written
    assert promote.main(common + ["name=hot", f"base={base('hot', 500)}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1  # one line
    err = err[0]
    assert "breaks the safety limits of rig config conf/rig/synapse.yaml; nothing written" in err
    assert "amplitude_uA 500" in err and "100" in err
    assert not out.exists() or not list(out.iterdir())  # no yaml, no leftover .tmp

    # the safe template (30 uA) is promoted, and its provenance names the rig config it was checked against
    assert promote.main(common + ["name=safe", f"base={base('safe', 30.0)}"]) == 0
    path = out / "safe.yaml"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(path)
    assert OnlineConfig.load(path).provenance["checked_against_rig"] == "conf/rig/synapse.yaml"
    assert sorted(p.name for p in out.iterdir()) == ["safe.yaml"]

    # rig= a file whose limits allow at most 20 uA: the default 30 uA template is refused
    rig = yaml.safe_load((ROOT / "conf" / "rig" / "synapse.yaml").read_text())
    rig["limits"]["max_amplitude_uA"] = 20.0
    rig_path = tmp_path / "low_rig.yaml"
    rig_path.write_text(yaml.safe_dump(rig, sort_keys=False))
    assert promote.main(common + ["name=low", f"rig={rig_path}"]) == 2
    err = capsys.readouterr().err
    assert f"rig config {rig_path}" in err and "amplitude_uA 30" in err and "20" in err
    assert sorted(p.name for p in out.iterdir()) == ["safe.yaml"]

    # a bare rig name resolves in conf/rig/; an unknown one lists the options
    assert promote.main(common + ["name=nowhere", "rig=no_such_rig"]) == 2
    err = capsys.readouterr().err
    assert "rig='no_such_rig'" in err and "synapse" in err and "simulated" in err
    assert sorted(p.name for p in out.iterdir()) == ["safe.yaml"]
