"""Fig. S5: GP-BO vs extensive and greedy search across smoothness; the best kappa per smoothness.

Per subject (a beta set B): final exploration of each method, GP-BO's advantage over each
benchmark, and the kappa with the best final exploration. Smoothness is mean(B) (lower beta
= smoother) and var(B) (heterogeneity across dimensions).

Greedy search has two readings in 4-D (``_common.BENCHMARKS``): ``greedy`` (the companion code's,
always compared) and, when the run has it, ``greedy_line`` (the STAR Methods'); each gets the
same findings, and the published statement is quoted beside both.
"""

from __future__ import annotations

import numpy as np

from sweeps import display, plots  # noqa: F401 - plots sets the Agg backend before pyplot is imported
from sweeps.analyses import finding
from sweeps.analyses._common import (
    FURTHER,
    algorithm_rows,
    band,
    benchmark_text,
    benchmarks_in,
    one_sided,
    per_problem,
    spearman,
)
from sweeps.tables import run_curves

ALPHA = 0.05


def analyze(ctx) -> dict:
    cfg, table = ctx.cfg, ctx.table
    k0 = float(cfg.algorithm.kappa)
    kappas = (
        sorted({k for k in table["algorithm_kappa"].to_pylist() if k is not None})
        if "algorithm_kappa" in table.column_names
        else [k0]
    )
    if k0 not in kappas:
        k0 = kappas[len(kappas) // 2]
    ds = ctx.dataset()
    subjects = sorted(set(table["muscle"].to_pylist()))
    beta_mean = np.array([ds[m].meta["beta_mean"] for m in subjects])
    beta_var = np.array([ds[m].meta["beta_var"] for m in subjects])

    # the published benchmarks always (as before), greedy search's line reading when it ran
    benches = ["extensive", "greedy"] + [b for b in benchmarks_in(table) if b in FURTHER]
    final = {b: per_problem(algorithm_rows(table, b)) for b in benches}
    gp = {k: per_problem(algorithm_rows(table, "gpbo", k)) for k in kappas}
    final["gpbo"] = gp[k0]
    adv = {b: np.array([100 * (final["gpbo"][m] - final[b][m]) for m in subjects]) for b in benches}
    best_kappa = np.array([max(kappas, key=lambda k: (gp[k][m], -k)) for m in subjects])

    findings = []
    for b in benches:
        c = ctx.comparison("gpbo", b, **{"algorithm.kappa": k0}) or ctx.comparison("gpbo", b)
        pts_e, pts_x = c["exploration_points_final"], c["exploitation_points_final"]
        p_e, p_x = c["exploration_p_value"], c["exploitation_p_value"]
        findings.append(
            finding(
                f"GP-BO (kappa {k0:g}) ahead of {benchmark_text(b)} in exploration and exploitation",
                "GP-BO outperformed extensive and greedy searches across the entire dataset (Fig. S5B)",
                pts_e > 0 and pts_x > 0 and p_e < ALPHA and p_x < ALPHA,
                exploration_points=round(pts_e, 2),
                exploration_p=p_e,
                exploitation_points=round(pts_x, 2),
                exploitation_p=p_x,
                n_subjects=c["n_problems"],
                rule=f"both final performance-point differences > 0 and one-sided Wilcoxon p < {ALPHA} over subjects",
            )
        )
    rho, p2 = spearman(beta_mean, adv["extensive"])
    p1 = one_sided(rho, p2, -1)
    vs_greedy = {}  # the same correlation against each reading of greedy search, for information
    for b in benches[1:]:
        rho_b, p2_b = spearman(beta_mean, adv[b])
        suffix = b.removeprefix("greedy")
        vs_greedy[f"spearman_rho_vs_greedy{suffix}"] = round(rho_b, 3)
        vs_greedy[f"p_one_sided_vs_greedy{suffix}"] = one_sided(rho_b, p2_b, -1)
    findings.append(
        finding(
            "GP-BO's advantage grows with smoothness",
            "GP-BO performs better on smoother input-output relationships (Fig. S5, Discussion)",
            bool(np.isfinite(p1) and rho < 0 and p1 < ALPHA),
            spearman_rho_vs_extensive=round(rho, 3),
            p_one_sided=p1,
            **vs_greedy,
            n_subjects=len(subjects),
            rule=f"Spearman rho between mean beta (lower = smoother) and GP-BO minus extensive final exploration "
            f"< 0, one-sided p < {ALPHA}",
        )
    )
    rho_k, p_k = spearman(beta_mean, best_kappa)
    findings.append(
        finding(
            "The best kappa depends on smoothness (smoothness can inform kappa)",
            "an estimate of dataset smoothness may help choose kappa (Fig. S5C/D)",
            None if len(kappas) < 2 else bool(np.isfinite(p_k) and p_k < ALPHA),
            spearman_rho_best_kappa_vs_mean_beta=None if not np.isfinite(rho_k) else round(rho_k, 3),
            p_two_sided=None if not np.isfinite(p_k) else p_k,
            kappas=kappas,
            best_kappa_by_subject=dict(zip(subjects, best_kappa.tolist())),
            rule=f"Spearman correlation of each subject's best kappa (final exploration) with mean beta, "
            f"two-sided p < {ALPHA}",
        )
    )

    _figure(ctx, table, k0, kappas, benches, subjects, beta_mean, beta_var, adv, best_kappa, gp)
    return {
        "findings": findings,
        "smoothness": {
            "subjects": subjects,
            "beta_mean": beta_mean.round(3).tolist(),
            "beta_var": beta_var.round(3).tolist(),
            "headline_kappa": k0,
            "final_exploration": {a: [round(v[m], 4) for m in subjects] for a, v in final.items()},
            "gpbo_final_exploration_by_kappa": {str(k): [round(gp[k][m], 4) for m in subjects] for k in kappas},
            "best_kappa": best_kappa.tolist(),
        },
    }


def _figure(ctx, table, k0, kappas, benches, subjects, beta_mean, beta_var, adv, best_kappa, gp) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(14, 8))
    runs = {"gpbo": algorithm_rows(table, "gpbo", k0), **{b: algorithm_rows(table, b) for b in benches}}
    for i, (alg, sub) in enumerate(runs.items()):
        label = f"{display.algorithm(alg)} (kappa {k0:g})" if alg == "gpbo" else display.algorithm(alg)
        for j, col in enumerate(("exploration", "exploitation")):
            band(ax[0, j], run_curves(sub, col), label, display.color(alg))
            ax[0, j].set(xlabel="query", ylabel=f"{col} (% of max)", ylim=(0, 105), title=f"{col}, all subjects")
    ax[0, 0].legend(fontsize=8, loc="lower right")

    sc = ax[0, 2].scatter(
        beta_mean,
        beta_var,
        c=adv["extensive"],
        cmap="RdBu",
        s=220,
        marker="s",
        vmin=-np.abs(adv["extensive"]).max(),
        vmax=np.abs(adv["extensive"]).max(),
    )
    fig.colorbar(sc, ax=ax[0, 2], label="GP-BO - extensive (points)")
    ax[0, 2].set(
        xlabel="mean smoothness, mean(beta)  (smoother <-)",
        ylabel="smoothness variance, var(beta)",
        title="final exploration advantage per subject",
    )

    for b, mk in zip(benches, "o^v"):
        ax[1, 0].scatter(beta_mean, adv[b], marker=mk, color=display.color(b), label=f"vs {display.algorithm(b)}")
    ax[1, 0].axhline(0, color="k", lw=0.8)
    ax[1, 0].set(
        xlabel="mean(beta)  (smoother <-)",
        ylabel="GP-BO advantage (points, final exploration)",
        title="advantage vs smoothness",
    )
    ax[1, 0].legend(fontsize=8)

    order = np.argsort(beta_mean)
    for i, k in enumerate(kappas):
        ax[1, 1].plot(
            beta_mean[order], [100 * gp[k][subjects[j]] for j in order], marker="o", color=f"C{i}", label=f"k={k:g}"
        )
    ax[1, 1].set(
        xlabel="mean(beta)", ylabel="GP-BO final exploration (%)", title="GP-BO by kappa (Fig. S5C)", ylim=(0, 105)
    )
    ax[1, 1].legend(fontsize=8)

    ax[1, 2].scatter(beta_mean, best_kappa, s=60)
    ax[1, 2].set(xlabel="mean(beta)", ylabel="best kappa", title="best kappa vs smoothness (Fig. S5D)", yticks=kappas)
    fig.tight_layout()
    fig.savefig(ctx.figures / "smoothness_sweep.png", dpi=110)
    plt.close(fig)
