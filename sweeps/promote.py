"""``python -m sweeps.promote source=<MLflow run id or study name> name=NAME``: calibration -> online config.

Reads the chosen GP-BO hyperparameters of a calibration and writes ``conf/online/NAME.yaml``,
an online session config (:class:`hardware.online.OnlineConfig`) that ``+exp=online
online=NAME`` runs:

* ``source=<run id>``: the parent MLflow run of a ``+exp=tune_gpbo`` or
  ``+exp=kappa_calibration`` launch; its ``chosen.*`` params hold the values it chose and
  its metrics the held-out scores.
* ``source=<study name>``: the choice of the latest launch of an Optuna study made by
  ``tune_gpbo`` (its best trials confirmed on fresh runs, the winner re-scored on held-out
  subjects), or its best trial, unconfirmed, when no launch got that far. The storage is
  ``study.storage=...`` or, by default, the one recorded on the study's launches in MLflow.

Everything else (the space, electrode mapping, stimulation, muscle, mode, prior) comes from
the template ``base=NAME|PATH`` (default ``example_rat``); the space is the calibration
dataset's when its dimensions match the template's, and ``n_queries`` is the budget the
hyperparameters were tuned for. ``provenance`` records the source run or study, the
dataset and split, the objective and its held-out value next to the published defaults',
the search space, the date and the code version (git commit, ``-dirty`` for uncommitted
changes) of the calibration and of the promotion.

The file is validated against the online schema (and the algorithm built on its space)
before it is written, and every point of its space is checked against the safety limits of
the rig config ``rig=NAME|PATH`` (default ``synapse``, i.e. ``conf/rig/synapse.yaml``) with
the check a session makes at preflight: a point the rig would refuse (an amplitude above
``limits.max_amplitude_uA``, say) refuses the promotion and nothing is written;
``provenance.checked_against_rig`` records the rig config. An existing file is refused
unless ``overwrite=true``; the source run in MLflow is tagged ``neuro_opt.promoted=NAME``.
Other keys: ``tracking.uri`` (default ``sqlite:///mlflow.db``, as the launcher), ``out_dir``
(default ``conf/online``).
The last line printed is the path of the written file.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from sweeps.schema import ConfigError
from sweeps.tuning.space import HP_NAMES

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("source", "name", "overwrite", "tracking.uri", "study.storage", "base", "rig", "out_dir")
DEFAULTS = {
    "overwrite": False,
    "tracking.uri": "sqlite:///mlflow.db",
    "study.storage": None,
    "base": "example_rat",
    "rig": "synapse",
    "out_dir": str(ROOT / "conf" / "online"),
}


class PromoteError(ConfigError):
    """Promotion cannot proceed; the message says why and what to do."""


def parse_args(argv: list[str]) -> dict:
    args: dict[str, Any] = dict(DEFAULTS)
    for item in argv:
        key, sep, val = item.partition("=")
        if not sep:
            raise PromoteError(f"expected key=value arguments, got {item!r}; keys: {', '.join(KEYS)}")
        if key not in KEYS:
            raise PromoteError(f"unknown key {key!r}; keys: {', '.join(KEYS)}")
        if key == "overwrite":
            v = yaml.safe_load(val)
            if not isinstance(v, bool):
                raise PromoteError(f"overwrite={val!r}: expected true or false")
            args[key] = v
        else:
            args[key] = None if val in ("null", "") and key == "study.storage" else val
    for key in ("source", "name"):
        if not args.get(key):
            raise PromoteError(
                f"{key}= is required: python -m sweeps.promote source=<MLflow run id or study name> "
                f"name=NAME [overwrite=true]"
            )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args["name"]) or args["name"].endswith(".yaml"):
        raise PromoteError(
            f"name={args['name']!r}: a config name is letters, digits, '_', '-', '.' (it becomes conf/online/NAME.yaml)"
        )
    return args


# ---------------------------------------------------------------------------------------------
# reading the source
# ---------------------------------------------------------------------------------------------
def _client(uri: str, required: bool):
    from mlflow.tracking import MlflowClient

    from sweeps.tracking import display_uri

    uri = display_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        if required:
            raise PromoteError(f"tracking.uri={uri}: no MLflow store there (pass the tracking.uri of the launch)")
        return None, uri
    return MlflowClient(tracking_uri=uri), uri


def _loads(params: dict, key: str, default=None):
    v = params.get(key)
    return default if v is None else json.loads(v)


def from_run(client, run, uri: str) -> dict:
    p = run.data.params
    if "chosen.algorithm" not in p:
        raise PromoteError(
            f"MLflow run {run.info.run_id} has no chosen hyperparameters (no chosen.algorithm param): "
            f"promote the parent run of a finished +exp=tune_gpbo or +exp=kappa_calibration launch"
        )
    m = run.data.metrics
    return {
        "algorithm": json.loads(p["chosen.algorithm"]),
        "method": p.get("chosen.method"),
        "source": run.info.run_id,
        "source_type": "mlflow_run",
        "tracking_uri": uri,
        "tag_runs": [run.info.run_id],
        "n_queries": _loads(p, "chosen.n_queries"),
        "dataset": _loads(p, "chosen.dataset"),
        "dataset_space": _loads(p, "chosen.dataset_space"),
        "train_subjects": _loads(p, "chosen.train_subjects"),
        "heldout_subjects": _loads(p, "chosen.heldout_subjects"),
        "objective": _loads(p, "chosen.objective"),
        "search": _loads(p, "chosen.search"),
        "heldout_objective": m.get("heldout_objective"),
        "heldout_objective_sem": m.get("heldout_objective_sem"),
        "published_heldout_objective": m.get("published_heldout_objective"),
        "train_objective": m.get("train_objective"),
        "code_version": p.get("chosen.code_version"),
        "experiment": run.data.tags.get("mlflow.runName"),
    }


def _study_runs(client, name: str) -> list:
    if client is None:
        return []
    exps = [e.experiment_id for e in client.search_experiments()]
    if not exps:
        return []
    esc = name.replace("'", "\\'")
    return client.search_runs(
        exps,
        filter_string=f"tags.`optuna.study_name` = '{esc}' and tags.`neuro_opt.kind` = 'tune'",
        order_by=["attributes.start_time DESC"],
    )


def from_study(client, name: str, storage: str | None, uri: str) -> dict:
    import optuna
    from optuna.trial import TrialState

    runs = _study_runs(client, name)
    if storage is None:
        if not runs:
            raise PromoteError(
                f"source={name!r} is neither an MLflow run in {uri} nor a study recorded there; "
                f"pass study.storage=URL for a study, or the tracking.uri of its launches"
            )
        storage = runs[0].data.tags.get("optuna.storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise PromoteError(f"no study named {name!r} in {storage}") from None
    except Exception as exc:  # noqa: BLE001 - an unreachable storage
        raise PromoteError(f"study.storage={storage!r}: cannot open it: {exc}") from None
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise PromoteError(
            f"study {name!r} in {storage} has no finished trial ({len(study.trials)} trial(s), none "
            f"complete): run more trials with +exp=tune_gpbo study.name={name}"
        )
    settings = study.user_attrs.get("settings")
    if settings is None or "hyperparameters" not in study.best_trial.user_attrs:
        raise PromoteError(
            f"study {name!r} was not made by +exp=tune_gpbo (no settings or hyperparameters "
            f"attributes); nothing to promote"
        )
    rec = {
        "method": "optuna",
        "source": name,
        "source_type": "optuna_study",
        "tracking_uri": uri,
        "tag_runs": [],
        "n_queries": settings["run"]["n_queries"],
        "dataset": settings["dataset"],
        "dataset_space": study.user_attrs.get("dataset_space"),
        "train_subjects": list(dict.fromkeys(k.split("/", 1)[0] for k in settings["train"])),
        "heldout_subjects": list(dict.fromkeys(k.split("/", 1)[0] for k in settings["heldout"])),
        "objective": settings["objective"],
        "code_version": study.user_attrs.get("code_version"),
        "heldout_objective": None,
        "heldout_objective_sem": None,
        "published_heldout_objective": None,
    }
    sel = study.user_attrs.get("selected")
    if sel is not None:  # the choice of the study's latest launch (confirmed on fresh runs, re-scored held out)
        rec.update(
            algorithm=sel["hyperparameters"],
            train_objective=sel.get("train_objective"),
            heldout_objective=sel["heldout_objective"][0],
            heldout_objective_sem=sel["heldout_objective"][1],
            published_heldout_objective=sel["published_heldout_objective"][0],
            code_version=sel.get("code_version") or rec["code_version"],
        )
        rec["search"] = {
            "kind": "optuna",
            "study_name": name,
            "storage": storage,
            "trial": sel["trial"],
            "selected": sel["label"],
            "launch": sel.get("launch"),
            "n_trials": sel.get("n_trials"),
            "space": study.user_attrs.get("space"),
        }
        known = {r.info.run_id for r in runs}
        rec["tag_runs"] = [sel["mlflow_run_id"]] if sel.get("mlflow_run_id") in known else []
        if sel.get("n_trials", 0) < len(study.trials):
            print(
                f"note: study {name!r} has {len(study.trials)} trials; the choice promoted was made by launch "
                f"{sel.get('launch')} over its first {sel.get('n_trials')} (relaunch +exp=tune_gpbo "
                f"study.name={name} params.n_trials=0 to choose again over all of them)",
                file=sys.stderr,
            )
    else:
        best = study.best_trial
        rec.update(algorithm=best.user_attrs["hyperparameters"], train_objective=best.value)
        rec["search"] = {
            "kind": "optuna",
            "study_name": name,
            "storage": storage,
            "trial": best.number,
            "selected": f"trial {best.number}",
            "space": study.user_attrs.get("space"),
        }
        print(
            f"note: no launch of study {name!r} finished its choice; promoting its best trial {best.number} "
            f"unconfirmed, and provenance.heldout_objective is null (relaunch +exp=tune_gpbo study.name={name} "
            f"params.n_trials=0 to confirm and re-score it)",
            file=sys.stderr,
        )
    return rec


def read_source(args: dict) -> tuple[dict, object]:
    source = args["source"]
    looks_like_run = re.fullmatch(r"[0-9a-f]{32}", source) is not None
    client, uri = _client(args["tracking.uri"], required=looks_like_run and not args["study.storage"])
    if looks_like_run and client is not None:
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(source)
        except MlflowException:
            run = None
        if run is not None:
            return from_run(client, run, uri), client
    return from_study(client, source, args["study.storage"], uri), client


# ---------------------------------------------------------------------------------------------
# writing the online config
# ---------------------------------------------------------------------------------------------
def _base(spec: str) -> tuple[dict, Path]:
    path = Path(spec)
    if not path.is_file():
        path = ROOT / "conf" / "online" / f"{spec}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (ROOT / "conf" / "online").glob("*.yaml"))
        raise PromoteError(f"base={spec!r}: no such file, nor conf/online/{spec}.yaml; options: {', '.join(options)}")
    with open(path) as fh:
        return yaml.safe_load(fh), path


def _rig_path(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.is_file():
        path = ROOT / "conf" / "rig" / f"{spec}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (ROOT / "conf" / "rig").glob("*.yaml"))
        raise PromoteError(f"rig={spec!r}: no such file, nor conf/rig/{spec}.yaml; options: {', '.join(options)}")
    path = path.resolve()
    try:  # as the user knows it: conf/rig/synapse.yaml inside the repository
        return path.relative_to(ROOT)
    except ValueError:
        return path


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def check_rig(cfg, rig_path: Path) -> None:
    """Refuse ``cfg`` if a session would refuse it on this rig: the session's own preflight
    (:meth:`hardware.online.StimulationPlan.preflight`) over every point of its space."""
    from hardware.online import StimulationPlan
    from hardware.rig import ChannelMap
    from hardware.safety import SafetyLimits, SafetyViolation
    from neuro_opt.space import SearchSpace

    full = ROOT / rig_path  # rig_path itself when absolute
    unusable = f"rig config {rig_path} cannot check the promoted config; nothing written"
    try:
        with open(full) as fh:
            rig_cfg = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise PromoteError(f"{unusable}: {_one_line(exc)}") from None
    if not isinstance(rig_cfg, dict) or not isinstance(rig_cfg.get("limits"), dict):
        raise PromoteError(
            f"{unusable}: it has no limits mapping (rig.limits: max_amplitude_uA, max_charge_nC, ...); "
            f"pass rig= a rig config with safety limits"
        )
    try:
        limits = SafetyLimits.from_dict(rig_cfg["limits"])
        chmap = None
        if cfg.electrode_dims:  # as hardware.online.run_online builds them
            if rig_cfg.get("ch2xy") is None:
                raise ValueError("rig.ch2xy is required: the online space has electrode dimensions")
            chmap = ChannelMap.from_config(rig_cfg["ch2xy"], SearchSpace(dict(cfg.space)), cfg.electrode_dims)
        plan = StimulationPlan(cfg, chmap, limits)
    except (ValueError, FileNotFoundError) as exc:
        raise PromoteError(f"{unusable}: {_one_line(exc)}") from None
    try:
        plan.preflight()
    except SafetyViolation as exc:
        raise PromoteError(
            f"the promoted config breaks the safety limits of rig config {rig_path}; nothing written: {_one_line(exc)}"
        ) from None
    except ValueError as exc:
        raise PromoteError(f"{unusable}: {_one_line(exc)}") from None


def build(rec: dict, args: dict) -> dict:
    from hardware.online import OnlineConfig
    from neuro_opt import algorithms
    from neuro_opt.space import SearchSpace
    from sweeps.tuning.setup import git_version

    base, base_path = _base(args["base"])
    rig_path = _rig_path(args["rig"])
    d = dict(base)
    d["name"] = args["name"]
    alg = rec["algorithm"]
    first = ["name", *HP_NAMES]
    d["algorithm"] = {**{k: alg[k] for k in first if k in alg}, **{k: v for k, v in alg.items() if k not in first}}
    ds_space = rec.get("dataset_space")
    if ds_space and set(ds_space) == set(base.get("space", {})):
        d["space"] = {k: list(v) for k, v in ds_space.items()}
    elif ds_space:
        print(
            f"note: the calibration dataset's space {list(ds_space)} has other dimensions than base "
            f"{base_path.name}'s {list(base.get('space', {}))}; kept the base's space (pass base= a template "
            f"with the dataset's dimensions)",
            file=sys.stderr,
        )
    n_q = rec.get("n_queries")
    if n_q is None:
        n_q = 1
        for v in (ds_space or d["space"]).values():
            n_q *= len(v)
    d["n_queries"] = int(n_q)
    dataset = rec.get("dataset") or {}
    d["provenance"] = {
        "source": rec["source"],
        "source_type": rec["source_type"],
        "tracking_uri": rec["tracking_uri"],
        "method": rec.get("method"),
        "search": rec.get("search"),
        "dataset": dataset.get("name"),
        "dataset_config": dataset,
        "train_subjects": rec.get("train_subjects"),
        "heldout_subjects": rec.get("heldout_subjects"),
        "objective": rec.get("objective"),
        "heldout_objective": rec.get("heldout_objective"),
        "heldout_objective_sem": rec.get("heldout_objective_sem"),
        "published_heldout_objective": rec.get("published_heldout_objective"),
        "train_objective": rec.get("train_objective"),
        "n_queries_tuned": rec.get("n_queries"),
        "base": str(base_path),
        "checked_against_rig": str(rig_path),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "code_version": rec.get("code_version"),
        "promoted_with": git_version(),
    }
    try:
        cfg = OnlineConfig.from_dict(d)
    except ValueError as exc:
        raise PromoteError(f"the promoted config does not validate as an online config: {exc}") from None
    alg = dict(cfg.algorithm)
    name = alg.pop("name")
    try:
        algorithms.make(name, SearchSpace(dict(cfg.space)), n_reps=1, seed=cfg.seed, **alg)
    except (ValueError, TypeError) as exc:
        raise PromoteError(
            f"the chosen hyperparameters do not build a {name} optimizer on the online space: {exc}"
        ) from None
    check_rig(cfg, rig_path)
    return cfg.to_dict()


class _Dumper(yaml.SafeDumper):
    """Block mappings, flow lists of scalars (``x: [1, 2, 3]``), as in conf/online/example_rat.yaml."""


def _represent_list(dumper, data):
    flow = all(isinstance(v, (int, float, str, bool)) or v is None for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def write(d: dict, args: dict) -> Path:
    from hardware.online import OnlineConfig

    out_dir = Path(args["out_dir"])
    path = out_dir / f"{args['name']}.yaml"
    if path.exists() and not args["overwrite"]:
        raise PromoteError(f"{path} exists; pass overwrite=true to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    prov = d["provenance"]
    header = (
        f"# Online session config promoted by `python -m sweeps.promote` on {prov['date']}\n"
        f"# from {prov['source_type']} {prov['source']} ({prov['method']}); see provenance at the end.\n"
        f"# Run it: python -m sweeps.launch +exp=online online={args['name']} rig=simulated|synapse\n"
    )
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(header + yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=100))
    try:
        back = OnlineConfig.load(tmp)
    except ValueError as exc:
        tmp.unlink()
        raise PromoteError(f"the written file does not load back as an online config: {exc}") from None
    if back.algorithm != d["algorithm"]:
        tmp.unlink()
        raise PromoteError(f"the written algorithm {back.algorithm} differs from the chosen {d['algorithm']}")
    tmp.replace(path)
    return path


def tag_source(client, rec: dict, path: Path, name: str) -> None:
    if client is None or not rec.get("tag_runs"):
        print(f"note: no MLflow run to tag as promoted (tracking.uri={rec['tracking_uri']})", file=sys.stderr)
        return
    for run_id in rec["tag_runs"]:
        client.set_tag(run_id, "neuro_opt.promoted", name)
        client.set_tag(run_id, "neuro_opt.promoted_to", str(path))
        client.set_tag(run_id, "neuro_opt.promoted_at", _dt.datetime.now().astimezone().isoformat(timespec="seconds"))


def promote(argv: list[str]) -> Path:
    args = parse_args(argv)
    rec, client = read_source(args)
    d = build(rec, args)
    path = write(d, args)
    tag_source(client, rec, path, args["name"])
    hv = rec.get("heldout_objective")
    pv = rec.get("published_heldout_objective")
    hp = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec["algorithm"].items() if k in HP_NAMES
    )
    print(
        f"promoted {rec['source_type']} {rec['source']} ({rec['method']}): {hp}; held-out "
        f"{(rec.get('objective') or {}).get('name', 'objective')} "
        f"{'n/a' if hv is None else f'{hv:.4f}'} (published defaults {'n/a' if pv is None else f'{pv:.4f}'})"
    )
    print(path)
    return path


def main(argv: list[str] | None = None) -> int:
    try:
        promote(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
