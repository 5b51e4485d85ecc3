"""Continual learning over sessions on a drifting cortical map (Cell Reports Medicine Fig. 5).

Why not the ``optimization`` kind: a run is a chain of short sessions on a truth that
changes between them, each session starting from what the previous one learned, which
the one-session loop of :func:`neuro_opt.simulate.simulate` cannot express.

A cell is one problem (``muscle``: a subject of ``dataset``, which must have per-session
truths, e.g. ``nonstationary_plasticity``) x ``algorithm`` x ``params.arm`` with ``n_reps``
independent lineages, run by :func:`neuro_opt.continual.continual`. Keys:

- ``n_queries``: queries per session (null: ``dataset.queries_per_session``);
  sessions: ``dataset.n_sessions``;
- ``params.arm``: ``standard`` or ``electrode_loss`` (the session's best electrode is
  off from the 1-based session ``params.loss_session`` on);
- ``params.prior_scale``, ``params.prior_fade``: GP-BO's prior weight and fade;
- ``use_prior``: the first session starts from the problem's prior or, when the dataset
  has none, the population prior: the mean of the *other* subjects' first-session maps
  (each normalized to max 1), as the paper started from the average map of other rats;
- ``noise``: Gaussian response noise (fraction of the subject's first-session maximum).

Report (``summary.json``): one group per (algorithm, arm) (subjects pooled, ``n`` = subjects
x lineages) with ``exploration_s<k>`` / ``exploitation_s<k>`` at the end of every session
and the finals as ``[mean, sem]`` and ``per_query`` mean/sem lists over the global query;
``comparisons``: GP-BO vs each benchmark (``report.compare``) per arm, with the
performance points at the end of every session and one-sided Wilcoxon p-values paired by
subject x lineage (per session), and overall by session (the published test, see
:func:`_ahead`); ``findings``: the published findings with ``holds`` computed from the
data by the rule stated in each. Figures: ``continual.png`` (Fig. 5C/5E/5F: end-of-session
exploration and exploitation vs session, one panel per arm, the loss session marked) and
``curves.png`` (per query). MLflow: one child run per group.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neuro_opt import algorithms, metrics
from neuro_opt.continual import ARMS, continual
from sweeps import display, plots
from sweeps.analyses import finding
from sweeps.kinds.optimization import DatasetKind
from sweeps.plots import plt  # the one place that picks the Agg backend
from sweeps.schema import ConfigError
from sweeps.tables import select, unique_rows

CURVES = ("exploration", "exploitation")
ALPHA = 0.05  # significance level of every "holds" rule
NEAR = 5.0  # points: "returns near its pre-loss level"
PUBLISHED = {  # (arm, benchmark) -> GP-BO's published lead in exploration at the end of each session
    ("standard", "extensive"): "+17.5 points, p = 0.0039 (Fig. 5C)",
    ("standard", "greedy"): "+16.6 points, p = 0.0039 (Fig. 5C)",
    ("electrode_loss", "extensive"): "+16.9 points, p = 0.0039 (Fig. 5E)",
    ("electrode_loss", "greedy"): "+18.9 points, p = 0.0039 (Fig. 5E)",
}
NAMES = {"extensive": "prior-ranked extensive search", "greedy": "greedy search"}


def _label(key: str) -> str:
    return key[len("params.") :] if key.startswith("params.") else key


def population_prior(dataset, problem) -> np.ndarray | None:
    """Mean of the other subjects' first-session maps (same muscle if any), each normalized to max 1."""

    def first(p):
        m = p.sessions[0] if getattr(p, "sessions", None) is not None else p.truth
        return m / m.max() if m.max() > 0 else m

    others = [p for p in dataset if p.subject != problem.subject]
    same = [p for p in others if p.muscle == problem.muscle]
    pool = same or others
    return np.mean([first(p) for p in pool], axis=0) if pool else None


