"""MLflow: one parent run per launch, nested child runs per summary group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from sweeps.schema import ConfigError

#: MLflow 3's UI opens an experiment on its runs table (not the GenAI traces page) with this tag
UI_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def _flatten(d: Any, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d if isinstance(d, (int, float, str, bool)) or d is None else json.dumps(d)
    return out


def display_uri(uri: str) -> str:
    """An sqlite URI with an absolute path, so the printed command works from anywhere."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


class Tracker:
    """Thin wrapper over MlflowClient (no global active-run state, so it is safe in one driver)."""

    def __init__(self, uri: str, experiment: str):
        self.uri = display_uri(uri)
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store stops the launch
            raise ConfigError(f"tracking.uri={uri!r}: cannot reach the MLflow store: {exc}") from None
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:///"):  # artifacts beside the db, not in the working folder
                location = (Path(self.uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location, tags=UI_TAGS)
        else:
            self.experiment_id = exp.experiment_id
            if any(exp.tags.get(k) != v for k, v in UI_TAGS.items()):
                for k, v in UI_TAGS.items():
                    self.client.set_experiment_tag(self.experiment_id, k, v)

    def ui_hint(self, experiment: str, run_id: str) -> str:
        """The line telling how to open the MLflow UI on these results: the experiment's runs table
        (MLflow 3's UI shows its GenAI pages unless the address asks for the machine-learning view)."""
        page = f"#/experiments/{self.experiment_id}/runs/{run_id}?workflowType=machine_learning"
        where = f"(experiment {experiment!r})"
        if self.uri.startswith(("http://", "https://")):
            return f"MLflow UI: open {self.uri.rstrip('/')}/{page} {where}"
        return f"MLflow UI: mlflow ui --backend-store-uri {self.uri}  then open http://127.0.0.1:5000/{page} {where}"

    def describe(self, run_id: str, lines: list[str], title: str = "") -> None:
        """The run's description in the UI (Markdown): a title and one bullet per line."""
        text = (f"**{title}**\n\n" if title else "") + "\n".join(f"- {line}" for line in lines)
        self.client.set_tag(run_id, "mlflow.note.content", text)

    def start(self, name: str, params: dict | None = None, parent: str | None = None, tags: dict | None = None) -> str:
        t = dict(tags or {})
        if parent:
            t["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, run_name=name, tags=t)
        if params:
            flat = _flatten(params)
            items = [mlflow.entities.Param(k[:250], str(v)[:6000]) for k, v in flat.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id

    def metrics(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        import time

        ts = int(time.time() * 1000)
        ms = [mlflow.entities.Metric(k, float(v), ts, step) for k, v in values.items()]
        for i in range(0, len(ms), 500):
            self.client.log_batch(run_id, metrics=ms[i : i + 500])

    def curves(self, run_id: str, curves: dict[str, list[float]]) -> None:
        """Step metrics: ``curves[name][q-1]`` logged at step ``q``."""
        import time

        ts = int(time.time() * 1000)
        ms = [mlflow.entities.Metric(k, float(v), ts, q + 1) for k, vals in curves.items() for q, v in enumerate(vals)]
        for i in range(0, len(ms), 900):
            self.client.log_batch(run_id, metrics=ms[i : i + 900])

    def artifacts(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_run_folder(self, run_id: str, run_dir: Path, summary_path: Path) -> None:
        """Log a launch's results/, figures/, summary.json and composed config (.hydra/) to its parent run."""
        for sub in ("results", "figures"):
            if (run_dir / sub).is_dir():
                self.artifacts(run_id, run_dir / sub, sub)
        self.artifacts(run_id, summary_path)
        if (run_dir / ".hydra").is_dir():
            self.artifacts(run_id, run_dir / ".hydra", "config")

    def reopen(self, run_id: str | None) -> str | None:
        """Continue ``run_id`` (a resumed launch's own parent run) if this store holds it in this
        experiment: it is RUNNING again and keeps its params and history. None: start a new one."""
        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - another store, or a deleted run: a new parent then
            return None
        if run.info.experiment_id != self.experiment_id or run.info.lifecycle_stage != "active":
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def drop_children(self, run_id: str) -> int:
        """Delete ``run_id``'s child runs (a continued parent's report makes them anew from all results)."""
        esc = run_id.replace("'", "")
        kids = self.client.search_runs([self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{esc}'")
        for r in kids:
            self.client.delete_run(r.info.run_id)
        return len(kids)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)
