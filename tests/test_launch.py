"""The main job end to end through Hydra, a real local Ray and a real MLflow sqlite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest
from mlflow.tracking import MlflowClient

from tests.launching import ROOT, launch, results

TINY = ["+exp=noise_sweep", "n_reps=2", "n_queries=12", "grid.noise=[0.0,0.5]", "dataset.n_subjects=1",
        "dataset.n_muscles=2", "progress=false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("launch")
    proc = launch(tmp, *TINY, "cluster.num_cpus=2", f"tracking.uri=sqlite:///{tmp}/store/mlflow.db", process=True)
    summary_path = Path(proc.stdout.strip().splitlines()[-1])
    return tmp, proc, summary_path


def test_tiny_noise_sweep_writes_parquet_mlflow_and_summary(tiny_run):
    tmp, proc, summary_path = tiny_run
    assert summary_path.name == "summary.json" and summary_path.is_file()
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].startswith("MLflow UI: mlflow ui --backend-store-uri sqlite:///")
    summary = json.loads(summary_path.read_text(), parse_constant=lambda c: pytest.fail(f"summary.json has {c}"))
    run_dir = Path(summary["run_dir"])
    # 3 algorithms x 2 noise levels x 2 muscles = 12 cells, each 2 reps x 12 queries
    table = results(run_dir)
    assert table.num_rows == 12 * 2 * 12
    assert set(table["algorithm"].to_pylist()) == {"gpbo", "extensive", "greedy"}
    assert set(table["noise"].to_pylist()) == {0.0, 0.5}
    assert len(set(table["muscle"].to_pylist())) == 2
    assert summary["experiment"] == "noise_sweep" and summary["failed_cells"] == 0
    groups = {(g["params"]["algorithm"], g["params"]["noise"]): g for g in summary["groups"]}
    assert set(groups) == {(a, n) for a in ("gpbo", "extensive", "greedy") for n in (0.0, 0.5)}
    for g in groups.values():
        assert g["n"] == 4  # 2 muscles x 2 reps
        for m in ("exploration_final", "exploitation_final", "exploration_auc", "exploitation_auc"):
            value, sem = g["metrics"][m]
            assert 0.0 <= value <= 1.0 and sem >= 0.0
    # the summary agrees with the Parquet rows it was computed from
    last = table.filter(pc.equal(table["query"], 12))
    ext0 = [v for a, n, v in zip(last["algorithm"].to_pylist(), last["noise"].to_pylist(),
                                 last["exploitation"].to_pylist()) if a == "extensive" and n == 0.0]
    assert groups[("extensive", 0.0)]["metrics"]["exploitation_final"][0] == pytest.approx(sum(ext0) / len(ext0))
    # the findings restate the groups: GP-BO vs extensive exploitation up to 50 % noise, exploration vs noise
    exploit, explore = summary["findings"]
    rows = exploit["numbers"]["levels"]
    assert [r["noise"] for r in rows] == [0.0, 0.5]
    for r in rows:
        assert r["points"] == pytest.approx(100 * (groups[("gpbo", r["noise"])]["metrics"]["exploitation_final"][0]
                                                   - groups[("extensive", r["noise"])]["metrics"]["exploitation_final"][0]))
    assert exploit["holds"] == all(r["points"] > 0 for r in rows)
    trends = explore["numbers"]["algorithms"]
    assert set(trends) == {"gpbo", "extensive", "greedy"}
    for alg, t in trends.items():
        lo, hi = (groups[(alg, n)]["metrics"]["exploration_final"][0] for n in (0.0, 0.5))
        assert t["steps"][0]["change"] == pytest.approx(hi - lo) and t["falls"] == (hi <= lo)
    assert explore["holds"] == all(t["falls"] for t in trends.values())
    assert (run_dir / "figures" / "curves.png").stat().st_size > 10_000
    assert (run_dir / "figures" / "final_vs_noise.png").stat().st_size > 10_000

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/store/mlflow.db")
    exp = client.get_experiment_by_name("noise_sweep")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.info.run_id == summary["mlflow_run_id"]]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["mlflow_run_id"]]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert len(children) == 6
    for c in children:
        assert {"exploration_final", "exploitation_final", "exploration_auc", "exploitation_auc"} <= set(c.data.metrics)
        hist = client.get_metric_history(c.info.run_id, "exploration_mean")
        assert sorted(m.step for m in hist) == list(range(1, 13))
    arts = {a.path for a in client.list_artifacts(summary["mlflow_run_id"])}
    assert {"results", "figures", "summary.json", "groups.json"} <= arts
    assert len(client.list_artifacts(summary["mlflow_run_id"], "results")) == 12


def test_results_read_as_a_person_reads_them(tiny_run):
    """The MLflow UI opens on the runs table; the parent says what was swept and which algorithm wins
    where, without opening a child; children are named by grid point; summary.json opens with its
    headline and keeps per-query curves beside it; the terminal shows the headline before the path."""
    from sweeps.results import read_curves

    tmp, proc, summary_path = tiny_run
    summary = json.loads(summary_path.read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/store/mlflow.db")
    exp = client.get_experiment_by_name("noise_sweep")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = client.get_run(summary["mlflow_run_id"])
    run_dir = Path(summary["run_dir"])
    assert parent.info.run_name == f"noise_sweep {run_dir.name}"
    tags = parent.data.tags
    assert (tags["dataset"], tags["scale"], tags["seed"], tags["grid"]) == ("synthetic_nhp", "default", "0",
                                                                           "algorithm x noise x muscle")
    assert len(tags["mlflow.source.git.commit"]) == 40
    assert all(f"- {line}" in tags["mlflow.note.content"] for line in summary["headline"])  # the run's description
    hint = proc.stdout.strip().splitlines()[-2]  # the UI opens on this run, in its machine-learning view
    assert f"#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning" in hint
    params = parent.data.params
    # the settings every cell shares; not the swept ones (they would read as if gpbo at noise 0 ran alone)
    assert params["n_reps"] == "2" and params["dataset.name"] == "synthetic_nhp"
    assert not any(k == "noise" or k.startswith(("algorithm", "grid", "online", "rig")) for k in params)
    g = {(x["params"]["algorithm"], x["params"]["noise"]): x["metrics"] for x in summary["groups"]}
    m = parent.data.metrics
    for alg, name in (("gpbo", "GP-BO"), ("extensive", "extensive search"), ("greedy", "greedy search")):
        for noise, label in ((0.0, "noise 0 pct"), (0.5, "noise 50 pct")):
            assert m[f"exploitation_final {label}/{name}"] == pytest.approx(g[(alg, noise)]["exploitation_final"][0])
    c = [x for x in summary["comparisons"] if x["b"] == "greedy" and x["params"]["noise"] == 0.5][0]
    assert m["exploitation_points noise 50 pct/GP-BO vs greedy search"] == pytest.approx(c["exploitation_points_final"])
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = sorted(r.info.run_name for r in children)
    assert names == sorted(f"{a}, noise {n} %" for a in ("GP-BO", "extensive search", "greedy search")
                           for n in (0, 50))
    assert all(set(r.data.params) == {"algorithm", "noise"} for r in children)
    # summary.json: the headline first (one line per finding, then the best algorithm per noise level)
    assert list(summary)[:5] == ["experiment", "run_dir", "mlflow_run_id", "wall_s", "headline"]
    head = summary["headline"]
    assert len(head) == len(summary["findings"]) + 2
    for f, line in zip(summary["findings"], head):
        assert line.startswith(f["finding"]) and ("does not hold" in line) == (f["holds"] is False)
    for noise, line in zip((0, 50), head[-2:]):
        best = max(("gpbo", "extensive", "greedy"), key=lambda a: g[(a, noise / 100)]["exploitation_final"][0])
        assert line.startswith(f"noise {noise} %: ") and {"gpbo": "GP-BO", "extensive": "extensive search",
                                                        "greedy": "greedy search"}[best] in line.split(" has")[0]
    assert summary_path.stat().st_size < 30_000
    curves = read_curves(run_dir)
    assert curves.num_rows == 6 * 2 * 12 and not any("per_query" in x for x in summary["groups"])
    out = proc.stdout.strip().splitlines()
    assert out[0].startswith("noise_sweep: headline") and any(head[-1][:40] in line for line in out)


def test_same_seed_same_results_with_one_and_two_workers(tiny_run, tmp_path):
    _, _, summary_path = tiny_run
    two = results(Path(json.loads(summary_path.read_text())["run_dir"]))
    proc = launch(tmp_path, *TINY, "cluster.num_cpus=1", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                  process=True)  # a Ray of its own, with one worker
    one = results(Path(json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())["run_dir"]))
    assert one.equals(two)
    other = launch(tmp_path, *TINY, "seed=1", "cluster.num_cpus=2", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    reseeded = results(Path(json.loads(Path(other.stdout.strip().splitlines()[-1]).read_text())["run_dir"]))
    assert not reseeded.equals(two)


def test_resume_skips_finished_cells_and_completes_identically(tiny_run, tmp_path):
    import shutil

    _, _, summary_path = tiny_run
    src = Path(json.loads(summary_path.read_text())["run_dir"])
    run_dir = tmp_path / "partial"
    shutil.copytree(src / "results", run_dir / "results")
    removed = sorted((run_dir / "results").glob("*.parquet"))[:5]
    kept = {p.name: p.stat().st_mtime_ns for p in (run_dir / "results").glob("*.parquet") if p not in removed}
    for p in removed:
        p.unlink()
    launch(tmp_path, *TINY, "cluster.num_cpus=2", f"resume={run_dir}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "results").glob("*.parquet")}
    assert len(after) == 12
    assert all(after[name] == mtime for name, mtime in kept.items())  # finished cells untouched
    assert results(run_dir).equals(results(src))
    assert json.loads((run_dir / "summary.json").read_text())["n_cells"] == 12


@pytest.mark.parametrize("overrides,message", [
    (["+exp=no_such_experiment"], "no_such_experiment"),
    (["+exp=noise_sweep", "+bogus_key=1"], "bogus_key"),
    (["+exp=noise_sweep", "n_reps=many"], "n_reps"),
    (["+exp=noise_sweep", "grid.noise=[0.1,-0.2]"], "noise=-0.2"),
    (["+exp=noise_sweep", "cluster.num_cpus=0"], "cluster.num_cpus=0"),
    (["+exp=noise_sweep", "resume=no_such_run"], "resume='no_such_run': not a run folder"),
])
def test_bad_input_stops_the_cli_before_any_work(tmp_path, overrides, message):
    proc = launch(tmp_path, *overrides, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", check=False, process=True)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr
    # no run folder left behind, and none made where it was only told to read
    assert not list(tmp_path.glob("runs/*/*")) and not (tmp_path / "no_such_run").exists()


def test_resume_with_another_design_is_refused_and_changes_nothing(tiny_run, tmp_path):
    import shutil

    _, _, summary_path = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(Path(json.loads(summary_path.read_text())["run_dir"]), run_dir)
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = launch(tmp_path, *TINY, "n_reps=3", "grid.noise=[0.0,0.25]", f"resume={run_dir}",
                  f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "n_reps (2 -> 3)" in proc.stderr and "grid.noise" in proc.stderr
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before  # not a result, not the composed config: the run folder is as it was


# One GP-BO cell per task (cluster.batch_reps=0), each long enough that an interrupt after the second
# result file lands before the last: the tiny sweep's cells now all finish within a fraction of a second.
SLOW = [*TINY, "grid.algorithm=[gpbo]", "grid.noise=[0.0,0.5,1.0]", "n_reps=6", "n_queries=96", "cluster.batch_reps=0"]


def test_interrupted_launch_ends_killed_in_one_line_and_resumes_its_own_parent(tmp_path):
    """Ctrl-C: one line, exit 130, the MLflow parent KILLED; a damaged result file is recomputed on resume,
    which continues the same parent run (no second one) and gives the uninterrupted run's results."""
    import signal
    import time

    ref = launch(tmp_path / "ref", *SLOW, "cluster.num_cpus=2", f"tracking.uri=sqlite:///{tmp_path}/ref/mlflow.db")
    src = Path(json.loads(Path(ref.stdout.strip().splitlines()[-1]).read_text())["run_dir"])
    n_cells = len(list((src / "results").glob("*.parquet")))
    assert n_cells == 6  # 2 muscles x 3 noise levels
    run_dir, uri = tmp_path / "run", f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
    # a terminal's Ctrl-C reaches a launch whose SIGINT is at its default, also when this suite itself runs
    # as a background job (which starts with SIGINT ignored, and its children would inherit that)
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.launch", *SLOW, "cluster.num_cpus=1",
                             f"hydra.run.dir={run_dir}", f"tracking.uri={uri}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while len(list((run_dir / "results").glob("*.parquet"))) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and len([x for x in err.splitlines() if x.startswith("interrupted:")]) == 1
    assert f"resume={run_dir}" in err
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("noise_sweep")
    parents = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    kept = sorted((run_dir / "results").glob("*.parquet"))
    assert 2 <= len(kept) < n_cells
    kept[0].write_bytes(b"")  # a result file the disk lost
    proc = launch(tmp_path, *SLOW, "cluster.num_cpus=2", f"resume={run_dir}", f"tracking.uri={uri}")
    assert f"warning: {kept[0]} is damaged" in proc.stderr
    assert results(run_dir).equals(results(src))
    runs = client.search_runs([exp.experiment_id])
    again = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in again] == [parents[0].info.run_id] and again[0].info.status == "FINISHED"
    ref_client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/ref/mlflow.db")
    ref_runs = ref_client.search_runs([ref_client.get_experiment_by_name("noise_sweep").experiment_id])
    n_children = len([r for r in ref_runs if "mlflow.parentRunId" in r.data.tags])
    assert n_children > 0
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == again[0].info.run_id]) == n_children


