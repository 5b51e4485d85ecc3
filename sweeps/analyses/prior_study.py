"""Fig. S7: prior quantity x quality; GP-BO vs prior-ranked extensive and prior-started greedy
search; the best kappa per prior quality.

A condition is a quantity ``q`` (``dataset.prior_dims``: dimensions the prior informs) and a
quality ``r`` (``dataset.prior_r``: its correlation with the truth). At ``q = 0`` there is no
prior and ``r`` changes nothing; the grid crosses every key, so the cells of every ``r`` at
``q = 0`` are independent replicate sets of one no-prior baseline and are pooled as one
condition here (shown as the bottom row of the heatmaps).

Metric: exploration AUC (mean exploration over the run's queries, %), per subject (mean over
replicates). A prior acts on how fast good points are found, which the final value hides once
most runs reach the optimum. Recovery from a wrong prior is judged on the final exploration.
Subjects share their truth across conditions (see ``neuro_opt.datasets.gamma.prior_quality``),
so trends are tested within subject: one Spearman rho per subject (and other factor), then a
one-sided Wilcoxon signed-rank test over the rhos (``_common.paired_trend``).

Benchmarks: every one of ``_common.BENCHMARKS`` that ran, each with its own "ahead in every
condition" finding. In 6-D the two readings of greedy search differ: ``greedy`` (the companion
code's) and ``greedy_line`` (the STAR Methods'); the published statement is quoted beside both.
"""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from sweeps import display, plots  # noqa: F401 - plots sets the Agg backend before pyplot is imported
from sweeps.analyses import finding
from sweeps.analyses._common import (
    algorithm_rows,
    band,
    benchmark_text,
    benchmarks_in,
    heatmap,
    paired_trend,
    per_problem,
    select,
)
from sweeps.schema import ConfigError
from sweeps.tables import run_curves

ALPHA = 0.05
RECOVERY = 0.9  # a wrong prior is "recovered from" when GP-BO ends at >= 90 % of its no-prior final exploration
BASELINE = (0, None)


