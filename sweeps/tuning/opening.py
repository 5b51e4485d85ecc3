"""Opening the Optuna study: its storage (found again on resume, settings compared), sampler, pruner and starts."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from sweeps.schema import ConfigError
from sweeps.tuning.heldout import json_default
from sweeps.tuning.setup import Setup
from sweeps.tuning.space import SearchSpec


def _sqlite_studies(path: Path) -> list[str]:
    import sqlite3

    if not path.is_file():
        return []
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return [r[0] for r in con.execute("SELECT study_name FROM studies")]
        finally:
            con.close()
    except sqlite3.Error:
        return []


def make_sampler(spec, seed: int):
    import optuna

    spec = dict(spec or {"name": "tpe"})
    name = spec.pop("name", "tpe")
    try:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=spec.pop("multivariate", True), **spec)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed, **spec)
        if name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, **spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"params.sampler: {exc}") from None
    raise ConfigError(f"params.sampler.name={name!r}: expected tpe, random or qmc")


def make_pruner(spec):
    import optuna

    spec = dict(spec or {"name": "median"})
    name = spec.pop("name", "median")
    try:
        if name == "median":
            return optuna.pruners.MedianPruner(**spec)
        if name == "percentile":
            return optuna.pruners.PercentilePruner(**spec)
        if name in ("none", None):
            return optuna.pruners.NopPruner()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"params.pruner: {exc}") from None
    raise ConfigError(f"params.pruner.name={name!r}: expected median, percentile or none")


def start_points(setup: Setup, spec: SearchSpec) -> list[dict]:
    starts = setup.params.get("start", [])
    if not isinstance(starts, list):
        raise ConfigError(
            f"params.start must be a list of points (mappings of hyperparameters, or 'published'), got {starts!r}"
        )
    out = []
    for i, s in enumerate(starts):
        where = f"params.start[{i}]"
        if s == "published":
            s = {k: v for k, v in setup.published.items() if k != "name"}
        if not isinstance(s, dict) or not s:
            raise ConfigError(f"{where}: expected a mapping of hyperparameters or 'published', got {s!r}")
        out.append(spec.to_sampled(s, where))
    return out


def open_study(cfg, setup: Setup, spec: SearchSpec, run_dir: Path, sampler, pruner):
    """Load or create the study; a resumed study must have the same settings. Returns (study, storage, created)."""
    import optuna

    name, storage = cfg.study.name, cfg.study.storage
    note = None
    if storage is None:
        db = run_dir / "optuna.db"
        if name and name not in _sqlite_studies(db):
            for other in sorted(run_dir.parent.glob("*/optuna.db")):
                if other != db and name in _sqlite_studies(other):
                    db, note = other, f"study {name!r} found in {other}; adding trials to it"
        if name is None:
            names = _sqlite_studies(db)
            if len(names) > 1:
                raise ConfigError(f"{db} holds studies {names}; choose one with study.name=NAME")
            name = names[0] if names else None
        storage = f"sqlite:///{db}"
    name = name or f"{cfg.experiment}-{run_dir.name}"
    beat = int(cfg.study.heartbeat_s)
    if beat < 1:
        raise ConfigError(f"study.heartbeat_s={cfg.study.heartbeat_s}: expected a whole number of seconds >= 1")
    # heartbeats with ask/tell (not Study.optimize) are what this driver means to use: no warning per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    try:
        # a trial records a heartbeat while it runs; one whose launch was killed stops beating and is failed
        # (fail_stale_trials) when the study is opened again, instead of staying RUNNING for ever
        rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=beat, grace_period=2 * beat)
        existing = optuna.study.get_all_study_names(rdb)
    except Exception as exc:  # noqa: BLE001 - an unreachable or malformed storage URL
        raise ConfigError(f"study.storage={storage!r}: cannot open the Optuna storage: {exc}") from None
    settings = json.loads(json.dumps(setup.settings(), default=json_default))
    if name in existing:
        study = optuna.load_study(study_name=name, storage=rdb, sampler=sampler, pruner=pruner)
        running = sum(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
        optuna.storages.fail_stale_trials(study)
        stale = running - sum(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
        if stale:
            print(
                f"note: {stale} trial(s) of study {name!r} were left RUNNING by a launch that died (no heartbeat "
                f"for {2 * beat} s): marked FAIL",
                file=sys.stderr,
            )
        before = study.user_attrs.get("settings")
        space_before = study.user_attrs.get("space")
        diffs = [k for k in settings if before is not None and before.get(k) != settings[k]]
        if space_before is not None and space_before != spec.describe():
            diffs.append("space")
        if diffs:
            was = {k: (space_before if k == "space" else before.get(k)) for k in diffs}
            raise ConfigError(
                f"study {name!r} in {storage} was created with other {', '.join(diffs)} "
                f"(then: {json.dumps(was)[:600]}); its trials' scores would not compare with this "
                f"launch's: use another study.name, or the same settings"
            )
        if note:
            print(f"note: {note}", file=sys.stderr)
        return study, storage, False
    study = optuna.create_study(study_name=name, storage=rdb, sampler=sampler, pruner=pruner, direction="maximize")
    study.set_user_attr("settings", settings)
    study.set_user_attr("space", spec.describe())
    study.set_user_attr("published", json.loads(json.dumps(setup.published)))
    study.set_user_attr("kind", "tune")
    study.set_user_attr("dataset_space", setup.space_dims)
    study.set_user_attr("code_version", setup.git)
    for point in start_points(setup, spec):
        study.enqueue_trial(point, user_attrs={"start_point": True})
    return study, storage, True
