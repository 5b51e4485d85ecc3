"""Fig. S6: fixed-rho vs variable-rho GP-BO: exploration, exploitation and map accuracy (r2).

The unit of the paired tests is the problem (a muscle or a virtual subject), its value the
mean over replicates; tests pool every problem of every dataset, and each dataset is also
reported on its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neuro_opt import metrics
from sweeps import display, plots  # noqa: F401 - plots sets the Agg backend before pyplot is imported
from sweeps.analyses import finding
from sweeps.analyses._common import band, per_problem, select
from sweeps.tables import run_curves

ALPHA = 0.05
EQUIVALENCE_POINTS = 5.0  # |difference| within which two methods "perform equivalently"
VAR, FIX = "gpbo", "gpbo_fixed_rho"
COLUMNS = ("exploration", "exploitation", "map_r2")


def _paired(table, column: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Per-problem finals of variable- and fixed-rho, paired by (dataset, problem)."""
    vals = {}
    for alg in (VAR, FIX):
        sub = select(table, {"algorithm": alg})
        out = {}
        for ds in sorted(set(sub["dataset"].to_pylist())) if "dataset" in sub.column_names else [None]:
            part = select(sub, {"dataset": ds}) if ds is not None else sub
            out.update({(ds, m): v for m, v in per_problem(part, column).items()})
        vals[alg] = out
    keys = sorted(set(vals[VAR]) & set(vals[FIX]), key=str)
    return np.array([vals[VAR][k] for k in keys]), np.array([vals[FIX][k] for k in keys]), keys


def _two_sided(a, b) -> float:
    from scipy import stats

    d = a - b
    return 1.0 if np.all(d == 0) or len(d) < 2 else float(stats.wilcoxon(a, b).pvalue)


def analyze(ctx) -> dict:
    table = ctx.table
    if "map_r2" not in table.column_names:
        raise ValueError("rho_comparison needs record_map: true (no map_r2 column in the results)")
    stats_: dict[str, dict[str, Any]] = {}  # means, points, n, p-values (None: one problem)
    for col in COLUMNS:
        a, b, keys = _paired(table, col)
        stats_[col] = {
            "variable": round(float(a.mean()), 4),
            "fixed": round(float(b.mean()), 4),
            "points": round(float(100 * (a - b).mean()), 2),
            "n_problems": len(keys),
            "p_greater": metrics.wilcoxon_greater(a, b) if len(keys) > 1 else None,
            "p_two_sided": _two_sided(a, b),
        }
        for ds in sorted({k[0] for k in keys}, key=str):
            idx = [i for i, k in enumerate(keys) if k[0] == ds]
            stats_[col][f"points_{ds}"] = round(float(100 * (a[idx] - b[idx]).mean()), 2)
    r2 = stats_["map_r2"]
    findings = [
        finding(
            "Variable-rho maps are more accurate than fixed-rho maps (r2 of posterior mean vs truth)",
            "+11.2 points of explained variance, p = 4e-5 (Fig. S6B)",
            r2["points"] > 0 and r2["p_greater"] is not None and r2["p_greater"] < ALPHA,
            **{k: v for k, v in r2.items()},
            rule=f"final r2 of variable minus fixed > 0 and one-sided Wilcoxon p < {ALPHA}, paired by problem",
        ),
        finding(
            "Variable-rho performs equivalently to fixed-rho in exploration and exploitation",
            "no difference in exploration or exploitation (Fig. S6B-D)",
            all(abs(stats_[c]["points"]) <= EQUIVALENCE_POINTS for c in ("exploration", "exploitation")),
            exploration=stats_["exploration"],
            exploitation=stats_["exploitation"],
            rule=f"|final difference| <= {EQUIVALENCE_POINTS:g} points in both exploration and exploitation "
            f"(two-sided Wilcoxon p also given)",
        ),
    ]
    _figure(ctx, table, stats_)
    return {"findings": findings, "rho_comparison": stats_}


def _figure(ctx, table, stats_) -> None:
    import matplotlib.pyplot as plt

    datasets = sorted(set(table["dataset"].to_pylist())) if "dataset" in table.column_names else [None]
    fig, ax = plt.subplots(len(datasets), 4, figsize=(17, 3.8 * len(datasets)), squeeze=False)
    for row, ds in enumerate(datasets):
        part = select(table, {"dataset": ds}) if ds is not None else table
        for i, (alg, label) in enumerate(((VAR, "variable-rho"), (FIX, "fixed-rho"))):
            sub = select(part, {"algorithm": alg})
            for j, col in enumerate(COLUMNS):
                band(ax[row, j], run_curves(sub, col), label, display.color(alg))
                ax[row, j].set(
                    xlabel="query",
                    ylabel=f"{'map accuracy r2' if col == 'map_r2' else col} (%)",
                    ylim=(0, 105),
                    title=f"{ds}: {col}",
                )
        ax[row, 0].legend(fontsize=8, loc="lower right")
        _example_maps(ctx, part, ax[row, 3], ds)
    fig.tight_layout()
    fig.savefig(ctx.figures / "rho_comparison.png", dpi=110)
    plt.close(fig)


def _example_maps(ctx, part, ax, ds) -> None:
    """Truth | fixed-rho | variable-rho posterior mean of one problem, as a 2-D slice through the
    truth's best point (the first two dimensions: for the 4-D spaces, the two smoothest)."""
    muscle = sorted(set(part["muscle"].to_pylist()))[0]
    problem = ctx.grid_dataset(ds)[muscle]
    space = problem.space
    panels = [("truth", problem.truth)]
    for alg, label in ((FIX, "fixed-rho"), (VAR, "variable-rho")):
        sub = select(select(part, {"algorithm": alg}), {"muscle": muscle})
        maps = [m for m in sub["posterior"].to_pylist() if m is not None]
        if maps:
            panels.append((label, np.mean(np.asarray(maps, dtype=float), axis=0)))
    best = space.index[int(np.argmax(problem.truth))]
    images = []
    for label, values in panels:
        grid = space.to_grid(np.asarray(values, float))
        sl = tuple(slice(None) if d < 2 else int(best[d]) for d in range(grid.ndim))
        img = np.asarray(grid[sl], float)
        rng = np.nanmax(img) - np.nanmin(img)
        images.append((label, (img - np.nanmin(img)) / rng if rng > 0 else img * 0))
    ax.imshow(
        np.concatenate([np.pad(im, ((0, 0), (0, 1)), constant_values=np.nan) for _, im in images], axis=1),
        cmap="viridis",
        aspect="auto",
    )
    ax.set_title(f"{muscle}: " + " | ".join(lbl for lbl, _ in images), fontsize=8)
    ax.set(xlabel=f"{space.names[1]} (per panel)", ylabel=space.names[0])
