"""Fig. 8 (Cell Reports Medicine): GP-BO vs extensive and greedy search on the 10,976-point
cortical space (8 x 4 array x duration x frequency x pulse width), 100 queries.

Curves (Fig. 8B/C) are mean +/- SEM over rats (each rat: the mean over its replicates).
Profiles (Fig. 8D): GP-BO's final posterior mean (``record_map``) marginalized (mean over the
other dimensions) onto duration, frequency, pulse width and the electrode array. The
across-subject correlation of a parameter is computed as published, from one run per rat:
for every replicate index, the Pearson r of the two rats' single-run profiles for every pair
of rats; each pair's r is averaged over replicate indices, and the result is the mean +/- SEM
over pairs. The same statistic on the true profiles is stated next to it, as is each single
run's correlation with its own rat's true profile (Fig. 8E-G).

Greedy search has two readings in 5-D (``_common.BENCHMARKS``): ``greedy`` (the companion code's)
and ``greedy_line`` (the STAR Methods'). Each pair of ``report.compare`` gets the same findings;
the published numbers for greedy search are quoted beside both readings. A pair with a further
benchmark (``_common.FURTHER``) that did not run is left out instead of stated as undecided.
"""

from __future__ import annotations

import numpy as np

from neuro_opt import metrics
from sweeps import display
from sweeps.analyses import finding
from sweeps.analyses._common import (
    FURTHER,
    benchmark_text,
    benchmarks_in,
    final_posteriors,
    map_panel,
    mean_sem,
    pairwise_r,
    pearson,
    plot_curves,
    project,
    rounded,
    subject_curves,
)

PARAMS = {
    "duration": ("duration",),
    "frequency": ("frequency",),
    "pulse_width": ("pulse_width",),
    "spatial": ("x", "y"),
}
UNITS = {"duration": "ms", "frequency": "Hz", "pulse_width": "us"}
PUBLISHED_R = {"frequency": (83.0, 7.2), "pulse_width": (38.4, 17.3)}
ALPHA = 0.05
RECOVERY_R = 0.7  # a single run's profile "reliably approximates" its rat's when r >= this


def analyze(ctx) -> dict:
    ran = benchmarks_in(ctx.table)
    pairs = [tuple(str(x) for x in p) for p in ctx.cfg.report.compare]
    pairs = [(a, b) for a, b in pairs if b not in FURTHER or b in ran]
    gp = pairs[0][0]
    ds = ctx.dataset()
    posts = final_posteriors(ctx.table, gp)  # rat -> reps x P
    rats = sorted(posts)
    if not rats:
        raise RuntimeError(f"cortical_5d: no posterior maps for {gp!r}; the experiment needs record_map: true")
    space = ds[rats[0]].space
    n_reps = min(v.shape[0] for v in posts.values())
    n_q = int(max(ctx.table["query"].to_pylist()))
    # single-run profiles (rat -> reps x K) and true profiles (rat -> K); the spatial map is flattened
    runs = {p: {r: project(posts[r][:n_reps], space, k).reshape(n_reps, -1) for r in rats} for p, k in PARAMS.items()}
    true = {p: {r: project(ds[r].truth, space, k).ravel() for r in rats} for p, k in PARAMS.items()}
    stats = {p: _across_subjects(rats, runs[p], true[p]) for p in PARAMS}

    findings = []
    for a, b in pairs:
        findings += _curve_findings(ctx.comparison(a, b), a, b, n_q)
    findings += [_stability(stats, len(rats)), _recovery(stats, n_q)]
    _figure(ctx, pairs, rats, space, runs, true, stats)
    return {
        "findings": findings,
        "profiles": rounded({p: {k: v for k, v in s.items() if k != "pair_r"} for p, s in stats.items()}, 4),
    }


def _across_subjects(rats, runs: dict, true: dict) -> dict:
    """Across-subject r of single-run profiles (mean +/- SEM over rat pairs), of the true profiles,
    and each run's r with its own rat's true profile."""
    n_reps = min(v.shape[0] for v in runs.values())
    per_rep = np.array([pairwise_r(np.stack([runs[r][k] for r in rats])) for k in range(n_reps)])  # reps x pairs
    pair_r = np.nanmean(per_rep, axis=0) if per_rep.size else np.array([])
    m, s = mean_sem(pair_r)
    tm, ts = mean_sem(pairwise_r(np.stack([true[r] for r in rats])))
    rec_m, rec_s = mean_sem([pearson(run, true[r]) for r in rats for run in runs[r]])
    return {
        "r_across_subjects": [m, s],
        "truth_r_across_subjects": [tm, ts],
        "r_with_own_truth": [rec_m, rec_s],
        "n_pairs": int(pair_r.size),
        "n_runs_per_rat": int(n_reps),
        "pair_r": pair_r,
    }


