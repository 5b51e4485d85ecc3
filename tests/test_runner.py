"""The one lifecycle (sweeps.runner) with experiments defined here, in a test module alone.

``kind=tests.test_runner:NAME`` finds them; nothing in sweeps/ names them. The runner starts
the parent MLflow run in a temporary sqlite store, runs the cells on a local Ray, keeps the
Parquet results, writes summary.json and ends the parent run with the status of the launch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sweeps.experiment import DriveExperiment, Experiment
from sweeps.schema import ConfigError, Interrupted
from tests.test_tune import compose, local_ray  # noqa: F401 - the module's local Ray fixture


class Parabola(Experiment):
    """y = a * x^2 + noise, one cell per grid point of ``params.a``; ``params.n`` draws per cell."""

    payload_keys = ("kind", "params", "seed")

    def validate(self, cfg, cells) -> None:
        for c in cells:
            a = c.payload["params"].get("a")
            if not isinstance(a, (int, float)):
                raise ConfigError(f"params.a={a!r} (cell {c.coords}): expected a number")

    def run_cell(self, payload, seed_sequence, data) -> pa.Table:
        rng = np.random.default_rng(seed_sequence)
        n = int(payload["params"]["n"])
        x = rng.uniform(-1, 1, n)
        y = payload["params"]["a"] * x ** 2 + rng.normal(0, 0.01, n)
        return pa.table({"x": x, "y": y})

    def report(self, cfg, table, run_dir, tracker, parent_run, axes) -> dict:
        groups = []
        for a in axes["params.a"]:
            rows = [i for i, v in enumerate(table["params_a"].to_pylist()) if v == a]
            x = np.asarray(table["x"])[rows]
            y = np.asarray(table["y"])[rows]
            groups.append({"params": {"params.a": a}, "n": len(rows),
                           "metrics": {"fitted_a": [float(np.sum(x ** 2 * y) / np.sum(x ** 4)), 0.0]}})
        return {"groups": groups}


class Countdown(DriveExperiment):
    """A drive experiment: opens the parent run, logs one metric, fails or is interrupted on demand."""

    def drive(self, run) -> dict:
        run.open_parent(tags={"neuro_opt.kind": "countdown"})
        run.tracker.metrics(run.parent, {"steps": 3})
        how = run.cfg.params.get("end")
        if how == "interrupt":
            raise Interrupted("interrupted: nothing kept")
        if how == "crash":
            raise RuntimeError("the drive broke")
        return {"groups": [{"params": {}, "n": 3, "metrics": {"steps": [3.0, 0.0]}}]}


def _launch(tmp: Path, *overrides: str) -> tuple[dict, object]:
    from mlflow.tracking import MlflowClient

    from sweeps.runner import run

    uri = f"sqlite:///{tmp}/mlflow.db"
    over = [*overrides, f"tracking.uri={uri}", "progress=false"]
    path = run(compose(*over), over, tmp / "run")
    summary = json.loads(path.read_text())
    return summary, MlflowClient(uri).get_run(summary["mlflow_run_id"])


def test_an_experiment_defined_in_a_test_module_runs_through_the_runner(tmp_path, local_ray):  # noqa: F811
    summary, parent = _launch(tmp_path, f"kind={__name__}:Parabola", "experiment=parabola",
                              "+params.n=400", "+params.a=1.0", "+grid.params.a=[0.5,2.0]")
    fitted = {g["params"]["params.a"]: g["metrics"]["fitted_a"][0] for g in summary["groups"]}
    assert fitted == pytest.approx({0.5: 0.5, 2.0: 2.0}, abs=0.02)
    assert summary["n_cells"] == 2 and summary["failed_cells"] == 0
    assert {g["n"] for g in summary["groups"]} == {400}
    assert len(list((tmp_path / "run" / "results").glob("*.parquet"))) == 2
    assert parent.info.status == "FINISHED" and parent.data.tags["run_dir"] == str(tmp_path / "run")
    assert parent.data.params["kind"] == f"{__name__}:Parabola" and "wall_s" in parent.data.metrics


def test_the_experiments_own_validation_stops_the_launch_before_any_work(tmp_path):
    from sweeps.runner import run

    over = [f"kind={__name__}:Parabola", "experiment=parabola", "+params.n=4", "+params.a=1.0",
            "+grid.params.a=[1.0,abc]", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    with pytest.raises(ConfigError, match=r"params.a='abc' .*expected a number"):
        run(compose(*over), over, tmp_path / "run")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "run" / "results").exists()


@pytest.mark.parametrize("end, status, error", [(None, "FINISHED", None), ("crash", "FAILED", RuntimeError),
                                                ("interrupt", "KILLED", Interrupted)])
def test_a_drive_experiment_gets_the_runners_parent_run_and_summary(tmp_path, end, status, error):
    from mlflow.tracking import MlflowClient

    over = [f"kind={__name__}:Countdown", "experiment=countdown", f"+params.end={end or 'done'}"]
    if error is None:
        summary, parent = _launch(tmp_path, *over)
        assert summary["groups"][0]["metrics"]["steps"] == [3.0, 0.0] and summary["experiment"] == "countdown"
        assert (tmp_path / "run" / "summary.json").is_file()
    else:
        with pytest.raises(error):
            _launch(tmp_path, *over)
        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        exp = client.get_experiment_by_name("countdown")
        (parent,) = client.search_runs([exp.experiment_id])
        assert not (tmp_path / "run" / "summary.json").exists()
    assert parent.info.status == status and parent.data.metrics["steps"] == 3
    assert parent.data.tags["neuro_opt.kind"] == "countdown"


@pytest.mark.parametrize("kind, message", [("tests.test_runner:Nothing", "not a known experiment kind"),
                                           ("tests.test_runner:pytest", "implements neither"),
                                           ("no_such_kind", "known: calibration, continual")])
def test_a_kind_that_names_no_experiment_is_a_config_error(kind, message):
    from sweeps import kinds

    with pytest.raises(ConfigError, match=message):
        kinds.get(kind)