@pytest.mark.parametrize("overrides,message", [
    (["bogus_key=1"], "bogus_key"),
    (["n_queries=500"], "n_queries=500"),
    (["algorithm.kappa=-1", "grid.algorithm=[gpbo]"], "kappa"),
    (["grid.algorithm=[gpbo,nope]"], "nope"),
    (["dataset=no_such_dataset"], "no_such_dataset"),
    (["scale=huge"], "scale"),
    (["muscle=nhp1/NOPE", "grid.muscle=[nhp1/NOPE]"], "NOPE"),
    # a misspelt hyperparameter of a grid axis would be silently dropped: nothing takes it
    (["+algorithm.kapa=4.0"], r"algorithm.kapa: no algorithm of the grid \(gpbo, extensive, greedy\) takes 'kapa'"),
    (["algorithm.kappa=abc", "grid.algorithm=[gpbo]"], r"kappa='abc': expected a number"),
    (["+algorithm.kapa=4.0", "~grid.algorithm"], r"unknown hyperparameter 'kapa'; it takes kappa, n_random"),
])
def test_bad_input_is_a_config_error_naming_the_key(overrides, message):
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sweeps.grid import CONF_DIR
    from sweeps.runner import build_cells
    from sweeps.schema import ConfigError

    with pytest.raises((ConfigError, HydraException, OmegaConfBaseException), match=message):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=["+exp=noise_sweep", *overrides])
        build_cells(cfg, ["+exp=noise_sweep", *overrides])


def test_unreachable_cluster_address_is_refused_at_once():
    import time

    from sweeps.run import check_address
    from sweeps.schema import ConfigError

    t0 = time.time()
    with pytest.raises(ConfigError, match="cluster.address='127.0.0.1:9': nothing answers"):
        check_address("127.0.0.1:9")
    with pytest.raises(ConfigError, match="expected host:port"):
        check_address("nohost")
    assert time.time() - t0 < 10
