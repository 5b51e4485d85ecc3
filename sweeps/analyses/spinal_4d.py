"""Fig. 7 (Cell Reports Medicine): GP-BO vs extensive search on the 672-point spinal
locomotion space (site x duration x frequency x timing, amplitude set by the caps).

Curves (Fig. 7F/G) are mean +/- SEM over rats (each rat: the mean over its replicates).
Maps (Fig. 7D/I): GP-BO's final posterior mean (``record_map``), averaged over each rat's
replicates, projected (mean over the other dimensions) onto site x timing and duration x
frequency, next to the same projections of the ground truth. Responses and posteriors are
compared after dividing each map by its maximum (correlations do not depend on it).
"""

from __future__ import annotations

import numpy as np

from sweeps.analyses import finding
from sweeps.analyses._common import (
    final_posteriors,
    map_panel,
    mean_sem,
    pearson,
    plot_curves,
    project,
    rounded,
    subject_curves,
)

ST = ("site", "timing")
DF = ("duration", "frequency")
MAP_R = 0.7  # "realistic maps": a projection correlates at least this well with the truth's
NEAR_BEST = 0.95  # a duration x frequency cell is "at the optimum" when its true value is this close to the best


def analyze(ctx) -> dict:
    gp, bench = (str(x) for x in ctx.cfg.report.compare[0])
    ds = ctx.dataset()
    cmp = ctx.comparison(gp, bench)
    posts = final_posteriors(ctx.table, gp)  # rat -> reps x P
    rats = sorted(posts)
    if not rats:
        raise RuntimeError(f"spinal_4d: no posterior maps for {gp!r}; the experiment needs record_map: true")
    space = ds[rats[0]].space
    truth = {r: ds[r].truth / ds[r].truth.max() for r in rats}
    mean_post = {r: posts[r].mean(0) for r in rats}
    n_q = int(max(ctx.table["query"].to_pylist()))

    proj = {k: {r: project(mean_post[r], space, k) for r in rats} for k in (ST, DF, ("site",), ("timing",))}
    tproj = {k: {r: project(truth[r], space, k) for r in rats} for k in proj}
    run_proj = {k: {r: project(posts[r], space, k) for r in rats} for k in proj}  # reps x ... (single runs)
    caps = _caps(ds[rats[0]], space)

    findings = [
        *_curve_findings(cmp, gp, bench, n_q, ctx.group(algorithm=bench)),
        _site(rats, proj, tproj, run_proj),
        _timing(rats, space, proj, tproj, run_proj),
        _notch(rats, space, proj, tproj, caps),
        _maps(rats, proj, tproj, run_proj, ctx.group(algorithm=gp)),
    ]
    _figure(ctx, gp, bench, rats, space, proj, tproj, caps, cmp)
    return {"findings": findings}


# ----------------------------------------------------------------------------- findings


def _curve_findings(cmp, gp, bench, n_q, bench_group) -> list[dict]:
    if cmp is None:
        why = f"no {gp} vs {bench} comparison in this run"
        return [
            finding(t, p, None, reason=why, rule="needs the GP-BO vs extensive comparison")
            for t, p in (
                ("GP-BO ahead of extensive search in exploration", "+10.6 points, p = 0.004"),
                ("GP-BO ahead of extensive search in exploitation", "+7.0 points, p = 0.14"),
                ("GP-BO reaches extensive search's final exploration in about half the queries", "16 of 30 queries"),
            )
        ]
    n = cmp["n_problems"]
    p = cmp["exploration_p_value"]
    q = cmp["queries_to_reach_b_final"]
    return [
        finding(
            f"GP-BO ahead of extensive search in exploration after {n_q} queries",
            "+10.6 points, p = 0.004",
            None if p is None else cmp["exploration_points_final"] > 0 and p < 0.1,
            points=round(cmp["exploration_points_final"], 2),
            p_value=p,
            n_rats=n,
            points_at={
                k[len("exploration_points_") :]: round(v, 2)
                for k, v in cmp.items()
                if k.startswith("exploration_points_q")
            },
            rule="points > 0 and one-sided Wilcoxon over rats (mean of replicates) p < 0.1: with 4 rats the "
            "smallest attainable p is 1/16 = 0.0625, i.e. GP-BO ahead in every rat",
        ),
        finding(
            f"GP-BO ahead of extensive search in exploitation after {n_q} queries",
            "+7.0 points, p = 0.14 (not significant)",
            cmp["exploitation_points_final"] > 0,
            points=round(cmp["exploitation_points_final"], 2),
            p_value=cmp["exploitation_p_value"],
            n_rats=n,
            rule="points > 0 (direction only; the published difference was not significant)",
        ),
        finding(
            "GP-BO reaches extensive search's final exploration in about half the queries",
            "16 of 30 queries reach 68.5 %, extensive's mean after 30",
            bool(np.isfinite(q) and q <= 0.6 * n_q),
            queries=q,
            n_queries=n_q,
            extensive_final=None if bench_group is None else round(bench_group["metrics"]["exploration_final"][0], 4),
            rule="first query at which GP-BO's mean exploration >= extensive's final mean is <= 0.6 x n_queries "
            "(published 16/30 = 0.53)",
        ),
    ]


