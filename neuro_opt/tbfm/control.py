"""Closed-loop demonstrations: finite-control-set MPC deciding, each trial, whether to stimulate.

Both demonstrations (paper Section 3.6, Appendix 6.3) take the model's forecasts
under stimulation and the actual stimulated trajectories of held-out trials
(``trials x horizon x channels``), and the indices of the two stimulated
channels. The controller's bias knob (a margin or a threshold) is swept to give
an ROC curve; its AUC is computed exactly as the Mann-Whitney statistic of the
controller's score.

* :func:`demo_target_ranges` (Demonstration 1): targets are LFP ranges on the two
  stimulated channels at one step (by default the sample just before pulse 1),
  one of the 4 quartiles of resting activity per channel (16 targets). Half the
  trials are "should stimulate": their target is the pair of quartiles the
  actual trajectory passes through; the others get a different random target.
  The controller stimulates if the forecast lies in the target inflated by
  ``margin`` on both channels.
* :func:`demo_reference_tracking` (Demonstration 2): each trial gets a reference
  trajectory (from pulse 1 to the end of the horizon, on the two channels), a
  random convex combination of held-out trajectories. The controller
  stimulates if the mean squared distance between forecast and reference is
  below ``threshold``. As in Demonstration 1, half the trials "should be
  stimulated": their reference mixes in the trial's own stimulated trajectory;
  the others mix only other trials (our reading of the paper's design; it keeps
  the labels fixed while the threshold moves, and gives a useless forecast an
  AUC of 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


@dataclass
class ControlROC:
    """An ROC curve of a stimulation controller.

    Attributes:
        knob: the swept margins or thresholds. fpr, tpr: rates at each knob value.
        auc: area under the ROC curve (exact, from the controller's score).
        n_pos, n_neg: trials that should / should not be stimulated.
    """

    knob: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    n_pos: int
    n_neg: int


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC of ``scores`` (higher = stimulate) against boolean ``labels`` (ties count one half)."""
    scores, labels = np.asarray(scores, float).reshape(-1), np.asarray(labels, bool).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels must have the same length, got {scores.shape} and {labels.shape}")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"need both positive and negative trials, got {n_pos} positive and {n_neg} negative")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _roc(score: np.ndarray, labels: np.ndarray, knob: np.ndarray, stimulate) -> ControlROC:
    fpr = np.array([stimulate(k)[~labels].mean() for k in knob])
    tpr = np.array([stimulate(k)[labels].mean() for k in knob])
    return ControlROC(
        knob=knob, fpr=fpr, tpr=tpr, auc=roc_auc(score, labels), n_pos=int(labels.sum()), n_neg=int((~labels).sum())
    )


def _check(forecast, actual, stim_channels):
    f, a = np.asarray(forecast, float), np.asarray(actual, float)
    if f.ndim != 3 or f.shape != a.shape:
        raise ValueError(f"forecast and actual must both be trials x horizon x channels, got {f.shape} and {a.shape}")
    if not (np.isfinite(f).all() and np.isfinite(a).all()):
        raise ValueError("forecast or actual contains NaN or inf")
    ch = np.asarray(stim_channels, int).reshape(-1)
    if ch.size != 2 or ch.min() < 0 or ch.max() >= f.shape[2]:
        raise ValueError(f"stim_channels must be 2 channel indices in 0..{f.shape[2] - 1}, got {ch.tolist()}")
    return f, a, ch


def demo_target_ranges(
    forecast, actual, rest, stim_channels, step: int, rng: np.random.Generator, margins=None, p_should: float = 0.5
) -> ControlROC:
    """Demonstration 1: stimulate when the forecast enters a target LFP range.

    Args:
        forecast, actual: ``trials x horizon x channels`` under stimulation.
        rest: ``samples x channels`` resting LFP (quartiles of each stimulated channel).
        stim_channels: the two stimulated channels (indices into the channel axis).
        step: forecast step at which the target must be met (e.g. ``lead - 1``).
        rng: draws the should-stimulate trials and the decoy targets.
        margins: swept margins (default: 41 values spanning the score range).
        p_should: fraction of should-stimulate trials.
    """
    f, a, ch = _check(forecast, actual, stim_channels)
    if not 0 <= step < f.shape[1]:
        raise ValueError(f"step must be in 0..{f.shape[1] - 1}, got {step}")
    rest = np.asarray(rest, float)
    if rest.ndim != 2 or rest.shape[1] != f.shape[2] or rest.shape[0] < 4:
        raise ValueError(f"rest must be samples x {f.shape[2]} channels with >= 4 samples, got {rest.shape}")
    q = np.quantile(rest[:, ch], [0.25, 0.5, 0.75], axis=0)  # 3 x 2
    edges = np.concatenate([np.full((1, 2), -np.inf), q, np.full((1, 2), np.inf)])  # 5 x 2
    n = f.shape[0]
    true_q = np.stack([np.searchsorted(q[:, k], a[:, step, ch[k]]) for k in range(2)], 1)  # n x 2 quartile index
    labels = rng.random(n) < p_should
    target = true_q.copy()
    for i in np.nonzero(~labels)[0]:
        while True:
            cand = rng.integers(0, 4, size=2)
            if not np.array_equal(cand, true_q[i]):
                target[i] = cand
                break
    lo = np.stack([edges[target[:, k], k] for k in range(2)], 1)
    hi = np.stack([edges[target[:, k] + 1, k] for k in range(2)], 1)
    fv = f[:, step, ch]  # n x 2
    outside = np.maximum(lo - fv, fv - hi).max(1)  # <= margin: inside the inflated target on both channels
    score = -outside
    if margins is None:
        finite = outside[np.isfinite(outside)]
        margins = np.linspace(finite.min() - 1e-6, finite.max() + 1e-6, 41)
    margins = np.asarray(margins, float)
    return _roc(score, labels, margins, lambda m: outside <= m)


def demo_reference_tracking(
    forecast,
    actual,
    stim_channels,
    start: int,
    rng: np.random.Generator,
    n_mix: int = 3,
    thresholds=None,
    p_should: float = 0.5,
) -> ControlROC:
    """Demonstration 2: stimulate when the forecast is close to a reference trajectory.

    Each trial's reference (steps ``start`` to the end, on the two stimulated
    channels) is a Dirichlet-weighted mix of ``n_mix`` held-out trajectories. For
    "should stimulate" trials one of them is the trial's own stimulated trajectory
    (stimulating moves activity towards the reference); for the others all come
    from other trials. Both kinds of reference have the same distribution, so a
    forecast that ignores the trial scores an AUC of 0.5.

    Args:
        forecast, actual: ``trials x horizon x channels`` under stimulation.
        stim_channels: the two stimulated channels.
        start: first forecast step of the reference (pulse 1, i.e. ``lead``).
        rng: draws the should-stimulate trials, the mixed trajectories and weights.
        n_mix: trajectories per reference.
        thresholds: swept thresholds on the mean squared distance (default: 41 quantiles).
        p_should: fraction of should-stimulate trials.
    """
    f, a, ch = _check(forecast, actual, stim_channels)
    n = f.shape[0]
    if not 0 <= start < f.shape[1]:
        raise ValueError(f"start must be in 0..{f.shape[1] - 1}, got {start}")
    if n < n_mix + 2:
        raise ValueError(f"need at least {n_mix + 2} trials, got {n}")
    seg_a = a[:, start:, ch]
    seg_f = f[:, start:, ch]
    labels = rng.random(n) < p_should
    ref = np.empty_like(seg_a)
    for i in range(n):
        k = n_mix - 1 if labels[i] else n_mix
        others = rng.choice(np.delete(np.arange(n), i), size=k, replace=False)
        members = np.concatenate([[i], others]) if labels[i] else others
        ref[i] = np.tensordot(rng.dirichlet(np.ones(n_mix)), seg_a[members], axes=1)
    d_forecast = ((seg_f - ref) ** 2).mean(axis=(1, 2))
    if thresholds is None:
        thresholds = np.quantile(d_forecast, np.linspace(0, 1, 41))
    thresholds = np.asarray(thresholds, float)
    return _roc(-d_forecast, labels, thresholds, lambda th: d_forecast <= th)
