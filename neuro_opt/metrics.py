"""Performance metrics as defined in the STAR Methods (Cell Reports Medicine).

Curves are ``reps x queries`` arrays of fractions in [0, 1] of the ground-truth
maximum: exploration (truth at the believed-best point / max) and exploitation
(truth at the queried point / max), computed by :mod:`neuro_opt.simulate`.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def final(curve: np.ndarray) -> np.ndarray:
    """Value at the last query, per replicate: ``reps x queries -> reps``."""
    return np.asarray(curve, dtype=np.float64)[:, -1]


def auc(curve: np.ndarray) -> np.ndarray:
    """Normalized area under the curve (mean over queries), per replicate, in [0, 1]."""
    return np.asarray(curve, dtype=np.float64).mean(axis=1)


def mean_sem(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of the mean along ``axis`` (SEM 0 for a single sample; mean NaN,
    SEM 0 for none). The one implementation: every summary's ``[value, sem]`` comes from it."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[axis]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x.mean(axis=axis) if n else np.full(np.delete(x.shape, axis), np.nan)[()]
    sem = x.std(axis=axis, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(mean)
    return mean, sem


def value_sem(x) -> list[float]:
    """``[mean, sem]`` of all values of ``x`` as plain floats: a summary metric (:func:`mean_sem`)."""
    m, s = mean_sem(np.asarray(x, dtype=np.float64).ravel())
    return [float(m), float(s)]


def performance_points(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Performance points of A over B per query: absolute difference of the mean
    curves on the 0-100 scale (``reps x queries`` each -> ``queries``)."""
    return 100.0 * (np.asarray(a, dtype=np.float64).mean(axis=0) - np.asarray(b, dtype=np.float64).mean(axis=0))


def queries_to_convergence(points: np.ndarray, run: int = 5) -> np.ndarray:
    """1-based query at which a replicate first selected the same point ``run`` times
    in a row (the published definition uses 5); NaN if it never did.

    Args:
        points: ``reps x queries`` queried point indices.
    Returns:
        ``reps`` floats.
    """
    points = np.asarray(points)
    out = np.full(points.shape[0], np.nan)
    for r, seq in enumerate(points):
        streak = 1
        for t in range(1, len(seq)):
            streak = streak + 1 if seq[t] == seq[t - 1] else 1
            if streak >= run:
                out[r] = t + 1
                break
        if run == 1 and len(seq):
            out[r] = 1
    return out


def queries_to_reach(curve: np.ndarray, level: float) -> float:
    """First 1-based query at which the mean curve reaches ``level`` (NaN if never)."""
    m = np.asarray(curve, dtype=np.float64).mean(axis=0)
    hit = np.flatnonzero(m >= level)
    return float(hit[0] + 1) if hit.size else float("nan")


def wilcoxon_greater(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided Wilcoxon signed-rank p-value for paired samples, H1: A > B.

    Returns 1.0 when every difference is zero (no evidence of improvement).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same shape, got {a.shape} and {b.shape}")
    if np.all(a - b == 0):
        return 1.0
    return float(stats.wilcoxon(a, b, alternative="greater").pvalue)