def _site(rats, proj, tproj, run_proj) -> dict:
    post = {r: proj[("site",)][r] for r in rats}  # [lumbar, sacral]
    per_run = np.concatenate([run_proj[("site",)][r][:, 0] > run_proj[("site",)][r][:, 1] for r in rats])
    return finding(
        "Lumbar stimulation more effective than sacral in GP-BO's posterior map",
        "known property (1), Fig. 7D",
        all(post[r][0] > post[r][1] for r in rats),
        posterior_sacral_over_lumbar={r: round(float(post[r][1] / post[r][0]), 3) for r in rats},
        truth_sacral_over_lumbar={r: round(float(tproj[("site",)][r][1] / tproj[("site",)][r][0]), 3) for r in rats},
        fraction_of_single_runs=round(float(per_run.mean()), 3),
        rule="mean posterior over duration, frequency and timing (replicate average) higher at the lumbar site "
        "in every rat",
    )


def _timing(rats, space, proj, tproj, run_proj) -> dict:
    values = space.dims[space.names.index("timing")].values
    best = {r: int(np.argmax(proj[("timing",)][r])) for r in rats}
    tbest = {r: int(np.argmax(tproj[("timing",)][r])) for r in rats}
    runs = np.concatenate([np.abs(np.argmax(run_proj[("timing",)][r], axis=1) - tbest[r]) <= 1 for r in rats])
    return finding(
        "GP-BO's best timing matches the true best timing (foot lift / early swing)",
        "known property (2), Fig. 7D",
        all(abs(best[r] - tbest[r]) <= 1 for r in rats),
        posterior_best_timing_ms={r: values[best[r]] for r in rats},
        truth_best_timing_ms={r: values[tbest[r]] for r in rats},
        fraction_of_single_runs=round(float(runs.mean()), 3),
        rule="argmax of the posterior's timing profile (replicate average) within one timing step of the truth's "
        "argmax, in every rat",
    )


def _notch(rats, space, proj, tproj, caps) -> dict:
    dur = space.dims[space.names.index("duration")].values
    freq = space.dims[space.names.index("frequency")].values
    notch = np.argwhere(caps["notch"])
    out = {}
    ok = True
    for r in rats:
        b = np.unravel_index(np.argmax(proj[DF][r]), proj[DF][r].shape)
        t = np.unravel_index(np.argmax(tproj[DF][r]), tproj[DF][r].shape)
        to_notch, t_to_notch = (int(np.min(np.max(np.abs(notch - np.array(x)), axis=1))) for x in (b, t))
        value = float(tproj[DF][r][b] / tproj[DF][r][t])
        ok &= to_notch <= 1 and value >= NEAR_BEST
        out[r] = {
            "posterior_best": [dur[b[0]], freq[b[1]]],
            "truth_best": [dur[t[0]], freq[t[1]]],
            "truth_at_posterior_best": round(value, 3),
            "steps_to_truth_best": int(np.max(np.abs(np.subtract(b, t)))),
            "steps_to_notch": to_notch,
            "truth_best_steps_to_notch": t_to_notch,
            "n_pulses": int(caps["pulses"][b]),
            "amplitude_fraction_of_cap": round(float(caps["amp"][b]), 3),
        }
    return finding(
        "GP-BO's best duration x frequency sits at the notch of the amplitude and charge caps",
        "known properties (3)-(4): efficacy rises with frequency and duration up to the caps' notch, Fig. 7C/D",
        ok,
        per_rat=out,
        notch_pulses=caps["notch_pulses"],
        rule=f"in every rat, the argmax of the posterior's duration x frequency projection (replicate average) is "
        f"within one grid step (both dims) of a notch cell (full amplitude next to a charge-capped cell) and "
        f"its true value is >= {NEAR_BEST} x the truth projection's maximum (the notch is a ridge of near-equal "
        f"cells, so the argmax itself is not compared)",
    )


