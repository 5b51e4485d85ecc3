"""Hierarchical GP-BO against flat GP-BO on multi-electrode patterns (seed 003, Fig. 2b).

Why not the ``optimization`` kind: a hierarchical run queries two spaces (single channels,
then channel pairs x delays) and stage 1 records every muscle of a query, which the
one-space, one-response ask/tell loop of :func:`neuro_opt.simulate.simulate` cannot
express; and the headline metric is ``accuracy`` (the believed best *is* the true best
pattern) by total queries, stage 1 included.

A cell is one problem (``muscle``: a virtual subject of the dataset) x ``params.method`` x
``params.kappa`` with ``n_reps`` replicates of ``n_queries`` total queries, run by
:func:`neuro_opt.algorithms.hierarchical.run_patterns`. Hyperparameters: ``params.kappa``,
the shared GP bounds ``params.gp`` and the method's own section ``params.<method>``.

The summary has one group per (method, kappa) (problems pooled, ``report.pool``) with
``accuracy_q<N>`` and ``exploration_q<N>`` (``[mean, sem]`` over runs) at every budget
``N`` that is a multiple of 5 up to ``n_queries``, the finals, ``queries_to_accuracy_0.9``
(first budget whose mean accuracy reaches 0.9, null if none) and ``stage1_queries``; a
``targets`` block measures the issue's targets (:data:`TARGETS`) for every kappa (``holds_at``:
the kappas where both hold); MLflow
gets one child run per group with the mean curves as step metrics; ``figures/`` holds
``accuracy.png`` (Fig. 2b: accuracy vs total queries, one panel per method, one line per
kappa) and ``exploration.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neuro_opt import metrics
from neuro_opt.algorithms.hierarchical import make_method, run_patterns
from sweeps import display
from sweeps.kinds.optimization import DatasetKind
from sweeps.plots import plt  # the one place that picks the Agg backend
from sweeps.schema import ConfigError
from sweeps.tables import run_curves, unique_rows


class _Targets(TypedDict):
    accuracy: float
    within: int
    ahead: tuple[int, int]


#: the issue's targets: hierarchical reaches ``accuracy`` within ``within`` total queries and
#: leads flat GP-BO by more than the SEM at every budget in ``ahead``
TARGETS: _Targets = {"accuracy": 0.9, "within": 45, "ahead": (30, 80)}
CURVES = ("accuracy", "exploration")
GP_METHODS = ("hierarchical", "flat")


def hyperparameters(params: dict) -> dict:
    """The method's keyword arguments: ``kappa``, the shared ``gp`` section (GP methods) and ``params[method]``."""
    method = params.get("method")
    hp = {"kappa": params["kappa"]} if "kappa" in params else {}
    if method in GP_METHODS:
        hp.update(params.get("gp") or {})
    hp.update(params.get(method) or {})
    return hp


def _label(key: str) -> str:
    return key[len("params.") :] if key.startswith("params.") else key