class ContinualKind(DatasetKind):
    payload_keys = (
        "kind",
        "algorithm",
        "dataset",
        "muscle",
        "noise",
        "n_reps",
        "n_queries",
        "use_prior",
        "params",
        "seed",
    )

    def data_for(self, payload: dict):
        """The problem, with the population prior attached when the dataset gives it none."""
        ds = self.dataset(payload["dataset"])
        problem = ds[payload["muscle"]]
        if problem.prior is not None:
            return problem
        prior = population_prior(ds, problem)
        return problem if prior is None else dataclasses.replace(problem, prior=prior)

    def validate(self, cfg, cells) -> None:
        if cfg.response_mode != "gaussian":
            raise ConfigError(
                f"response_mode={cfg.response_mode!r}: kind=continual draws Gaussian responses "
                f"around each session's truth; use response_mode=gaussian (and noise=LEVEL)"
            )
        missing = [k for k in ("algorithm", "params.arm") if cells and k not in cells[0].coords]
        if missing:
            raise ConfigError(
                f"kind=continual compares methods and arms: grid.{' and grid.'.join(missing)} must be "
                f"grid keys (e.g. grid.algorithm=[gpbo,extensive,greedy] "
                f"grid.params.arm=[standard,electrode_loss])"
            )
        for cell in cells:
            p = cell.payload
            where = f"cell {cell.coords}"
            problem = self.data_for(p)
            sessions = getattr(problem, "sessions", None)
            if sessions is None:
                raise ConfigError(
                    f"dataset={p['dataset'].get('name')!r} ({where}): kind=continual needs a truth "
                    f"per session, e.g. dataset=nonstationary_plasticity"
                )
            S = sessions.shape[0]
            q = p["n_queries"] if p["n_queries"] is not None else problem.queries_per_session
            if not isinstance(q, int) or q < 1:
                raise ConfigError(
                    f"n_queries={p['n_queries']!r}: queries per session must be >= 1 "
                    f"(null: dataset.queries_per_session)"
                )
            if not isinstance(p["n_reps"], int) or p["n_reps"] < 1:
                raise ConfigError(f"n_reps={p['n_reps']!r}: lineages per subject and method must be >= 1")
            noise = p["noise"]
            if not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
                raise ConfigError(f"noise={noise!r}: a noise std as a fraction of the maximum response, >= 0")
            params = dict(p["params"])
            arm = params.get("arm")
            if arm not in ARMS:
                raise ConfigError(f"params.arm={arm!r} ({where}): expected one of {', '.join(ARMS)}")
            loss = params.get("loss_session")
            if arm == "electrode_loss" and (not isinstance(loss, int) or not 2 <= loss <= S):
                raise ConfigError(
                    f"params.loss_session={loss!r}: the 1-based session from which the best "
                    f"electrode is off must be in 2..{S} (dataset.n_sessions={S}; at least one "
                    f"session before the loss)"
                )
            scale, fade = params.get("prior_scale"), params.get("prior_fade")
            if not isinstance(scale, (int, float)) or not 0 <= scale:
                raise ConfigError(f"params.prior_scale={scale!r}: the prior's weight must be a number >= 0")
            if fade is not None and (not isinstance(fade, int) or fade < 1):
                raise ConfigError(f"params.prior_fade={fade!r}: queries over which the prior fades, >= 1 or null")
            if p["use_prior"] and problem.prior is None:
                raise ConfigError(
                    f"use_prior=true: problem {problem.key!r} has no prior and no other subject to "
                    f"average into a population prior; use dataset.n_subjects>=2 or use_prior=false"
                )
            alg = dict(p["algorithm"])
            name = alg.pop("name", None)
            if str(name).startswith("gpbo"):
                alg = {"prior_scale": scale, "prior_fade": fade, **alg}
            try:  # builds the optimizer once: unknown names, unknown or out-of-range hyperparameters
                algorithms.make(
                    name, problem.space, n_reps=1, seed=0, prior=problem.prior if p["use_prior"] else None, **alg
                )
            except ValueError as exc:
                raise ConfigError(f"algorithm ({where}): {exc}") from None

    # --------------------------------------------------------------- worker side
    @staticmethod
    def run_cell(payload: dict, seed_sequence, problem) -> pa.Table:
        alg = dict(payload["algorithm"])
        name = alg.pop("name")
        params = payload["params"]
        return continual(
            problem,
            name,
            n_lineages=payload["n_reps"],
            queries_per_session=payload["n_queries"],
            seed=seed_sequence,
            noise=float(payload["noise"]),
            loss_session=params["loss_session"] if params["arm"] == "electrode_loss" else None,
            hyperparameters=alg,
            prior=problem.prior if payload["use_prior"] else None,
            prior_scale=params["prior_scale"],
            prior_fade=params["prior_fade"],
        )

    # --------------------------------------------------------------- report
    def report(self, cfg, table: pa.Table, run_dir: Path, tracker, parent_run: str | None, axes: dict) -> dict:
        pool = [k for k in cfg.report.pool if k in axes or k == "muscle"]
        group_keys = [k for k in axes if k not in pool]
        cols = [k.replace(".", "_") for k in group_keys]
        names = [_label(k) for k in group_keys]
        runs, groups, curves = {}, [], {}
        for combo in unique_rows(table, cols):
            units, arr = _runs(select(table, dict(zip(cols, combo))))
            runs[combo] = (units, arr)
            params = dict(zip(names, combo))
            end = {n: a[:, :, -1] for n, a in arr.items()}  # units x sessions
            m = {}
            for n in CURVES:
                m[f"{n}_final"] = metrics.value_sem(end[n][:, -1])
                m[f"{n}_sessions_mean"] = metrics.value_sem(end[n].mean(1))
                m.update({f"{n}_s{s + 1}": metrics.value_sem(end[n][:, s]) for s in range(end[n].shape[1])})
            flat = {n: a.reshape(a.shape[0], -1) for n, a in arr.items()}  # units x global queries
            per_query = {
                n: dict(zip(("mean", "sem"), (np.round(v, 5).tolist() for v in metrics.mean_sem(a))))
                for n, a in flat.items()
            }
            groups.append({"params": params, "n": len(units), "metrics": m, "per_query": per_query})
            curves[combo] = flat
        ai = names.index("algorithm") if "algorithm" in names else None
        ri = names.index("arm") if "arm" in names else None
        if ai is None or ri is None:
            raise ConfigError("kind=continual reports need grid.algorithm and grid.params.arm (not pooled)")
        # regroup as rest-of-keys -> arm -> algorithm -> (units, arrays)
        by_rest: dict = {}
        for combo, val in runs.items():
            rest = tuple(v for i, v in enumerate(combo) if i not in (ai, ri))
            by_rest.setdefault(rest, {}).setdefault(combo[ri], {})[combo[ai]] = val
        rest_names = [n for i, n in enumerate(names) if i not in (ai, ri)]
        loss = {arm: _loss_session(table, arm) for arm in ARMS}
        pairs = [tuple(p) for p in cfg.report.compare] or [("gpbo", "extensive"), ("gpbo", "greedy")]
        comparisons, findings = [], []
        for rest, arms in by_rest.items():
            extra = dict(zip(rest_names, rest))
            for arm, algs in arms.items():
                for a, b in pairs:
                    if a in algs and b in algs:
                        comparisons.append(
                            {
                                "params": {"arm": arm, **extra},
                                "a": a,
                                "b": b,
                                **{n: _compare(algs[a], algs[b], n) for n in CURVES},
                            }
                        )
            for f in _findings(arms, loss["electrode_loss"]):
                findings.append({**f, "params": extra} if extra else f)
        figs = run_dir / "figures"
        figs.mkdir(exist_ok=True)
        _figure(by_rest, rest_names, loss["electrode_loss"], figs / "continual.png")
        plots.curves_figure(names, curves, figs / "curves.png")
        return {"groups": groups, "comparisons": comparisons, "findings": findings}