def _maps(rats, proj, tproj, run_proj, group) -> dict:
    r_st = [pearson(proj[ST][r], tproj[ST][r]) for r in rats]
    r_df = [pearson(proj[DF][r], tproj[DF][r]) for r in rats]
    single = {
        name: mean_sem([pearson(m, tproj[k][r]) for r in rats for m in run_proj[k][r]])
        for name, k in (("site_x_timing", ST), ("duration_x_frequency", DF))
    }
    r2 = group["metrics"].get("map_r2_final") if group else None
    m_st, m_df = float(np.nanmean(r_st)), float(np.nanmean(r_df))
    return finding(
        "GP-BO's posterior projections reproduce the truth's (realistic maps)",
        "an accurate representation of the spatiotemporal characteristics rapidly emerges (Fig. 7D/I)",
        None if not (np.isfinite(m_st) and np.isfinite(m_df)) else m_st >= MAP_R and m_df >= MAP_R,
        r_site_x_timing=round(m_st, 3),
        r_duration_x_frequency=round(m_df, 3),
        r_per_rat={r: [round(a, 3), round(b, 3)] for r, a, b in zip(rats, r_st, r_df)},
        single_run_r=rounded(single, 3),
        map_r2_4d_final=rounded(r2, 3),
        rule=f"mean over rats of Pearson r (replicate-averaged posterior projection vs truth projection) >= "
        f"{MAP_R} for both site x timing and duration x frequency",
    )


def _caps(problem, space) -> dict:
    """Allowed amplitude (fraction of the cap) and pulse count on duration x frequency, and the notch:
    full-amplitude cells next to (4-neighbourhood) a cell where the charge cap lowers the amplitude."""
    meta = problem.meta
    amp = project(np.asarray(meta["amplitude_ua"], float), space, DF) / meta["amplitude_cap_ua"]
    pulses = project(np.asarray(meta["n_pulses"], float), space, DF)
    full = amp >= 1 - 1e-9
    capped = np.pad(~full, 1)
    near = capped[:-2, 1:-1] | capped[2:, 1:-1] | capped[1:-1, :-2] | capped[1:-1, 2:]
    return {
        "amp": amp,
        "pulses": pulses,
        "notch": full & near,
        "notch_pulses": meta["charge_cap_nc"] * 1000.0 / (meta["amplitude_cap_ua"] * meta["pulse_width_us"]),
    }


# ----------------------------------------------------------------------------- figure


def _figure(ctx, gp, bench, rats, space, proj, tproj, caps, cmp) -> None:
    import matplotlib.pyplot as plt

    vals = {n: space.dims[i].values for i, n in enumerate(space.names)}
    fig, ax = plt.subplots(2, 4, figsize=(18, 8.5))
    for col, name, panel in ((0, "exploration", "F"), (1, "exploitation", "G")):
        curves = {a: subject_curves(ctx.table, a, name)[1] for a in (gp, bench)}
        plot_curves(ax[0, col], curves, f"{name} (% of max)", f"Fig. 7{panel}: {name}, mean +/- SEM over rats")
    if cmp is not None and np.isfinite(cmp["queries_to_reach_b_final"]):
        q = cmp["queries_to_reach_b_final"]
        ax[0, 0].axvline(q, color="grey", ls=":", lw=1)
        ax[0, 0].text(q + 0.3, 22, f"GP-BO reaches extensive's\nfinal level at q={q:.0f}", fontsize=7)
    map_panel(
        ax[0, 2],
        100 * caps["amp"],
        vals["duration"],
        vals["frequency"],
        "Fig. 7C: allowed amplitude (% of cap); x = notch",
        "duration (ms)",
        "frequency (Hz)",
        cmap="Blues",
        mark_max=False,
    )
    for r, c in np.argwhere(caps["notch"]):
        ax[0, 2].text(c, r, "x", ha="center", va="center", fontsize=8, color="darkorange")
    map_r2 = {a: subject_curves(ctx.table, a, "map_r2")[1] for a in (gp,)}
    plot_curves(ax[0, 3], map_r2, "map accuracy r2 (%)", "GP-BO map accuracy r2 (4-D), mean +/- SEM over rats")

    def avg(d):  # mean over rats of each rat's map divided by its maximum
        return np.mean([d[r] / np.max(d[r]) for r in rats], axis=0)

    for j, (k, rows, cols, rn, cn) in enumerate(
        (
            (ST, vals["site"], vals["timing"], "site", "timing (ms)"),
            (DF, vals["duration"], vals["frequency"], "duration (ms)", "frequency (Hz)"),
        )
    ):
        r = np.nanmean([pearson(proj[k][x], tproj[k][x]) for x in rats])
        map_panel(
            ax[1, 2 * j],
            avg(proj[k]),
            rows,
            cols,
            f"Fig. 7D/I: GP-BO posterior, {rn.split()[0]} x {cn.split()[0]} (r vs truth {r:.2f})",
            rn,
            cn,
        )
        map_panel(
            ax[1, 2 * j + 1], avg(tproj[k]), rows, cols, f"ground truth, {rn.split()[0]} x {cn.split()[0]}", rn, cn
        )
    fig.suptitle(
        f"spinal_4d (Fig. 7): {len(rats)} rats, {int(max(ctx.table['query'].to_pylist()))} queries; "
        "maps = final posterior mean averaged over replicates and rats (each map / its max); "
        "red box = maximum",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(ctx.figures / "spinal_4d.png", dpi=110)
    plt.close(fig)