def analyze(ctx) -> dict:
    cfg, table = ctx.cfg, ctx.table
    algs = sorted(set(table["algorithm"].to_pylist()))
    gp = next((a for a in algs if a.startswith("gpbo")), None)
    if gp is None:
        raise ConfigError(
            f"report.analysis=prior_study compares GP-BO with its benchmarks; grid.algorithm has "
            f"no GP-BO option ({algs})"
        )
    benches = benchmarks_in(table)
    kappas = (
        sorted({k for k in table["algorithm_kappa"].to_pylist() if k is not None})
        if "algorithm_kappa" in table.column_names
        else []
    )
    kappas = kappas or [float(cfg.algorithm.kappa)]
    k0 = float(cfg.algorithm.kappa) if float(cfg.algorithm.kappa) in kappas else kappas[len(kappas) // 2]
    Q = _levels(table, "dataset_prior_dims", cfg.dataset.prior_dims)
    R = _levels(table, "dataset_prior_r", cfg.dataset.prior_r)
    if not all(isinstance(q, (int, float)) and float(q).is_integer() for q in Q):
        raise ConfigError(f"report.analysis=prior_study needs integer dataset.prior_dims (quantities), got {Q}")
    Q = [int(q) for q in Q]  # grid coordinates are stored as float64
    informed = [q for q in Q if q > 0]
    conds = ([BASELINE] if 0 in Q else []) + [(q, r) for q in informed for r in R]
    subjects = sorted(set(table["muscle"].to_pylist()))

    # per-subject exploration AUC and final, per (algorithm, kappa) and condition
    runs = {(a, k): algorithm_rows(table, a, k) for a in algs for k in (kappas if a == gp else [None])}
    auc, fin = {}, {}
    for (a, k), rows in runs.items():
        for c in conds:
            sub = _condition(rows, *c)
            auc[a, k, c] = per_problem(sub, reduce="auc")
            fin[a, k, c] = per_problem(sub)

    def mean(d, *key):  # mean over subjects, %
        v = [d[key].get(s, np.nan) for s in subjects]
        return 100 * float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    def cond(q, r):
        return BASELINE if q == 0 else (q, r)

    def grid_of(f):  # quantity x quality matrix of f(condition)
        return np.array([[f(cond(q, r)) for r in R] for q in Q])

    gp_auc = grid_of(lambda c: mean(auc, gp, k0, c))
    adv = {b: gp_auc - grid_of(lambda c, b=b: mean(auc, b, None, c)) for b in benches}
    findings = [
        _quality(auc, gp, k0, subjects, informed, R),
        _quantity(auc, gp, k0, subjects, Q, R),
        _recovery(fin, runs, gp, k0, informed, R, Q, mean, _fade(cfg, gp)),
        *_ahead(auc, fin, gp, k0, benches, conds, mean),
        _best_kappa(auc, gp, kappas, subjects, informed, R),
    ]
    best_by_quality = (
        [max(kappas, key=lambda k: (np.nanmean([mean(auc, gp, k, (q, r)) for q in informed]), -k)) for r in R]
        if informed
        else []
    )

    _figure(ctx, runs, gp, k0, kappas, Q, R, informed, gp_auc, adv, auc, mean, best_by_quality, _fade(cfg, gp))
    rnd = lambda m: np.round(m, 2).tolist()  # noqa: E731
    return {
        "findings": findings,
        "prior_study": {
            "quantities": Q,
            "qualities": R,
            "headline_kappa": k0,
            "kappas": kappas,
            "metric": "exploration AUC (% of max, mean over queries); rows = quantities, "
            "columns = qualities; quantity 0 = no prior (same for every quality)",
            "gpbo_auc": rnd(gp_auc),
            "gpbo_minus": {b: rnd(m) for b, m in adv.items()},
            "best_kappa_by_quality": dict(zip(map(str, R), best_by_quality)),
            "n_subjects": len(subjects),
        },
    }


# ----------------------------------------------------------------------------- findings


def _quality(auc, gp, k0, subjects, informed, R) -> dict:
    t = paired_trend([(R, [auc[gp, k0, (q, r)].get(s, np.nan) for r in R]) for s in subjects for q in informed], +1)
    by_r = (
        [
            round(100 * float(np.nanmean([auc[gp, k0, (q, r)].get(s, np.nan) for s in subjects for q in informed])), 2)
            for r in R
        ]
        if informed
        else []
    )
    return finding(
        f"Prior quality helps: GP-BO (kappa {k0:g}) performs better the higher the prior's correlation r",
        "increasing quality (higher correlation to ground truth) of transferred information facilitated "
        "the search (Fig. S7B)",
        None if len(R) < 3 or not informed else t["p"] < ALPHA and t["rho_mean"] > 0,
        rho_mean=round(t["rho_mean"], 3),
        rho_median=round(t["rho_median"], 3),
        p_one_sided=t["p"],
        n_series=t["n"],
        qualities=R,
        gpbo_auc_pct_by_quality=by_r,
        rule=f"per subject and informed quantity, Spearman rho of GP-BO exploration AUC vs r; mean rho > 0 and "
        f"one-sided Wilcoxon signed-rank p < {ALPHA} over these rhos (needs >= 3 qualities)",
    )


def _quantity(auc, gp, k0, subjects, Q, R) -> dict:
    good = [r for r in R if r > 0]
    key = lambda q, r: BASELINE if q == 0 else (q, r)  # noqa: E731
    t = paired_trend([(Q, [auc[gp, k0, key(q, r)].get(s, np.nan) for q in Q]) for s in subjects for r in good], +1)
    by_q = (
        [
            round(100 * float(np.nanmean([auc[gp, k0, key(q, r)].get(s, np.nan) for s in subjects for r in good])), 2)
            for q in Q
        ]
        if good
        else []
    )
    return finding(
        f"Prior quantity helps: with an informative prior (r > 0), GP-BO (kappa {k0:g}) performs better the "
        f"more dimensions the prior informs",
        "increasing quantity (number of dimensions disposing of a prior) facilitated the search (Fig. S7B)",
        None if len(Q) < 3 or not good else t["p"] < ALPHA and t["rho_mean"] > 0,
        rho_mean=round(t["rho_mean"], 3),
        rho_median=round(t["rho_median"], 3),
        p_one_sided=t["p"],
        n_series=t["n"],
        quantities=Q,
        gpbo_auc_pct_by_quantity_r_positive=by_q,
        rule=f"per subject and quality r > 0, Spearman rho of GP-BO exploration AUC vs the number of informed "
        f"dimensions (0 = no prior); mean rho > 0 and one-sided Wilcoxon p < {ALPHA} over these rhos "
        f"(needs >= 3 quantities)",
    )


def _recovery(fin, runs, gp, k0, informed, R, Q, mean, fade) -> dict:
    neg = [(q, r) for q in informed for r in R if r < 0]
    text = "GP-BO recovers from wrong priors (r < 0): it ends near its no-prior performance"
    published = (
        "GP-BO proved robust to conflicting or erroneous prior information, rapidly recovering high "
        "performance (Fig. S7)"
    )
    rule = (
        f"for every informed quantity and r < 0, GP-BO's (kappa {k0:g}) mean final exploration >= "
        f"{RECOVERY:g} x its no-prior final (quantity 0)"
    )
    if not neg or 0 not in Q:
        return finding(text, published, None, reason="needs quantity 0 (no prior) and a quality r < 0", rule=rule)
    base = mean(fin, gp, k0, BASELINE)
    if not base > 0:
        return finding(
            text, published, None, reason="GP-BO's no-prior final exploration is 0: no level to recover to", rule=rule
        )
    ratio = {_label(c): round(mean(fin, gp, k0, c) / base, 3) for c in neg}
    at_fade = {}  # the wrong prior's cost while in force: exploration at the query where it has faded out
    for c in [BASELINE] + neg if fade else []:
        cur = run_curves(_condition(runs[gp, k0], *c), "exploration")
        if cur.shape[1] >= fade:
            at_fade[_label(c)] = round(100 * float(np.nanmean(cur[:, fade - 1])), 1)
    worst = min(ratio, key=ratio.__getitem__)
    return finding(
        text,
        published,
        all(v >= RECOVERY for v in ratio.values()),
        no_prior_final_pct=round(base, 2),
        final_over_no_prior=ratio,
        worst=worst,
        exploration_pct_at_prior_fade=at_fade,
        prior_fade=fade,
        rule=rule,
    )


def _ahead(auc, fin, gp, k0, benches, conds, mean) -> list[dict]:
    """One finding per benchmark that ran (one undecided finding when none did)."""
    published = "in all tested cases, GP-BO outperformed extensive (prior-ranked) and greedy searches (Fig. S7C)"
    rule = (
        "GP-BO's mean exploration AUC (over subjects) above the benchmark's in every quantity x quality "
        "condition (the no-prior baseline counted once); final-exploration counts for information"
    )
    if not benches:
        text = f"GP-BO (kappa {k0:g}) ahead of prior-ranked extensive and prior-started greedy search everywhere"
        return [finding(text, published, None, reason="no benchmark in this run", rule=rule)]
    out = []
    for b in benches:
        d = {c: mean(auc, gp, k0, c) - mean(auc, b, None, c) for c in conds}
        df = {c: mean(fin, gp, k0, c) - mean(fin, b, None, c) for c in conds}
        worst = min(d, key=d.__getitem__)
        how = "prior-ranked" if b == "extensive" else "prior-started"
        out.append(
            finding(
                f"GP-BO (kappa {k0:g}) ahead of {how} {benchmark_text(b)} in every condition",
                published,
                all(v > 0 for v in d.values()),
                n_conditions=len(d),
                n_ahead_auc=sum(v > 0 for v in d.values()),
                min_points_auc=round(d[worst], 2),
                at=_label(worst),
                mean_points_auc=round(float(np.mean(list(d.values()))), 2),
                n_ahead_final=sum(v > 0 for v in df.values()),
                min_points_final=round(min(df.values()), 2),
                rule=rule,
            )
        )
    return out


def _best_kappa(auc, gp, kappas, subjects, informed, R) -> dict:
    best = {
        (s, q, r): max(kappas, key=lambda k: (auc[gp, k, (q, r)].get(s, -np.inf), -k))
        for s in subjects
        for q in informed
        for r in R
    }
    t = paired_trend([(R, [best[s, q, r] for r in R]) for s in subjects for q in informed], -1)
    return finding(
        "Lower kappa is better when the prior is good: the best kappa falls as prior quality rises",
        "when prior information is well established and precise, the algorithm benefits from trusting the prior "
        "with an acquisition function that favors exploitation (lower k) (Fig. S7D)",
        None if len(kappas) < 2 or len(R) < 3 or not informed else t["p"] < ALPHA and t["rho_mean"] < 0,
        rho_mean=round(t["rho_mean"], 3),
        rho_median=round(t["rho_median"], 3),
        p_one_sided=t["p"],
        n_series=t["n"],
        kappas=kappas,
        mean_best_kappa_by_quality=[
            round(float(np.mean([best[s, q, r] for s in subjects for q in informed])), 2) for r in R
        ],
        rule=f"per subject and informed quantity, the kappa with the best GP-BO exploration AUC (ties: the lower); "
        f"Spearman rho of it vs r; mean rho < 0 and one-sided Wilcoxon p < {ALPHA} over these rhos "
        f"(needs >= 2 kappas, >= 3 qualities)",
    )


# ----------------------------------------------------------------------------- helpers


def _levels(table, column: str, default) -> list:
    if column in table.column_names and table[column].null_count < table.num_rows:
        return sorted({v for v in table[column].to_pylist() if v is not None})
    return [OmegaConf.to_container(default) if OmegaConf.is_config(default) else default]


def _condition(rows, q, r):
    where = {
        c: v for c, v in (("dataset_prior_dims", q), ("dataset_prior_r", r)) if v is not None and c in rows.column_names
    }
    return select(rows, where)


def _label(c) -> str:
    return "no prior" if c == BASELINE else f"{c[0]} dims, r={c[1]:g}"


def _fade(cfg, gp: str) -> int | None:
    """GP-BO's prior fade: a command-line ``+algorithm.prior_fade`` or the option's own."""
    from sweeps.grid import load_group_option

    fade = OmegaConf.select(cfg, "algorithm.prior_fade", default=None)
    return fade if fade is not None else load_group_option("algorithm", gp).get("prior_fade")


# ----------------------------------------------------------------------------- figure


def _figure(ctx, runs, gp, k0, kappas, Q, R, informed, gp_auc, adv, auc, mean, best_by_quality, fade) -> None:
    import matplotlib.pyplot as plt

    ncol = max(3, 1 + len(adv))  # GP-BO, then one heatmap per benchmark
    fig, ax = plt.subplots(2, ncol, figsize=(16 * ncol / 3, 9))
    ylab = [f"{q}" if q else "0 (none)" for q in Q]
    heatmap(ax[0, 0], gp_auc, R, ylab, f"GP-BO (k={k0:g}) exploration AUC (Fig. S7B)", "% of max")
    for j, (b, m) in enumerate(adv.items(), start=1):
        heatmap(ax[0, j], m, R, ylab, f"GP-BO - {display.algorithm(b)} (Fig. S7C)", "AUC points", diverging=True)
    for a in ax[0, : 1 + len(adv)]:
        a.set(xlabel="prior quality r", ylabel="prior quantity (informed dims)")
    for a in [*ax[0, 1 + len(adv) :], *ax[1, 3:]]:
        a.axis("off")

    colors = plt.cm.coolwarm_r(np.linspace(0, 1, len(R)))
    if informed:
        for r, col, kb in zip(R, colors, best_by_quality):
            y = [np.nanmean([mean(auc, gp, k, (q, r)) for q in informed]) for k in kappas]
            ax[1, 0].plot(kappas, y, marker="o", color=col, label=f"r={r:g}")
            ax[1, 0].plot([kb], [y[kappas.index(kb)]], marker="*", ms=16, color=col, mec="k")
    if 0 in Q:
        ax[1, 0].plot(kappas, [mean(auc, gp, k, BASELINE) for k in kappas], "k--", marker="o", label="no prior")
    ax[1, 0].set(
        xlabel="kappa",
        ylabel="GP-BO exploration AUC (%)",
        xticks=kappas,
        title="GP-BO by kappa, mean over informed quantities\n(star: best kappa per quality, Fig. S7D)",
    )
    ax[1, 0].legend(fontsize=7, ncol=2)

    qmax = max(informed) if informed else None
    base = run_curves(_condition(runs[gp, k0], *BASELINE), "exploration") if 0 in Q else None
    if qmax is not None:
        for r, col in zip(R, colors):
            band(ax[1, 1], run_curves(_condition(runs[gp, k0], qmax, r), "exploration"), f"r={r:g}", col)
        methods = [(f"GP-BO (kappa {k0:g})", runs[gp, k0], display.color("gpbo"))] + [
            (display.algorithm(b), runs[b, None], display.color(b)) for b in adv if (b, None) in runs
        ]
        for label, rows, col in methods:
            band(ax[1, 2], run_curves(_condition(rows, qmax, R[0]), "exploration"), label, col)
    if base is not None:
        for a in ax[1, 1:3]:
            a.plot(np.arange(1, base.shape[1] + 1), 100 * base.mean(0), "k--", label="GP-BO, no prior")
    for a, title in (
        (ax[1, 1], f"GP-BO (k={k0:g}) with priors on {qmax} dims: recovery from r < 0"),
        (ax[1, 2], f"the most wrong prior (r={R[0]:g}, {qmax} dims), every method"),
    ):
        if fade and base is not None and fade <= base.shape[1]:
            a.axvline(fade, color="grey", ls=":", lw=1)
            a.text(fade, 101, " prior faded out", color="grey", fontsize=7, va="bottom")
        a.set(xlabel="query", ylabel="exploration (% of max)", ylim=(0, 108), title=title)
        a.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(ctx.figures / "prior_study.png", dpi=110)
    plt.close(fig)
