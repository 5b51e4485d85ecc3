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
from typing import TYPE_CHECKING

import numpy as np

from neuro_opt import metrics
from sweeps.experiment import DriveExperiment
from sweeps.schema import ConfigError
from sweeps.tuning.heldout import chosen_params, dataset_block, heldout_figure, heldout_groups, log_chosen
from sweeps.tuning.scoring import Scorer, runs_of
from sweeps.tuning.setup import Setup, check_algorithm, prepare
from sweeps.tuning.space import COMMON_PARAMS, INT_HPS, NOT_SEARCHABLE, RATIOS

if TYPE_CHECKING:
    from sweeps.run import Run

CAL_PARAMS = COMMON_PARAMS + ("calibrate", "values", "max_rounds")


def _plan(setup: Setup) -> tuple[list, dict, int]:
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
        if name not in setup.base or name in NOT_SEARCHABLE:
            raise ConfigError(
                f"params.calibrate: {name!r} is not a hyperparameter of algorithm "
                f"{setup.base.get('name')!r}; known: "
                f"{', '.join(k for k in setup.base if k not in NOT_SEARCHABLE)}"
            )
        vals = values.get(name)
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where} must be a non-empty list of values to try")
        if len({json.dumps(v) for v in vals}) != len(vals):
            raise ConfigError(f"{where} has repeated values: {vals}")
        for v in vals:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"{where}: {v!r} is not a finite number")
            if name in INT_HPS and float(v) != int(v):
                raise ConfigError(f"{where}: {name} takes integers, got {v!r}")
            # each value alone on the published defaults, bound pairs aside (checked per round)
            alg = {**setup.published, name: int(v) if name in INT_HPS else v}
            for lo, hi in RATIOS.values():
                if name in (lo, hi) and not alg[lo] < alg[hi]:
                    alg[hi if name == lo else lo] = v * 2 if name == lo else v / 2
            check_algorithm(alg, space0, where, n_q)
    rounds = p.get("max_rounds", 3)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ConfigError(f"params.max_rounds={rounds!r}: expected an integer >= 1")
    return order, {k: [int(v) if k in INT_HPS else v for v in values[k]] for k in order}, rounds


def _allowed(alg: dict, name: str, v) -> bool:
    for lo, hi in RATIOS.values():
        if name == lo and hi in alg and not v < alg[hi]:
            return False
        if name == hi and lo in alg and not alg[lo] < v:
            return False
    return True


