"""Helpers shared by the analyses: per-problem summaries, trend tests, panels."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neuro_opt import metrics
from sweeps import display
from sweeps.tables import run_curves, select  # noqa: F401 - re-exported for the analyses

#: the benchmarks of the published figures, then greedy search's other reading. Beyond 2-D the two
#: readings differ (neuro_opt/algorithms/greedy.py): ``greedy`` as the companion code (each search a
#: hyperplane, the default benchmark), ``greedy_line`` as the STAR Methods word it (each search a line)
BENCHMARKS = ("extensive", "greedy", "greedy_line")
#: further benchmarks: findings about them are stated only when the run has them (no published claim
#: is theirs alone; the published numbers for greedy search are quoted beside both readings)
FURTHER = ("greedy_line",)
_BENCHMARK_TEXT = {
    "extensive": "extensive search",
    "greedy": "greedy search (companion code, hyperplane)",
    "greedy_line": "greedy search (STAR Methods line)",
}


def benchmark_text(name: str) -> str:
    """How a finding names a benchmark beyond 2-D, saying which reading of greedy search it is."""
    return _BENCHMARK_TEXT.get(str(name), display.algorithm(name))


def benchmarks_in(table: pa.Table) -> list[str]:
    """The benchmarks (:data:`BENCHMARKS`) that ran in this table, in that order."""
    present = set(table["algorithm"].to_pylist())
    return [b for b in BENCHMARKS if b in present]


def per_problem(
    table: pa.Table, column: str = "exploration", query: int | None = None, reduce: str = "final"
) -> dict[str, float]:
    """Mean over replicates, per problem (``muscle``), of a trace column at ``query``
    (None: the last) or, with ``reduce="auc"``, averaged over all queries."""
    out = {}
    for m in sorted(set(table["muscle"].to_pylist())):
        cur = run_curves(select(table, {"muscle": m}), column)
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
        sub = select(sub, {"algorithm_kappa": float(kappa)})
    return sub


def paired_trend(series, sign: int) -> dict:
    """A monotone trend repeated over units (e.g. subjects): one Spearman rho of y against x per
    series, then a one-sided Wilcoxon signed-rank test of the rhos in the direction ``sign``
    (+1: increasing, -1: decreasing).

    Args:
        series: ``[(x_values, y_values), ...]``; NaN pairs are dropped and a series left with
            fewer than 3 points is skipped. A series whose x or y is constant has no trend and
            counts as rho 0 (not skipped: a constant best kappa is evidence against a trend).
        sign: +1 or -1.

    Returns:
        ``{"rho_mean", "rho_median", "p", "n"}``: ``n`` series used; p is 1.0 when every rho is 0
        and NaN with fewer than 2 series.
    """
    from scipy import stats

    rho_list: list[float] = []
    for x, y in series:
        x, y = np.asarray(x, float), np.asarray(y, float)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if len(x) >= 3:
            rho_list.append(0.0 if np.ptp(x) == 0 or np.ptp(y) == 0 else float(stats.spearmanr(x, y).statistic))
    rhos = np.asarray(rho_list)
    if rhos.size < 2:
        p = float("nan")
    elif np.all(rhos == 0):
        p = 1.0
    else:
        p = float(stats.wilcoxon(sign * rhos, alternative="greater").pvalue)
    return {
        "rho_mean": float(rhos.mean()) if rhos.size else float("nan"),
        "rho_median": float(np.median(rhos)) if rhos.size else float("nan"),
        "p": p,
        "n": int(rhos.size),
    }


def heatmap(
    ax, matrix, xvals, yvals, title: str, cbar_label: str, diverging: bool = False, fmt: str = "{:.0f}"
) -> None:
    """``len(yvals) x len(xvals)`` values, row 0 at the bottom, each cell annotated (text dark or
    light for contrast; NaN cells blank); ``diverging`` centres a blue-red scale on 0 (differences,
    positive red)."""
    m = np.asarray(matrix, float)
    if diverging:
        lim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
        im = ax.imshow(m, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-lim or -1, vmax=lim or 1)
    else:
        im = ax.imshow(m, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(xvals)), [f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in xvals])
    ax.set_yticks(range(len(yvals)), [str(v) for v in yvals])
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            text = fmt.format(v)
            text = fmt.format(0.0) if float(text) == 0 else text  # no "-0"
            lum = np.dot(im.cmap(im.norm(v))[:3], (0.299, 0.587, 0.114))
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w" if lum < 0.5 else "k")
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(im, ax=ax, label=cbar_label)


# ----------------------------------------------------------------------------- maps and subjects
# (spinal_4d, cortical_5d)


def subject_curves(table: pa.Table, algorithm: str, column: str) -> tuple[list[str], np.ndarray]:
    """Per-subject (problem) mean over replicates of a per-query column.

    Returns:
        ``(subjects, curves)``: sorted problem keys and a ``subjects x queries`` array.
    """
    sub = select(table, {"algorithm": algorithm})
    keys = sorted(set(sub["muscle"].to_pylist()))
    return keys, np.stack([np.nanmean(run_curves(select(sub, {"muscle": k}), column), axis=0) for k in keys])


def final_posteriors(table: pa.Table, algorithm: str) -> dict[str, np.ndarray]:
    """GP-BO's final posterior mean maps (``record_map: true``), ``problem key -> reps x P``
    (rows ordered by cell, then replicate). Empty when the runs recorded none."""
    if "posterior" not in table.column_names:
        return {}
    sub = select(table, {"algorithm": algorithm})
    sub = sub.filter(pc.is_valid(sub["posterior"])).sort_by(
        [("muscle", "ascending"), ("cell", "ascending"), ("rep", "ascending")]
    )
    out = {}
    for key in dict.fromkeys(sub["muscle"].to_pylist()):
        rows = select(sub, {"muscle": key})["posterior"].combine_chunks()
        out[key] = rows.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(rows), -1)
    return out


def project(values: np.ndarray, space, keep: tuple[str, ...]) -> np.ndarray:
    """Mean of per-point values over every dimension not in ``keep`` (masked grid points ignored).

    Args:
        values: ``... x P`` per-point values (e.g. ``reps x P`` posterior means).
        space: the :class:`~neuro_opt.space.SearchSpace` of the points.
        keep: names of the dimensions to keep, in the order wanted on the output axes.

    Returns:
        ``... x len(keep[0]) x ... x len(keep[-1])``: e.g. ``keep=("frequency",)`` gives the
        frequency profile, ``keep=("site", "timing")`` a site x timing map.
    """
    unknown = [k for k in keep if k not in space.names]
    if unknown or len(set(keep)) != len(keep):
        raise ValueError(f"keep={keep}: expected distinct dimension names among {space.names}")
    grid = space.to_grid(np.asarray(values, dtype=np.float64))  # ... x grid_shape
    lead = grid.ndim - space.ndim
    axes = [space.names.index(k) for k in keep]
    drop = tuple(lead + i for i in range(space.ndim) if i not in axes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-masked slice is NaN, as it should be
        reduced = np.nanmean(grid, axis=drop) if drop else grid
    kept_sorted = sorted(axes)
    return np.moveaxis(reduced, [lead + kept_sorted.index(a) for a in axes], range(lead, lead + len(axes)))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two flattened arrays (NaN where either is NaN is dropped; NaN if constant)."""
    a, b = np.ravel(np.asarray(a, float)), np.ravel(np.asarray(b, float))
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float(a @ b / den) if den > 0 else float("nan")