# ----------------------------------------------------------------------------- findings

_PUBLISHED = {  # benchmark -> (exploration, exploitation) as published after 100 queries
    "extensive": ("+19.4 points, p = 0.016", "+13.6 points, p = 0.078 (not significant)"),
    "greedy": ("+14.5 points, p = 0.016", "+7.4 points, p = 0.156 (not significant)"),
}
_PUBLISHED["greedy_line"] = _PUBLISHED["greedy"]  # the paper reports one greedy search


def _curve_findings(cmp, a, b, n_q) -> list[dict]:
    pub = _PUBLISHED.get(b, ("not published", "not published"))
    texts = (
        f"GP-BO ahead of {benchmark_text(b)} in exploration after {n_q} queries",
        f"GP-BO ahead of {benchmark_text(b)} in exploitation after {n_q} queries",
    )
    if cmp is None:
        return [
            finding(t, p, None, reason=f"no {a} vs {b} comparison in this run", rule="needs the comparison")
            for t, p in zip(texts, pub)
        ]
    p = cmp["exploration_p_value"]
    return [
        finding(
            texts[0],
            pub[0],
            None if p is None else cmp["exploration_points_final"] > 0 and p < ALPHA,
            points=round(cmp["exploration_points_final"], 2),
            p_value=p,
            n_rats=cmp["n_problems"],
            points_at={
                k[len("exploration_points_") :]: round(v, 2)
                for k, v in cmp.items()
                if k.startswith("exploration_points_q")
            },
            rule=f"points > 0 and one-sided Wilcoxon over rats (mean of replicates) p < {ALPHA}",
        ),
        finding(
            texts[1],
            pub[1],
            cmp["exploitation_points_final"] > 0,
            points=round(cmp["exploitation_points_final"], 2),
            p_value=cmp["exploitation_p_value"],
            n_rats=cmp["n_problems"],
            rule="points > 0 (direction only; the published differences were not significant)",
        ),
    ]


def _stability(stats, n_rats) -> dict:
    f, pw = stats["frequency"]["r_across_subjects"][0], stats["pulse_width"]["r_across_subjects"][0]
    return finding(
        "The frequency profile is more correlated across subjects than the pulse-width profile",
        "frequency r = 83.0 % +/- 7.2 %, pulse width r = 38.4 % +/- 17.3 % (Fig. 8D)",
        None if n_rats < 2 or not (np.isfinite(f) and np.isfinite(pw)) else f > pw,
        r_across_subjects_pct={p: rounded([100 * x for x in s["r_across_subjects"]], 1) for p, s in stats.items()},
        truth_r_across_subjects_pct={
            p: rounded([100 * x for x in s["truth_r_across_subjects"]], 1) for p, s in stats.items()
        },
        n_pairs=stats["frequency"]["n_pairs"],
        n_runs_per_rat=stats["frequency"]["n_runs_per_rat"],
        rule="mean over rat pairs of the single-run GP-BO profile correlation ([mean, SEM] in %): frequency > "
        "pulse width",
    )


def _recovery(stats, n_q) -> dict:
    r = {p: s["r_with_own_truth"][0] for p, s in stats.items()}
    ok = all(np.isfinite(v) for v in r.values())
    return finding(
        f"A single {n_q}-query GP-BO run recovers each rat's own profiles (duration, frequency, pulse width, "
        "spatial map)",
        "the inferred posteriors after a representative single run reliably approximate the session's data (Fig. 8E-G)",
        None if not ok else all(v >= RECOVERY_R for v in r.values()),
        r_with_own_truth={p: rounded(s["r_with_own_truth"], 3) for p, s in stats.items()},
        rule=f"mean over runs of Pearson r (single-run posterior profile vs the rat's true profile) >= {RECOVERY_R} "
        f"for every parameter",
    )


# ----------------------------------------------------------------------------- figure


