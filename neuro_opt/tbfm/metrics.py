"""Forecast metrics for multi-step, multi-channel predictions.

All functions take ``pred`` and ``target`` of shape ``trials x horizon x channels``
(numpy arrays or torch tensors, raw units) and return plain floats or dicts.

Conventions (as in the TBFM paper):

* **R2 over the horizon** (:func:`r2_horizon`): per channel,
  ``1 - SSE / SST`` pooled over trials and time steps, with SST taken around the
  channel's mean over trials and time; then averaged over channels.
* **R2 beyond the evoked response** (:func:`r2_beyond_evoked`): per channel,
  ``1 - SSE / SST`` with SST taken around the target's mean over trials at each
  time step (the average evoked response, ``horizon x channels``), not around
  one mean over trials and time; then averaged over channels. R2 over the horizon
  credits a forecast for the variance the average evoked response already explains;
  this one does not: forecasting the test trials' own evoked response for every
  trial scores 0, and only trial-to-trial (state-dependent) variation scores above 0.
* **The evoked-response predictor** (:func:`evoked_baseline`): the mean training
  response (per time step and channel) forecast for every test trial, with both R2s.
  Its R2 over the horizon is what the average evoked response alone scores; its R2
  beyond the evoked response is <= 0 (0 when the training and test evoked responses agree).
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


def _r2_pooled(p: np.ndarray, t: np.ndarray, around: str = "channel") -> np.ndarray:
    """Per-channel R2 of ``a x b x channels`` arrays pooled over the first two axes -> ``channels``.

    ``around``: ``"channel"`` takes SST around each channel's mean over both axes; ``"step"`` around
    its mean over the first axis (trials) at each step of the second (time).
    """
    sse = ((p - t) ** 2).sum(axis=(0, 1))
    centre = t.mean(axis=(0, 1) if around == "channel" else 0, keepdims=True)
    sst = ((t - centre) ** 2).sum(axis=(0, 1))
    bad = np.nonzero(sst <= 1e-12 * max(float(sst.max()), 1e-300))[0]
    if bad.size:
        what = "constant" if around == "channel" else "the same on every trial at each time step"
        raise ValueError(
            f"target is {what} on channel(s) {bad.tolist()}: R2 is undefined there "
            f"(drop unusable channels before scoring{'' if around == 'channel' else '; it needs two or more trials'})"
        )
    return 1.0 - sse / sst


def r2_per_channel(pred, target) -> np.ndarray:
    """R2 over the horizon for each channel (``channels``)."""
    p, t = _check(pred, target)
    return _r2_pooled(p, t)


def r2_horizon(pred, target) -> float:
    """R2 over the whole horizon, averaged over channels."""
    return float(r2_per_channel(pred, target).mean())


def r2_beyond_evoked(pred, target) -> float:
    """R2 around the per-time-step trial mean of ``target`` (its average evoked response), averaged over channels.

    Per channel ``1 - SSE / SST`` with ``SST = sum over trials and steps of (target - target.mean(trials))^2``:
    the share of the variance the average evoked response leaves unexplained that the forecast explains.
    A forecast equal to the target's own evoked response for every trial scores 0.
    """
    p, t = _check(pred, target)
    return float(_r2_pooled(p, t, around="step").mean())


def evoked_baseline(train_target, test_target) -> dict[str, float]:
    """The evoked-response predictor: the mean training response forecast for every test trial.

    Args:
        train_target: ``trials x horizon x channels`` training responses (raw units); at least
            as long a horizon as ``test_target`` (cropped to it).
        test_target: ``trials x horizon x channels`` responses to forecast.

    Returns ``{"r2": R2 over the horizon, "r2_beyond_evoked": R2 beyond the evoked response}``
    of that constant forecast on ``test_target``.
    """
    tr, te = _as_np(train_target, "train_target"), _as_np(test_target, "test_target")
    if tr.ndim != 3 or te.ndim != 3 or tr.shape[0] < 1 or tr.shape[2] != te.shape[2] or tr.shape[1] < te.shape[1]:
        raise ValueError(
            f"train_target and test_target must be trials x horizon x channels with the same channels and a "
            f"training horizon >= the test horizon, got shapes {tr.shape} and {te.shape}"
        )
    if not np.isfinite(tr).all():
        raise ValueError("train_target contains NaN or inf")
    pred = np.broadcast_to(tr[:, : te.shape[1]].mean(0, keepdims=True), te.shape)
    return {"r2": r2_horizon(pred, te), "r2_beyond_evoked": r2_beyond_evoked(pred, te)}


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
    """All metrics at once: ``r2``, ``r2_beyond_evoked``, ``r2_mean``, ``state_dependent_r2`` and ``r2_h{h}``
    per horizon.

    Args:
        runway: ``trials x runway x channels`` (its last sample is the initial state).
    """
    r = _as_np(runway, "runway")
    out = {
        "r2": r2_horizon(pred, target),
        "r2_beyond_evoked": r2_beyond_evoked(pred, target),
        "r2_mean": r2_mean_response(pred, target),
        "state_dependent_r2": state_dependent_r2(pred, target, r[:, -1, :], n_bins=n_bins),
    }
    for h, v in r2_by_horizon(pred, target, horizons).items():
        out[f"r2_h{h}"] = v
    return out