class HierarchicalKind(DatasetKind):
    payload_keys = ("kind", "params", "dataset", "muscle", "n_reps", "n_queries", "seed")

    def validate(self, cfg, cells) -> None:
        for cell in cells:
            p = cell.payload
            where = f"cell {cell.coords}"
            problem = self.data_for(p)
            if not hasattr(problem, "pattern_space") or not hasattr(problem, "sample"):
                raise ConfigError(
                    f"dataset={p['dataset'].get('name')!r} ({where}): kind=hierarchical needs "
                    f"multi-electrode patterns (e.g. dataset=two_electrode)"
                )
            n_q = p["n_queries"]
            if not isinstance(n_q, int) or n_q < 1:
                raise ConfigError(
                    f"n_queries={n_q!r}: kind=hierarchical needs a total query budget >= 1 "
                    f"(stage 1 included), e.g. n_queries=80"
                )
            if p["n_reps"] < 1:
                raise ConfigError(f"n_reps={p['n_reps']}: must be >= 1")
            params = dict(p["params"])
            method: Any = params.get("method")  # any config value: make_method's ValueError names a bad one
            kappa = params.get("kappa")
            if not isinstance(kappa, (int, float)) or not math.isfinite(kappa) or kappa < 0:
                raise ConfigError(f"params.kappa={kappa!r} ({where}): the UCB weight must be a number >= 0")
            hp = hyperparameters(params)
            try:  # builds the method once: unknown names, unknown or out-of-range hyperparameters
                opt = make_method(method, problem, n_reps=1, seed=0, **hp)
            except ValueError as exc:
                raise ConfigError(f"params.method={method!r} ({where}): {exc}") from None
            budgets = getattr(opt, "budgets", None)
            if budgets is not None and int(budgets[-1]) >= n_q:
                raise ConfigError(
                    f"params.hierarchical.stage_queries ({where}): the stages before the last "
                    f"take {int(budgets[-1])} queries, which leaves none of n_queries={n_q}"
                )

    # --------------------------------------------------------------- worker side
    @staticmethod
    def run_cell(payload: dict, seed_sequence, problem) -> pa.Table:
        params = dict(payload["params"])
        return run_patterns(
            problem,
            params["method"],
            n_reps=payload["n_reps"],
            n_queries=payload["n_queries"],
            seed=seed_sequence,
            hyperparameters=hyperparameters(params),
        )

    # --------------------------------------------------------------- report
    def report(self, cfg, table: pa.Table, run_dir: Path, tracker, parent_run: str | None, axes: dict) -> dict:
        pool = [k for k in cfg.report.pool if k in axes or k == "muscle"]
        group_keys = [k for k in axes if k not in pool]
        cols = [k.replace(".", "_") for k in group_keys]
        names = [_label(k) for k in group_keys]
        n_q = int(pc.max(table["query"]).as_py())
        budgets = sorted({q for q in range(5, n_q + 1, 5)} | {n_q})
        groups, curves = [], {}
        for combo in unique_rows(table, cols):
            sub = table
            for c, v in zip(cols, combo):
                sub = sub.filter(pc.equal(sub[c], pa.scalar(v, sub.schema.field(c).type)))
            cur = {name: run_curves(sub, name) for name in CURVES}
            stage = run_curves(sub, "stage")
            params = dict(zip(names, combo))
            m = {}
            for name, arr in cur.items():
                for q in budgets:
                    m[f"{name}_q{q}"] = metrics.value_sem(arr[:, q - 1])
                m[f"{name}_final"] = metrics.value_sem(arr[:, -1])
                m[f"{name}_auc"] = metrics.value_sem(metrics.auc(arr))
            mean_acc = cur["accuracy"].mean(0)
            m["queries_to_accuracy_0.9"] = [_first_at(mean_acc, TARGETS["accuracy"]), 0.0]
            m["stage1_queries"] = metrics.value_sem((stage == 1).sum(1).astype(float))
            per_query = {
                n: dict(zip(("mean", "sem"), (np.round(v, 5).tolist() for v in metrics.mean_sem(a))))
                for n, a in cur.items()
            }
            groups.append({"params": params, "n": int(cur["accuracy"].shape[0]), "metrics": m, "per_query": per_query})
            curves[tuple(combo)] = (cur, stage)
        figs = run_dir / "figures"
        figs.mkdir(exist_ok=True)
        for name in CURVES:
            _figure(names, curves, name, figs / f"{name}.png")
        return {"groups": groups, "targets": targets(groups)}