class OneAtATime:
    """The procedure: rounds over ``order``, each hyperparameter over its values with the others fixed.

    Settings met again (a later round, the same values) come from a cache, so ``n_settings``
    counts what was simulated; every evaluation is a row (and a nested MLflow run).
    """

    def __init__(self, setup: Setup, order: list, values: dict, max_rounds: int, scorer: Scorer, tracker, parent: str):
        self.setup, self.order, self.values, self.max_rounds = setup, order, values, max_rounds
        self.scorer, self.tracker, self.parent = scorer, tracker, parent
        self.cache: dict = {}  # stable hash of the algorithm config -> per-run training objective
        self.rows: list[dict] = []
        self.skipped: list[dict] = []
        self.current = dict(setup.published)
        self.converged, self.rounds, self.n_settings = False, 0, 0

    def scores(self, algs: dict) -> tuple[dict, set]:
        """``{label: alg}`` -> ``{label: [mean, sem]}`` on the training runs, and the labels simulated now."""
        from sweeps.grid import stable_hash

        todo = {v: a for v, a in algs.items() if stable_hash(a) not in self.cache}
        if todo:
            res = self.scorer.evaluate(todo, "train")
            for v, a in todo.items():
                self.cache[stable_hash(a)] = runs_of(self.setup.objective, res[v], self.setup.train)
            self.n_settings += len(todo)
        return {v: metrics.value_sem(self.cache[stable_hash(a)]) for v, a in algs.items()}, set(todo)

    def step(self, rnd: int, name: str) -> bool:
        """One hyperparameter over its list; returns True if its value changed."""
        cands = [v for v in self.values[name] if _allowed(self.current, name, v)]
        self.skipped += [
            {"round": rnd, "hyperparameter": name, "value": v} for v in self.values[name] if v not in cands
        ]
        if not cands:
            print(
                f"note: round {rnd}: no value of {name} fits the current bounds; kept {self.current[name]}",
                file=sys.stderr,
            )
            return False
        t0 = time.time()
        algs = {v: {**self.current, name: v} for v in cands}
        scores, simulated = self.scores(algs)
        top = max(m for m, _ in scores.values())
        tied = [v for v in cands if scores[v][0] == top]
        pick = self.current[name] if self.current[name] in tied else tied[0]
        for v in cands:
            self.rows.append(
                {
                    "round": rnd,
                    "hyperparameter": name,
                    "value": float(v),
                    "objective": scores[v][0],
                    "sem": scores[v][1],
                    "chosen": v == pick,
                    "simulated": v in simulated,
                    "hyperparameters": json.dumps(algs[v], sort_keys=True),
                }
            )
            child = self.tracker.start(
                f"round {rnd} {name}={v}",
                parent=self.parent,
                params={
                    "round": rnd,
                    "hyperparameter": name,
                    "value": v,
                    **{f"hp.{k}": x for k, x in chosen_params(algs[v]).items()},
                },
                tags={"chosen": str(v == pick), "cached": str(v not in simulated)},
            )
            self.tracker.metrics(child, {"objective": scores[v][0], "objective_sem": scores[v][1]})
            self.tracker.end(child)
        print(
            f"round {rnd}: {name} over {len(cands)} values ({len(simulated)} simulated, {time.time() - t0:.1f} s): "
            f"best {pick} ({scores[pick][0]:.4f})",
            file=sys.stderr,
        )
        changed = pick != self.current[name]
        self.current[name] = pick
        return changed

    def run(self) -> dict:
        for rnd in range(1, self.max_rounds + 1):
            changed = [self.step(rnd, name) for name in self.order]
            self.rounds = rnd
            if not any(changed):
                self.converged = True
                break
        return self.current

    def rescore(self) -> dict:
        """Held-out runs of the result and of the published defaults (and the defaults' training runs)."""
        from sweeps.grid import stable_hash

        methods = {"one_at_a_time": self.current, "published_defaults": self.setup.published}
        held = self.scorer.submit_all(methods, "heldout")
        pub_key = stable_hash(self.setup.published)
        pub = self.scorer.submit_all({"p": self.setup.published}, "train") if pub_key not in self.cache else None
        res = self.scorer.collect(held)
        if pub is not None:
            self.cache[pub_key] = runs_of(self.setup.objective, self.scorer.collect(pub)["p"], self.setup.train)
        train_values = {
            "one_at_a_time": metrics.value_sem(self.cache[stable_hash(self.current)]),
            "published_defaults": metrics.value_sem(self.cache[pub_key]),
        }
        simulated = {"one_at_a_time": self.n_settings * self.setup.train_runs(), "published_defaults": 0}
        groups, comparison = heldout_groups(self.setup, res, methods, train_values, simulated, extra_keys=self.order)
        return {"res": res, "train_values": train_values, "groups": groups, "comparison": comparison}

    def report(self, out: dict, run_dir: Path) -> dict:
        """Figures, the evaluations table and the chosen hyperparameters; returns the summary body."""
        figs = run_dir / "figures"
        figs.mkdir(exist_ok=True)
        (run_dir / "results").mkdir(exist_ok=True)
        _write_rows(self.rows, run_dir / "results" / "evaluations.parquet")
        _values_figure(self.rows, self.order, out["train_values"]["published_defaults"][0], figs / "calibration.png")
        heldout_figure(self.setup, out["res"], figs / "heldout_curves.png")
        search = {
            "kind": "one_at_a_time",
            "calibrate": self.order,
            "values": self.values,
            "rounds": self.rounds,
            "converged": self.converged,
        }
        groups = out["groups"]
        log_chosen(self.tracker, self.parent, "one_at_a_time", self.current, self.setup, groups[0], groups[1], search)
        self.tracker.metrics(self.parent, {"rounds": self.rounds, "distinct_settings": self.n_settings})
        summary = {
            "calibration": {
                "calibrate": self.order,
                "values": self.values,
                "rounds": self.rounds,
                "max_rounds": self.max_rounds,
                "converged": self.converged,
                "evaluations": len(self.rows),
                "distinct_settings": self.n_settings,
                "skipped": self.skipped,
                "chosen": chosen_params(self.current, self.order),
            },
            "dataset": dataset_block(self.setup),
            "groups": groups,
            "comparison": out["comparison"],
        }
        return summary


class CalibrationKind(DriveExperiment):
    """kind=calibration: the published one-at-a-time procedure (``+exp=kappa_calibration``)."""

    def drive(self, run: Run) -> dict:
        cfg = run.cfg
        setup = prepare(cfg, run.overrides, "calibration", CAL_PARAMS)
        order, values, max_rounds = _plan(setup)
        run.dir.mkdir(parents=True, exist_ok=True)
        with run.ray():
            run.open_parent(tags={"neuro_opt.kind": "calibration", "git_commit": setup.git})
            scorer = Scorer(setup, cfg.cluster.cpus_per_cell, cfg.cluster.max_retries)
            cal = OneAtATime(setup, order, values, max_rounds, scorer, run.tracker, run.require_parent())
            cal.run()
            out = cal.rescore()
        return cal.report(out, run.dir)


def _write_rows(rows: list, path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("round", pa.int64()),
            ("hyperparameter", pa.string()),
            ("value", pa.float64()),
            ("objective", pa.float64()),
            ("sem", pa.float64()),
            ("chosen", pa.bool_()),
            ("simulated", pa.bool_()),
            ("hyperparameters", pa.string()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _values_figure(rows: list, order: list, published: float, path: Path) -> Path:
    """Objective vs value, one panel per hyperparameter, one line per round (the protocol's output graph)."""
    from sweeps.plots import plt

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
        if (
            mine
            and min(r["value"] for r in mine) > 0
            and max(r["value"] for r in mine) / min(r["value"] for r in mine) > 50
        ):
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


KIND = CalibrationKind()
