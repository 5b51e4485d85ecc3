"""Helpers shared by the analyses: per-problem summaries, trend tests, panels."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neuro_opt import metrics
from sweeps.kinds.optimization import _curves, select  # noqa: F401 - re-exported for the analyses


def per_problem(table: pa.Table, column: str = "exploration", query: int | None = None,
                reduce: str = "final") -> dict[str, float]:
    """Mean over replicates, per problem (``muscle``), of a trace column at ``query``
    (None: the last) or, with ``reduce="auc"``, averaged over all queries."""
    out = {}
    for m in sorted(set(table["muscle"].to_pylist())):
        cur = _curves(select(table, {"muscle": m}), column)
        if reduce == "auc":
            out[m] = float(np.nanmean(metrics.auc(cur)))
        else:
            out[m] = float(np.nanmean(cur[:, (query or cur.shape[1]) - 1]))
    return out


def spearman(x, y) -> tuple[float, float]:
    """Spearman rho and two-sided p (nan, nan with fewer than 3 points or a constant input)."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    rho = float(stats.spearmanr(x, y).statistic)
    if len(x) > 8:
        return rho, float(stats.spearmanr(x, y).pvalue)
    # few points: the t approximation is wrong (p = 0 for a perfect rank order); exact permutation p
    import itertools
    ry = stats.rankdata(y)
    null = np.array([stats.spearmanr(x, ry[list(perm)]).statistic for perm in itertools.permutations(range(len(x)))])
    return rho, float(np.mean(np.abs(null) >= abs(rho) - 1e-12))


def one_sided(rho: float, p_two: float, sign: int) -> float:
    """One-sided p of a correlation in the direction ``sign`` (+1 or -1) from a two-sided p."""
    if not np.isfinite(rho):
        return float("nan")
    return p_two / 2 if np.sign(rho) == sign else 1 - p_two / 2


def band(ax, curve: np.ndarray, label: str, color, scale: float = 100.0) -> None:
    """Mean +/- SEM of a ``runs x queries`` curve."""
    m, s = metrics.mean_sem(curve)
    q = np.arange(1, len(m) + 1)
    ax.plot(q, scale * m, color=color, label=label)
    ax.fill_between(q, scale * (m - s), scale * (m + s), color=color, alpha=0.25, lw=0)


def algorithm_rows(table: pa.Table, algorithm: str, kappa: float | None = None) -> pa.Table:
    """The runs of one algorithm (GP-BO at one kappa when the grid varies kappa)."""
    sub = select(table, {"algorithm": algorithm})
    if kappa is not None and "algorithm_kappa" in sub.column_names and sub["algorithm_kappa"].null_count < sub.num_rows:
        sub = sub.filter(pc.fill_null(pc.equal(sub["algorithm_kappa"], float(kappa)), False))
    return sub