# ------------------------------------------------------------------- table -> arrays
def _runs(sub: pa.Table) -> tuple[list, dict]:
    """Units (subject, lineage) and ``units x sessions x queries`` arrays of every curve in ``sub``."""
    subj = sub["muscle"].to_pylist() if "muscle" in sub.column_names else sub["cell"].to_pylist()
    keys = list(zip(subj, sub["rep"].to_pylist()))
    units = sorted(set(keys))
    row = {u: i for i, u in enumerate(units)}
    idx = np.array([row[k] for k in keys])
    s, q = sub["session"].to_numpy() - 1, sub["query"].to_numpy() - 1
    out = {}
    for n in CURVES:
        arr = np.full((len(units), int(s.max()) + 1, int(q.max()) + 1), np.nan)
        arr[idx, s, q] = sub[n].to_numpy()
        out[n] = arr
    return units, out


def _loss_session(table: pa.Table, arm: str) -> int | None:
    """First 1-based session with a lost electrode in ``arm`` (None: no loss)."""
    sub = table.filter(pc.and_(pc.equal(table["arm"], arm), pc.greater_equal(table["lost_point"], 0)))
    return int(pc.min(sub["session"]).as_py()) if sub.num_rows else None


def _p(a, b) -> float | None:
    return metrics.wilcoxon_greater(a, b) if len(a) > 1 else None


def _compare(run_a, run_b, name: str) -> dict:
    """A vs B at the end of each session: points (mean A - mean B, x100), Wilcoxon paired by subject x lineage."""
    (ua, arr_a), (ub, arr_b) = run_a, run_b
    ea, eb = arr_a[name][:, :, -1], arr_b[name][:, :, -1]
    pts = metrics.performance_points(ea, eb)
    common = sorted(set(ua) & set(ub))
    pa_ = ea[[ua.index(u) for u in common]]
    pb_ = eb[[ub.index(u) for u in common]]
    return {
        "points_by_session": np.round(pts, 3).tolist(),
        "p_value_by_session": [_p(pa_[:, s], pb_[:, s]) for s in range(ea.shape[1])],
        "n_by_session": len(common),
        "paired_by_session": "subject x lineage",
        "points": float(pts.mean()),
        "p_value": _p(ea.mean(0), eb.mean(0)),
        "n": int(ea.shape[1]),
        "paired_by": "session (each session's mean over subjects x lineages), as published",
    }


