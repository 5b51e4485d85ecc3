"""Forecast metrics for multi-step, multi-channel predictions.

All functions take ``pred`` and ``target`` of shape ``trials x horizon x channels``
(numpy arrays or torch tensors, raw units) and return plain floats or dicts.

Conventions (as in the TBFM paper):

* **R2 over the horizon** (:func:`r2_horizon`): per channel,
  ``1 - SSE / SST`` pooled over trials and time steps, with SST taken around the
  channel's mean over trials and time; then averaged over channels.
* **R2 by horizon length** (:func:`r2_by_horizon`): the same on the first ``h``
  steps of the forecast, for several ``h``.
* **R2 of the mean prediction vs the mean response** (:func:`r2_mean_response`):
  trial-averaged prediction vs trial-averaged target (``horizon x channels``),
  per channel over time, averaged over channels.
* **State-dependent R2** (:func:`state_dependent_r2`): per channel, trials are
  binned by their initial state (the channel's value at t = 0, the last runway
  sample) into ``n_bins`` equal-count bins; the bin-mean predictions are
  compared with the bin-mean targets (pooled over bins and time); averaged
  over channels.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

DEFAULT_HORIZONS = (10, 20, 40, 82, 164)


def _as_np(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x


def _check(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_np(pred, "pred"), _as_np(target, "target")
    if p.ndim != 3 or t.ndim != 3:
        raise ValueError(f"pred and target must be trials x horizon x channels, got shapes {p.shape} and {t.shape}")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from target shape {t.shape}")
    if p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(f"need at least one trial and one time step, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("pred contains NaN or inf")
    if not np.isfinite(t).all():
        raise ValueError("target contains NaN or inf")
    return p, t


def _r2_pooled(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-channel R2 of ``a x b x channels`` arrays pooled over the first two axes -> ``channels``."""
    sse = ((p - t) ** 2).sum(axis=(0, 1))
    sst = ((t - t.mean(axis=(0, 1), keepdims=True)) ** 2).sum(axis=(0, 1))
    bad = np.nonzero(sst <= 1e-12 * max(float(sst.max()), 1e-300))[0]
    if bad.size:
        raise ValueError(
            f"target is constant on channel(s) {bad.tolist()}: R2 is undefined there "
            f"(drop unusable channels before scoring)"
        )
    return 1.0 - sse / sst


def r2_per_channel(pred, target) -> np.ndarray:
    """R2 over the horizon for each channel (``channels``)."""
    p, t = _check(pred, target)
    return _r2_pooled(p, t)


def r2_horizon(pred, target) -> float:
    """R2 over the whole horizon, averaged over channels."""
    return float(r2_per_channel(pred, target).mean())


def r2_by_horizon(pred, target, horizons: Iterable[int] = DEFAULT_HORIZONS) -> dict[int, float]:
    """R2 over the first ``h`` forecast steps for each ``h`` in ``horizons`` (those <= the horizon)."""
    p, t = _check(pred, target)
    out = {}
    for h in horizons:
        h = int(h)
        if h < 1:
            raise ValueError(f"horizons must be >= 1, got {h}")
        if h <= p.shape[1]:
            out[h] = float(_r2_pooled(p[:, :h], t[:, :h]).mean())
    return out


def r2_mean_response(pred, target) -> float:
    """R2 between the trial-averaged prediction and the trial-averaged target."""
    p, t = _check(pred, target)
    return float(_r2_pooled(p.mean(0)[None], t.mean(0)[None]).mean())


def state_dependent_r2(pred, target, initial_state, n_bins: int = 9) -> float:
    """R2 of bin-mean predictions vs bin-mean targets, trials binned by initial state.

    Args:
        pred, target: ``trials x horizon x channels``.
        initial_state: ``trials x channels`` value of each channel at t = 0
            (usually ``runway[:, -1, :]``).
        n_bins: equal-count bins per channel (9 in the paper).
    """
    p, t = _check(pred, target)
    s = _as_np(initial_state, "initial_state")
    if s.shape != (p.shape[0], p.shape[2]):
        raise ValueError(f"initial_state must be trials x channels = {(p.shape[0], p.shape[2])}, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("initial_state contains NaN or inf")
    if not 1 <= n_bins <= p.shape[0]:
        raise ValueError(f"n_bins must be in 1..{p.shape[0]} (the number of trials), got {n_bins}")
    r2 = []
    for c in range(p.shape[2]):
        bins = np.array_split(np.argsort(s[:, c], kind="stable"), n_bins)
        mp = np.stack([p[b, :, c].mean(0) for b in bins])  # bins x horizon
        mt = np.stack([t[b, :, c].mean(0) for b in bins])
        r2.append(_r2_pooled(mp[:, :, None], mt[:, :, None])[0])
    return float(np.mean(r2))


def forecast_report(pred, target, runway, horizons: Iterable[int] = DEFAULT_HORIZONS, n_bins: int = 9) -> dict:
    """All metrics at once: ``r2``, ``r2_mean``, ``state_dependent_r2`` and ``r2_h{h}`` per horizon.

    Args:
        runway: ``trials x runway x channels`` (its last sample is the initial state).
    """
    r = _as_np(runway, "runway")
    out = {
        "r2": r2_horizon(pred, target),
        "r2_mean": r2_mean_response(pred, target),
        "state_dependent_r2": state_dependent_r2(pred, target, r[:, -1, :], n_bins=n_bins),
    }
    for h, v in r2_by_horizon(pred, target, horizons).items():
        out[f"r2_h{h}"] = v
    return out
