"""``python -m sweeps.launch +exp=kappa_calibration``: the published one-at-a-time calibration.

STAR Protocols steps 10-12 and 57-61 (Figure 2): simulate GP-BO on the data with each value
of one hyperparameter's list, the others fixed at their current values; keep the value with
the highest mean performance at the final query; move to the next hyperparameter. Here the
procedure repeats in rounds (``params.calibrate`` in order, every round) until a round
changes nothing or ``params.max_rounds`` is reached, starting from the published defaults.

It shares everything else with ``+exp=tune_gpbo`` (:mod:`sweeps.kinds.tune`): the same
training runs and seeds, the same objective (``params.objective``), the same held-out
re-scoring against the published defaults, the same ``summary.json`` groups
(``params.method``: ``one_at_a_time`` and ``published_defaults``) and ``chosen.*`` MLflow
params that ``python -m sweeps.promote`` reads. ``simulated_runs`` counts the runs spent on
the training subjects (a setting met twice is simulated once), so its cost compares with an
Optuna study's.

Values that would break ``rho_low < rho_high`` or ``noise_min < noise_max`` against the
current other bound are skipped (listed in the summary).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from sweeps.kinds import tune
from sweeps.schema import ConfigError

CAL_PARAMS = tune.COMMON_PARAMS + ("calibrate", "values", "max_rounds")


def _plan(setup: tune.Setup) -> tuple[list, dict, int]:
    p = setup.params
    order = p.get("calibrate")
    values = p.get("values") or {}
    if not isinstance(order, list) or not order:
        raise ConfigError(f"params.calibrate must be a non-empty list of hyperparameters, got {order!r}")
    if len(set(order)) != len(order):
        raise ConfigError(f"params.calibrate has repeated names: {order}")
    if not isinstance(values, dict):
        raise ConfigError(f"params.values must map hyperparameters to value lists, got {values!r}")
    n_q = setup.run["n_queries"] or min(setup.dataset[k].space.n_points for k in setup.train)
    space0 = setup.dataset[setup.train[0]].space
    for name in order:
        where = f"params.values.{name}"
        if name not in setup.base or name in tune.NOT_SEARCHABLE:
            raise ConfigError(f"params.calibrate: {name!r} is not a hyperparameter of algorithm "
                              f"{setup.base.get('name')!r}; known: "
                              f"{', '.join(k for k in setup.base if k not in tune.NOT_SEARCHABLE)}")
        vals = values.get(name)
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where} must be a non-empty list of values to try")
        if len({json.dumps(v) for v in vals}) != len(vals):
            raise ConfigError(f"{where} has repeated values: {vals}")
        for v in vals:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"{where}: {v!r} is not a finite number")
            if name in tune.INT_HPS and float(v) != int(v):
                raise ConfigError(f"{where}: {name} takes integers, got {v!r}")
            # each value alone on the published defaults, bound pairs aside (checked per round)
            alg = {**setup.published, name: int(v) if name in tune.INT_HPS else v}
            for lo, hi in tune.RATIOS.values():
                if name in (lo, hi) and not alg[lo] < alg[hi]:
                    alg[hi if name == lo else lo] = v * 2 if name == lo else v / 2
            tune.check_algorithm(alg, space0, where, n_q)
    rounds = p.get("max_rounds", 3)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ConfigError(f"params.max_rounds={rounds!r}: expected an integer >= 1")
    return order, {k: [int(v) if k in tune.INT_HPS else v for v in values[k]] for k in order}, rounds


def _allowed(alg: dict, name: str, v) -> bool:
    for lo, hi in tune.RATIOS.values():
        if name == lo and hi in alg and not v < alg[hi]:
            return False
        if name == hi and lo in alg and not alg[lo] < v:
            return False
    return True


def drive(cfg, overrides, run_dir: Path, t0: float) -> Path:
    import ray

    from sweeps.grid import stable_hash
    from sweeps.launch import _loggable, connect_ray
    from sweeps.tracking import Tracker

    setup = tune.prepare(cfg, overrides, "calibration", CAL_PARAMS)
    order, values, max_rounds = _plan(setup)
    run_dir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment_name or cfg.experiment)
    started = connect_ray(cfg)
    parent = tracker.start(f"{cfg.experiment} {run_dir.name}", params=_loggable(cfg),
                           tags={"run_dir": str(run_dir), "neuro_opt.kind": "calibration", "git_commit": setup.git})
    cache: dict = {}  # stable hash of the algorithm config -> per-run training objective
    rows, skipped = [], []
    current = dict(setup.published)
    converged, rounds_done, n_settings = False, 0, 0
    try:
        scorer = tune.Scorer(setup, cfg.cluster.cpus_per_cell, cfg.cluster.max_retries)
        for rnd in range(1, max_rounds + 1):
            changed = False
            for name in order:
                cands = [v for v in values[name] if _allowed(current, name, v)]
                skipped += [{"round": rnd, "hyperparameter": name, "value": v}
                            for v in values[name] if v not in cands]
                if not cands:
                    print(f"note: round {rnd}: no value of {name} fits the current bounds; kept {current[name]}",
                          file=sys.stderr)
                    continue
                algs = {v: {**current, name: v} for v in cands}
                todo = {v: a for v, a in algs.items() if stable_hash(a) not in cache}
                t_step = time.time()
                if todo:
                    res = scorer.evaluate(todo, "train")
                    for v, a in todo.items():
                        cache[stable_hash(a)] = tune.runs_of(setup.objective, res[v], setup.train)
                    n_settings += len(todo)
                scores = {v: tune.mean_sem(cache[stable_hash(a)]) for v, a in algs.items()}
                top = max(s[0] for s in scores.values())
                tied = [v for v in cands if scores[v][0] == top]
                pick = current[name] if current[name] in tied else tied[0]
                for v in cands:
                    rows.append({"round": rnd, "hyperparameter": name, "value": float(v),
                                 "objective": scores[v][0], "sem": scores[v][1], "chosen": v == pick,
                                 "simulated": v in todo, "hyperparameters": json.dumps(algs[v], sort_keys=True)})
                    child = tracker.start(f"round {rnd} {name}={v}", parent=parent,
                                          params={"round": rnd, "hyperparameter": name, "value": v,
                                                  **{f"hp.{k}": x for k, x in tune.chosen_params(algs[v]).items()}},
                                          tags={"chosen": str(v == pick), "cached": str(v not in todo)})
                    tracker.metrics(child, {"objective": scores[v][0], "objective_sem": scores[v][1]})
                    tracker.end(child)
                print(f"round {rnd}: {name} over {len(cands)} values ({len(todo)} simulated, "
                      f"{time.time() - t_step:.1f} s): best {pick} ({scores[pick][0]:.4f})", file=sys.stderr)
                if pick != current[name]:
                    changed = True
                    current[name] = pick
            rounds_done = rnd
            if not changed:
                converged = True
                break
        pub_key = stable_hash(setup.published)
        if pub_key not in cache:
            res = scorer.evaluate({"p": setup.published}, "train")["p"]
            cache[pub_key] = tune.runs_of(setup.objective, res, setup.train)
        simulated = n_settings * setup.train_runs()
        train_values = {"one_at_a_time": tune.mean_sem(cache[stable_hash(current)]),
                        "published_defaults": tune.mean_sem(cache[pub_key])}
        groups, res, comparison = tune.heldout_groups(
            setup, scorer, {"one_at_a_time": current, "published_defaults": setup.published}, train_values,
            {"one_at_a_time": simulated, "published_defaults": 0}, extra_keys=order)
    except KeyboardInterrupt:
        tracker.end(parent, "KILLED")
        raise
    except BaseException:
        tracker.end(parent, "FAILED")
        raise
    finally:
        if started:
            ray.shutdown()

    figs = run_dir / "figures"
    figs.mkdir(exist_ok=True)
    (run_dir / "results").mkdir(exist_ok=True)
    _write_rows(rows, run_dir / "results" / "evaluations.parquet")
    _values_figure(rows, order, train_values["published_defaults"][0], figs / "calibration.png")
    tune.heldout_figure(setup, res, figs / "heldout_curves.png")
    search = {"kind": "one_at_a_time", "calibrate": order, "values": values, "rounds": rounds_done,
              "converged": converged}
    tune.log_chosen(tracker, parent, "one_at_a_time", current, setup, groups[0], groups[1], search)
    tracker.metrics(parent, {"rounds": rounds_done, "distinct_settings": n_settings})
    summary = {
        "calibration": {"calibrate": order, "values": values, "rounds": rounds_done, "max_rounds": max_rounds,
                        "converged": converged, "evaluations": len(rows), "distinct_settings": n_settings,
                        "skipped": skipped, "chosen": tune.chosen_params(current, order)},
        "dataset": tune.dataset_block(setup),
        "groups": groups,
        "comparison": comparison,
    }
    return tune.finish(cfg, setup, run_dir, t0, tracker, parent, summary)


def _write_rows(rows: list, path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("round", pa.int64()), ("hyperparameter", pa.string()), ("value", pa.float64()),
                        ("objective", pa.float64()), ("sem", pa.float64()), ("chosen", pa.bool_()),
                        ("simulated", pa.bool_()), ("hyperparameters", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _values_figure(rows: list, order: list, published: float, path: Path) -> Path:
    """Objective vs value, one panel per hyperparameter, one line per round (the protocol's output graph)."""
    plt = tune._plt()
    cols = min(3, len(order))
    nrows = math.ceil(len(order) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.9 * nrows), squeeze=False, sharey=True)
    for i, name in enumerate(order):
        ax = axes[i // cols, i % cols]
        mine = [r for r in rows if r["hyperparameter"] == name]
        for rnd in sorted({r["round"] for r in mine}):
            rr = sorted((r for r in mine if r["round"] == rnd), key=lambda r: r["value"])
            x = np.array([r["value"] for r in rr])
            y = np.array([r["objective"] for r in rr])
            s = np.array([r["sem"] for r in rr])
            ax.errorbar(x, y, yerr=s, marker="o", ms=3, capsize=2, label=f"round {rnd}", color=f"C{rnd - 1}")
            for r in rr:
                if r["chosen"]:
                    ax.plot([r["value"]], [r["objective"]], marker="*", ms=11, color=f"C{rnd - 1}")
        if mine and min(r["value"] for r in mine) > 0 and max(r["value"] for r in mine) / \
                min(r["value"] for r in mine) > 50:
            ax.set_xscale("log")
        if published == published:
            ax.axhline(published, ls="--", color="0.5", lw=1)
        ax.set_xlabel(name)
        if i % cols == 0:
            ax.set_ylabel("training objective")
        if i == 0:
            ax.legend(fontsize=7)
    for j in range(len(order), nrows * cols):
        axes[j // cols, j % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class CalibrationKind:
    drive = staticmethod(drive)


KIND = CalibrationKind()