def targets(groups: list[dict]) -> dict:
    """The issue's targets, measured per kappa (and per value of any other group key)."""
    out: dict = {
        "definition": {
            "accuracy": TARGETS["accuracy"],
            "within_queries": TARGETS["within"],
            "ahead_of_flat_by_more_than_sem": list(TARGETS["ahead"]),
            "sem_of_difference": "sqrt(sem_hierarchical^2 + sem_flat^2)",
        }
    }
    by_method: dict = {}
    for g in groups:
        p = dict(g["params"])
        method = p.pop("method", None)
        by_method.setdefault(method, {})[tuple(sorted(p.items()))] = g
    hier, flat = by_method.get("hierarchical", {}), by_method.get("flat", {})
    rows, holds_at = [], []
    for key in sorted(set(hier) | set(flat), key=str):
        h, f = hier.get(key), flat.get(key)
        row = dict(key)
        if h is not None:
            q = h["metrics"].get("queries_to_accuracy_0.9", [None])[0]
            row["hierarchical_queries_to_accuracy"] = q
            row["hierarchical_reaches_target"] = q is not None and q <= TARGETS["within"]
        if h is not None and f is not None:
            lo, hi = TARGETS["ahead"]
            margins = {}
            for name, (hm, hs) in h["metrics"].items():
                if not name.startswith("accuracy_q"):
                    continue
                q = int(name[len("accuracy_q") :])
                if lo <= q <= hi and name in f["metrics"]:
                    fm, fs = f["metrics"][name]
                    sem = math.sqrt(hs * hs + fs * fs)
                    margins[q] = {"difference": hm - fm, "sem": sem, "ahead": (hm - fm) > sem + 1e-9}
            row["ahead_of_flat"] = all(v["ahead"] for v in margins.values()) if margins else None
            row["ahead_budgets"] = sorted(q for q, v in margins.items() if v["ahead"])
            row["behind_or_tied_budgets"] = sorted(q for q, v in margins.items() if not v["ahead"])
            row["difference_by_budget"] = {
                str(q): [round(v["difference"], 4), round(v["sem"], 4)] for q, v in sorted(margins.items())
            }
        rows.append(row)
        if row.get("hierarchical_reaches_target") and row.get("ahead_of_flat"):
            holds_at.append(dict(key))  # the settings (kappa values) at which both targets hold
    out["per_setting"] = rows
    out["holds_at"] = holds_at
    out["holds"] = bool(holds_at)
    spread = {}
    for method, gs in by_method.items():
        finals = [g["metrics"]["accuracy_final"][0] for g in gs.values()]
        if finals:
            spread[method] = {
                "min": min(finals),
                "max": max(finals),
                "range": max(finals) - min(finals),
                "std": float(np.std(finals)),
                "over": [dict(k) for k in gs],
            }
    out["final_accuracy_spread"] = spread
    return out


def _first_at(mean_curve: np.ndarray, level: float):
    hit = np.flatnonzero(mean_curve >= level - 1e-12)
    return int(hit[0] + 1) if hit.size else None


def _figure(names: list[str], curves: dict, column: str, path: Path) -> None:
    """Fig. 2b: ``column`` vs total queries, mean +/- SEM; one panel per method, one line per other key."""
    mi = names.index("method") if "method" in names else None
    methods = sorted({k[mi] for k in curves}) if mi is not None else ["all"]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 3.8), squeeze=False, sharey=True)
    for col, method in enumerate(methods):
        ax = axes[0, col]
        items = [(k, v) for k, v in curves.items() if mi is None or k[mi] == method]
        for i, (key, (cur, stage)) in enumerate(sorted(items, key=lambda kv: str(kv[0]))):
            mean, sem = metrics.mean_sem(cur[column])
            q = np.arange(1, len(mean) + 1)
            label = ", ".join(f"{n}={v}" for n, v in zip(names, key) if n != "method") or method
            ax.plot(q, mean, color=f"C{i}", label=label)
            ax.fill_between(q, mean - sem, mean + sem, color=f"C{i}", alpha=0.2, lw=0)
            s1 = float((stage == 1).sum(1).mean())
            if s1 > 0:
                ax.axvline(s1 + 0.5, color="0.6", ls="--", lw=0.8)
        ax.set_title(display.algorithm(method))
        ax.set_xlabel("total queries (stage 1 included)")
        ax.set_ylim(-0.02, 1.02)
        if col == 0:
            ax.set_ylabel(f"{column} (mean over runs)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


KIND = HierarchicalKind()