# ------------------------------------------------------------------- findings
def _ahead(arms: dict, arm: str, bench: str, name: str) -> tuple[bool | None, dict]:
    """GP-BO ahead of ``bench`` in ``name`` at the end of each session of ``arm``: points > 0 and p < ALPHA.

    The p-value pairs sessions (n = sessions, each the mean over subjects x lineages): the
    published p = 0.0039 is 1/2^8, the exact one-sided Wilcoxon minimum for 8 pairs.
    """
    algs = arms.get(arm, {})
    if "gpbo" not in algs or bench not in algs:
        return None, {"note": f"arm {arm} with gpbo and {bench} was not run"}
    c = _compare(algs["gpbo"], algs[bench], name)
    (ua, aa), (ub, ab) = algs["gpbo"], algs[bench]
    common = sorted(set(ua) & set(ub))
    per_unit = [v[name][[u.index(k) for k in common], :, -1].mean(1) for u, v in ((ua, aa), (ub, ab))]
    holds = c["points"] > 0 and c["p_value"] is not None and c["p_value"] < ALPHA
    return holds, {
        "points": round(c["points"], 2),
        "p_value": c["p_value"],
        "n": c["n"],
        "paired_by": "session",
        "sessions_ahead": int(np.sum(np.array(c["points_by_session"]) > 0)),
        "points_by_session": c["points_by_session"],
        "p_value_by_subject_x_lineage": _p(*per_unit),
        "n_subject_x_lineage": len(common),
        "rule": f"mean over sessions of the end-of-session points > 0 and one-sided Wilcoxon p "
        f"(paired by session) < {ALPHA}",
    }


def _findings(arms: dict, loss: int | None) -> list[dict]:
    out = []
    for arm in ARMS:
        for bench in ("extensive", "greedy"):
            holds, nums = _ahead(arms, arm, bench, "exploration")
            where = "" if arm == "standard" else " with the electrode lost"
            out.append(
                finding(
                    f"GP-BO ahead of {NAMES[bench]} at the end of each session (exploration{where})",
                    PUBLISHED[(arm, bench)],
                    holds,
                    **nums,
                )
            )
    out.append(_drop(arms, loss))
    out.append(_recovery(arms, loss))
    rows, verdicts = {}, []
    for arm in ARMS:
        for bench in ("extensive", "greedy"):
            holds, nums = _ahead(arms, arm, bench, "exploitation")
            verdicts.append(holds)
            rows[f"{arm}_vs_{bench}"] = {k: nums.get(k) for k in ("points", "p_value", "n", "note") if k in nums}
    decided = [v for v in verdicts if v is not None]
    out.append(
        finding(
            "GP-BO ahead in exploitation at the end of each session",
            "GP-BO better than all alternative methods (Fig. 5F)",
            all(decided) if decided else None,
            **rows,
            rule=f"in every arm and against every benchmark run: mean over sessions of the "
            f"end-of-session exploitation points > 0 and Wilcoxon p (paired by session) < {ALPHA}",
        )
    )
    return out


def _drop(arms: dict, loss: int | None) -> dict:
    text, pub = (
        "After the electrode loss every method drops at the loss session",
        "an immediate drop, identical for all methods (Fig. 5E)",
    )
    algs, std = arms.get("electrode_loss", {}), arms.get("standard", {})
    if loss is None or not algs:
        return finding(text, pub, None, note="the electrode_loss arm was not run")
    nums: dict[str, dict[str, Any]] = {}  # per method: points (float), p (None: too few units), n (int)
    verdicts = []
    for alg, (units, arr) in sorted(algs.items()):
        ex = arr["exploration"]
        before, after = ex[:, loss - 2, -1], ex[:, loss - 1, 0]  # end of session L-1, query 1 of session L
        drop = 100 * float(before.mean() - after.mean())
        p = _p(before, after)
        drift = None
        if alg in std:
            sx = std[alg][1]["exploration"]
            drift = 100 * float(sx[:, loss - 2, -1].mean() - sx[:, loss - 1, 0].mean())
        ok = drop > 0 and p is not None and p < ALPHA and (drift is None or drop > drift)
        verdicts.append(ok)
        at_end = 100 * float(before.mean() - ex[:, loss - 1, -1].mean())  # end of L-1 vs end of L
        nums[alg] = {
            "drop_points": round(drop, 2),
            "p_value": p,
            "n": len(units),
            "drift_only_drop_points": None if drift is None else round(drift, 2),
            "end_of_loss_session_drop_points": round(at_end, 2),
        }
    drops = [v["drop_points"] for v in nums.values()]
    return finding(
        text,
        pub,
        all(verdicts),
        loss_session=loss,
        **nums,
        spread_points=round(max(drops) - min(drops), 2),
        rule=f"for every method, exploration at query 1 of session {loss} is below the end of session "
        f"{loss - 1} (drop > 0, one-sided Wilcoxon paired by subject x lineage p < {ALPHA}) and the "
        f"drop exceeds the same method's drift-only drop at that boundary in the standard arm",
    )


