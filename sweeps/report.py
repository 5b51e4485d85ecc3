"""``python -m sweeps.report run=<run folder or MLflow run id>``: remake an experiment's report.

Reads the run's composed config (``.hydra/``) and its Parquet results only, reruns
the kind's report (groups, comparisons, figures, ``findings``) and rewrites
``figures/``, ``curves.parquet`` and ``summary.json`` with its ``headline`` (keeping the launch's own entries such as
``wall_s`` and ``mlflow_run_id``). Nothing is recomputed by simulation.

Given an MLflow run id (the parent run of a launch), the run folder is the one
recorded in the run's ``run_dir`` tag; when that folder is not on this machine,
the run's logged ``results/`` and ``config/`` artifacts are downloaded to
``runs/<experiment>/report_<id>/`` and the report is made there.

Options (``key=value``): ``run=`` (required), ``tracking.uri=`` (the MLflow store
holding the run id; default ``sqlite:///mlflow.db``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweeps import grid, kinds, results
from sweeps.experiment import Experiment
from sweeps.schema import ConfigError
from sweeps.store import ResultStore, write_summary

USAGE = "usage: python -m sweeps.report run=<run folder or MLflow run id> [tracking.uri=sqlite:///mlflow.db]"


def _args(argv: list[str]) -> dict:
    out = {}
    for a in argv:
        k, eq, v = a.partition("=")
        if not eq or k not in ("run", "tracking.uri"):
            raise ConfigError(f"unknown argument {a!r}; {USAGE}")
        out[k] = v
    if "run" not in out:
        raise ConfigError(f"run= is missing; {USAGE}")
    return out


def resolve_run(run: str, tracking_uri: str) -> Path:
    """A run folder from a path or an MLflow run id."""
    path = Path(run)
    if path.exists():
        if not (path / "results").is_dir() or not (path / ".hydra" / "config.yaml").is_file():
            raise ConfigError(f"run={run!r}: not a run folder (expected results/ and .hydra/config.yaml inside)")
        return path.resolve()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        info = client.get_run(run)
    except MlflowException as exc:
        raise ConfigError(
            f"run={run!r} is neither a folder nor a run id in tracking.uri={tracking_uri!r} "
            f"({str(exc).splitlines()[0]})"
        ) from None
    tagged = info.data.tags.get("run_dir")
    if tagged and (Path(tagged) / "results").is_dir():
        return Path(tagged)
    exp = client.get_experiment(info.info.experiment_id).name
    dest = Path("runs") / exp / f"report_{run}"
    (dest / ".hydra").mkdir(parents=True, exist_ok=True)
    try:
        client.download_artifacts(run, "results", str(dest))
        client.download_artifacts(run, "config", str(dest))
    except (MlflowException, OSError) as exc:
        raise ConfigError(
            f"run {run}: its folder {tagged!r} is not here and its artifacts could not be downloaded ({exc})"
        ) from None
    for f in (dest / "config").iterdir():
        f.replace(dest / ".hydra" / f.name)
    return dest.resolve()


def load_config(run_dir: Path):
    """The composed config of a launch, with its scale applied as the launch applied it."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{run_dir / '.hydra' / 'config.yaml'}: not a launch's composed config")
    over = run_dir / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(over)) if over.is_file() else []
    grid.apply_scale(cfg, [str(o) for o in overrides])
    return cfg


def remake(run_dir: Path) -> Path:
    """Rerun the report of the launch in ``run_dir``; returns the rewritten ``summary.json``."""
    cfg = load_config(run_dir)
    kind = kinds.get(cfg.kind)
    if not isinstance(kind, Experiment):
        raise ConfigError(f"kind={cfg.kind!r} makes its report while it runs (it has no separate report step)")
    table = ResultStore(run_dir).read()
    report = kind.report(cfg, table, run_dir, None, None, grid.grid_axes(cfg))
    path = run_dir / "summary.json"
    summary = (
        json.loads(path.read_text()) if path.is_file() else {"experiment": cfg.experiment, "run_dir": str(run_dir)}
    )
    results.split_curves(report, run_dir)
    base = {k: summary[k] for k in ("experiment", "run_dir", "mlflow_run_id", "wall_s") if k in summary}
    rest = {**{k: v for k, v in summary.items() if k not in base and k != "headline"}, **report}
    write_summary(path, {**base, "headline": results.headline(rest), **rest})
    return path


def main(argv: list[str]) -> int:
    try:
        args = _args(argv)
        run_dir = resolve_run(args["run"], args.get("tracking.uri", "sqlite:///mlflow.db"))
        path = remake(run_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results.print_headline(json.loads(path.read_text()), file=sys.stderr)
    figs = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() else []
    print(f"figures: {', '.join(str(f) for f in figs)}", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