def pairwise_r(profiles: np.ndarray) -> np.ndarray:
    """Pearson r of every pair of rows of ``subjects x K`` profiles: ``n_pairs`` values."""
    return np.array([pearson(profiles[i], profiles[j]) for i, j in itertools.combinations(range(len(profiles)), 2)])


def mean_sem(x) -> tuple[float, float]:
    """Mean and SEM of the finite values (SEM 0 for a single value, NaNs for none)."""
    x = np.asarray(x, float).ravel()
    x = x[np.isfinite(x)]
    if not x.size:
        return float("nan"), float("nan")
    m, s = metrics.value_sem(x)
    return m, s


def rounded(x, nd: int = 4):
    """JSON-friendly rounding of floats, lists and dicts of them (NaN -> None)."""
    if isinstance(x, dict):
        return {k: rounded(v, nd) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [rounded(v, nd) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else round(float(x), nd)
    if isinstance(x, np.integer):
        return int(x)
    return x


# ----------------------------------------------------------------------------- plots


def plot_curves(ax, curves: dict[str, np.ndarray], ylabel: str, title: str | None = None) -> None:
    """Mean +/- SEM over subjects (rows) per query, one line and band per algorithm, in % of max."""
    for i, (label, arr) in enumerate(curves.items()):
        band(ax, arr, f"{label} (n={arr.shape[0]})", f"C{i}")
    ax.set_xlabel("query")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.set_xlim(1, max(a.shape[1] for a in curves.values()))
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")


def map_panel(
    ax,
    arr: np.ndarray,
    row_labels,
    col_labels,
    title: str,
    row_name: str = "",
    col_name: str = "",
    cmap: str = "viridis",
    colorbar: bool = True,
    mark_max: bool = True,
) -> None:
    """A ``rows x cols`` map with labelled ticks and its maximum outlined."""
    im = ax.imshow(arr, aspect="auto", origin="lower", cmap=cmap)
    ax.set_xticks(
        range(len(col_labels)), [str(v) for v in col_labels], fontsize=6, rotation=90 if len(col_labels) > 6 else 0
    )
    ax.set_yticks(range(len(row_labels)), [str(v) for v in row_labels], fontsize=6)
    ax.set_xlabel(col_name, fontsize=7)
    ax.set_ylabel(row_name, fontsize=7)
    ax.set_title(title, fontsize=8)
    if mark_max and np.isfinite(arr).any():
        from matplotlib.patches import Rectangle

        r, c = np.unravel_index(np.nanargmax(arr), arr.shape)
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.ax.tick_params(labelsize=6)