def _recovery(arms: dict, loss: int | None) -> dict:
    text, pub = (
        "GP-BO recovers its pre-loss exploration after the electrode loss; the benchmarks recover less",
        "GP-BO alone recovers and maintains baseline performance for all following sessions (Fig. 5E)",
    )
    algs, std = arms.get("electrode_loss", {}), arms.get("standard", {})
    if loss is None or "gpbo" not in algs:
        return finding(text, pub, None, note="the electrode_loss arm with gpbo was not run")
    nums = {}
    for alg, (units, arr) in sorted(algs.items()):
        end = arr["exploration"][:, :, -1]
        pre, post = 100 * end[:, : loss - 1].mean(), 100 * end[:, loss - 1 :].mean()
        row = {
            "pre_loss": round(float(pre), 2),
            "post_loss": round(float(post), 2),
            "deficit_points": round(float(pre - post), 2),
        }
        if alg in std:
            se = 100 * std[alg][1]["exploration"][:, :, -1]
            row["drift_only_deficit_points"] = round(float(se[:, : loss - 1].mean() - se[:, loss - 1 :].mean()), 2)
        nums[alg] = row
    gp = nums["gpbo"]["deficit_points"]
    benches = {a: v["deficit_points"] for a, v in nums.items() if a != "gpbo"}
    holds = gp <= NEAR and all(gp < d for d in benches.values())
    return finding(
        text,
        pub,
        holds,
        loss_session=loss,
        **nums,
        rule=f"deficit = mean end-of-session exploration over sessions 1..{loss - 1} minus over sessions "
        f"{loss}..last (points, electrode_loss arm); holds if GP-BO's deficit <= {NEAR} and is "
        f"smaller than every benchmark's",
    )


# ------------------------------------------------------------------- figure
def _figure(by_rest: dict, rest_names: list, loss: int | None, path: Path) -> None:
    """Fig. 5C/5E/5F: end-of-session exploration (top) and exploitation (bottom) vs session,
    mean +/- SEM over subjects x lineages; one column per arm (x other keys), one line per method."""
    panels = [(rest, arm) for rest in sorted(by_rest, key=str) for arm in ARMS if arm in by_rest[rest]]
    algs = sorted({a for arms in by_rest.values() for algs in arms.values() for a in algs})
    fig, axes = plt.subplots(2, len(panels), figsize=(4.4 * len(panels), 6.2), squeeze=False, sharey="row")
    for col, (rest, arm) in enumerate(panels):
        for row, name in enumerate(CURVES):
            ax = axes[row, col]
            for i, alg in enumerate(algs):
                if alg not in by_rest[rest][arm]:
                    continue
                m, s = metrics.mean_sem(by_rest[rest][arm][alg][1][name][:, :, -1])
                x = np.arange(1, len(m) + 1)
                ax.errorbar(
                    x,
                    100 * m,
                    yerr=100 * s,
                    marker="o",
                    ms=4,
                    capsize=3,
                    color=display.color(alg),
                    label=display.algorithm(alg),
                )
                ax.fill_between(x, 100 * (m - s), 100 * (m + s), color=display.color(alg), alpha=0.15, lw=0)
            if arm == "electrode_loss" and loss is not None:
                ax.axvline(loss - 0.5, color="0.3", ls="--", lw=1)
                ax.text(loss - 0.4, 4, "electrode lost", fontsize=8, color="0.3")
            ax.set_ylim(0, 105)
            ax.set_xticks(x)
            if row == 0:
                extra = ", ".join(f"{k}={v}" for k, v in zip(rest_names, rest))
                ax.set_title(arm.replace("_", " ") + (f" ({extra})" if extra else ""), fontsize=10)
            else:
                ax.set_xlabel("session (value at its last query)")
            if col == 0:
                ax.set_ylabel(f"{name} (% of max)")
    axes[0, 0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


KIND = ContinualKind()