def _figure(ctx, pairs, rats, space, runs, true, stats) -> None:
    import matplotlib.pyplot as plt

    algs = [pairs[0][0]] + [b for _, b in pairs]
    n = len(rats)
    fig = plt.figure(figsize=(18, 15))
    outer = fig.add_gridspec(2, 1, height_ratios=[2.2, 1.8], hspace=0.12)
    top, bottom = outer[0].subgridspec(2, 3, hspace=0.45, wspace=0.25), outer[1].subgridspec(2, n, hspace=0.3)
    for j, name in enumerate(("exploration", "exploitation")):
        ax = fig.add_subplot(top[0, j])
        plot_curves(
            ax,
            {display.algorithm(a): subject_curves(ctx.table, a, name)[1] for a in algs},
            f"{name} (% of max)",
            f"Fig. 8{'BC'[j]}: {name}, mean +/- SEM over rats",
        )
    ax = fig.add_subplot(top[0, 2])
    _correlation_bars(ax, stats)

    for j, p in enumerate(("duration", "frequency", "pulse_width")):
        ax = fig.add_subplot(top[1, j])
        values = space.dims[space.names.index(p)].values
        prof = np.stack([_unit(runs[p][r].mean(0)) for r in rats])
        for i, r in enumerate(rats):
            ax.plot(prof[i], color=f"C{i}", lw=1, label=r.split("/")[0])
            ax.plot(_unit(true[p][r]), color=f"C{i}", lw=0.8, ls=":")
        m, s = metrics.mean_sem(prof, axis=0)
        ax.plot(m, color="k", lw=2.5, label="mean +/- SEM")
        ax.fill_between(range(len(m)), m - s, m + s, color="k", alpha=0.2, lw=0)
        ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set(xlabel=f"{p.replace('_', ' ')} ({UNITS[p]})", ylabel="profile, min-max scaled", ylim=(-0.02, 1.05))
        rm, rs = stats[p]["r_across_subjects"]
        ax.set_title(
            f"Fig. 8D: {p.replace('_', ' ')} profile per rat (solid GP-BO, dotted truth)\n"
            f"GP-BO single runs, r across rats = {100 * rm:.0f} +/- {100 * rs:.0f} %",
            fontsize=8,
        )
        if j == 0:
            ax.legend(fontsize=6, ncol=2, loc="lower right")

    xs, ys = (space.dims[space.names.index(d)].values for d in ("x", "y"))
    for i, r in enumerate(rats):
        for row, (label, maps) in enumerate(
            (("GP-BO", {q: runs["spatial"][q].mean(0) for q in rats}), ("truth", true["spatial"]))
        ):
            ax = fig.add_subplot(bottom[row, i])
            grid = maps[r].reshape(len(xs), len(ys))
            map_panel(ax, _unit(grid), xs, ys, f"{r.split('/')[0]}: {label} spatial map", "x", "y", colorbar=False)
            ax.set_aspect("equal")
    fig.suptitle(
        f"cortical_5d (Fig. 8): {n} rats, {int(max(ctx.table['query'].to_pylist()))} queries, "
        f"{stats['frequency']['n_runs_per_rat']} GP-BO runs per rat; profiles = final posterior mean "
        "marginalized onto each parameter (run average per rat, min-max scaled); red box = maximum",
        fontsize=10,
    )
    fig.subplots_adjust(left=0.05, right=0.98, top=0.95, bottom=0.04)
    fig.savefig(ctx.figures / "cortical_5d.png", dpi=100)
    plt.close(fig)


def _unit(x: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1] for display (a marginal posterior can be near 0 or negative)."""
    lo, hi = np.nanmin(x), np.nanmax(x)
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _correlation_bars(ax, stats) -> None:
    names = list(PARAMS)
    x = np.arange(len(names))
    m = [100 * stats[p]["r_across_subjects"][0] for p in names]
    s = [100 * stats[p]["r_across_subjects"][1] for p in names]
    ax.bar(x - 0.2, m, 0.4, yerr=s, capsize=3, color="C0", label="GP-BO single runs")
    ax.bar(
        x + 0.2,
        [100 * stats[p]["truth_r_across_subjects"][0] for p in names],
        0.4,
        yerr=[100 * stats[p]["truth_r_across_subjects"][1] for p in names],
        capsize=3,
        color="0.7",
        label="ground truth",
    )
    for p, (pm, ps) in PUBLISHED_R.items():
        i = names.index(p)
        ax.errorbar(
            [i - 0.2],
            [pm],
            yerr=[ps],
            fmt="*",
            ms=11,
            color="C3",
            capsize=3,
            label="published" if p == "frequency" else None,
        )
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [p.replace("_", " ") for p in names])
    ax.set_ylabel("r across subjects (%), mean +/- SEM over pairs")
    ax.set_ylim(min(-20, min(m) - 10), 105)
    ax.set_title("Fig. 8D: profile correlation across subjects", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
