"""Trial windowing, stimulation descriptors, z-scoring and the time-ordered split.

Timing (1 kHz, one sample per ms), as in the TBFM paper::

    |<- runway (20) ->|<- lead (20) ->| pulse 1 ... pulse 2 (ipi later) ...|
                      ^ t = 0: the forecast starts here
                      |<------------------- horizon (164) ------------------>|

The model sees the runway and forecasts the horizon; the first pulse arrives
``lead`` ms into the forecast (the loop latency). A trial is ``runway + horizon``
samples long (184 by default).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import SupportsInt, cast

import numpy as np
from numpy.typing import ArrayLike

RUNWAY_MS = 20
LEAD_MS = 20
HORIZON_MS = 164
STIM_DIM = 3  # clock, pulse-1 onset, pulse-2 onset


def stim_descriptor(ipi_ms: int, horizon: int = HORIZON_MS, lead: int = LEAD_MS) -> np.ndarray:
    """Stimulation descriptor ``horizon x 3`` (float32).

    Column 0 is a clock going linearly from 0 at t = 0 to 1 at the end of the
    horizon; columns 1 and 2 are one-hot onsets of pulse 1 (at ``lead``) and
    pulse 2 (at ``lead + ipi_ms``); a pulse beyond the horizon leaves its column
    zero. ``ipi_ms = 0`` describes a sham trial (no pulse, clock only).
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if ipi_ms < 0 or lead < 0:
        raise ValueError(f"ipi_ms and lead must be >= 0, got ipi_ms={ipi_ms}, lead={lead}")
    d = np.zeros((horizon, STIM_DIM), dtype=np.float32)
    d[:, 0] = np.linspace(0.0, 1.0, horizon) if horizon > 1 else 0.0
    if ipi_ms > 0:
        if lead < horizon:
            d[lead, 1] = 1.0
        if lead + ipi_ms < horizon:
            d[lead + ipi_ms, 2] = 1.0
    return d


@dataclass
class TrialSet:
    """Windowed trials, time-ordered.

    Attributes:
        x: ``trials x (runway + horizon) x channels`` float32.
        runway_len: samples of runway at the start of each trial.
        lead: samples from the start of the forecast to pulse 1.
        ipi_ms: ``trials`` int inter-pulse interval (ms).
        stimulated: ``trials`` bool (False: sham trial, no pulse).
        trial_index: ``trials`` position of each trial in the session.
        channels: ``channels`` indices of the kept channels in the recording.
    """

    x: np.ndarray
    runway_len: int
    lead: int
    ipi_ms: np.ndarray
    stimulated: np.ndarray
    trial_index: np.ndarray
    channels: np.ndarray

    def __post_init__(self):
        if self.x.ndim != 3:
            raise ValueError(f"x must be trials x time x channels, got shape {self.x.shape}")
        n = self.x.shape[0]
        for name in ("ipi_ms", "stimulated", "trial_index"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have one entry per trial ({n}), got shape {getattr(self, name).shape}")
        if self.channels.shape != (self.x.shape[2],):
            raise ValueError(f"channels must have one index per channel ({self.x.shape[2]}), got {self.channels.shape}")
        if not 1 <= self.runway_len < self.x.shape[1]:
            raise ValueError(
                f"runway_len must be in 1..{self.x.shape[1] - 1} (trial length "
                f"{self.x.shape[1]}), got {self.runway_len}"
            )

    @property
    def n_trials(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.x.shape[2])

    @property
    def horizon(self) -> int:
        return int(self.x.shape[1] - self.runway_len)

    @property
    def runway(self) -> np.ndarray:
        """``trials x runway x channels`` view."""
        return self.x[:, : self.runway_len]

    @property
    def target(self) -> np.ndarray:
        """``trials x horizon x channels`` view."""
        return self.x[:, self.runway_len :]

    @property
    def descriptor_key(self) -> np.ndarray:
        """``trials`` int: the inter-pulse interval, or 0 for sham trials."""
        return np.where(self.stimulated, self.ipi_ms, 0).astype(np.int64)

    def descriptor_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unique descriptors: ``(keys K, table K x horizon x 3, index trials)`` with ``table[index]`` per trial."""
        keys, index = np.unique(self.descriptor_key, return_inverse=True)
        table = np.stack([stim_descriptor(int(k), self.horizon, self.lead) for k in keys])
        return keys, table, index.astype(np.int64)

    def subset(self, idx) -> "TrialSet":
        """Trials ``idx`` (an index array, mask or slice), in their order."""
        return replace(
            self,
            x=self.x[idx],
            ipi_ms=self.ipi_ms[idx],
            stimulated=self.stimulated[idx],
            trial_index=self.trial_index[idx],
        )


def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[:3].tolist()
        raise ValueError(f"{what} contains NaN or inf (first at index {bad}); clean or drop those samples/channels")


def window_trials(
    lfp: np.ndarray,
    onsets: ArrayLike,
    ipi_ms: ArrayLike,
    *,
    runway_ms: int = RUNWAY_MS,
    lead_ms: int = LEAD_MS,
    horizon_ms: int = HORIZON_MS,
    fs: int = 1000,
    channels: ArrayLike | None = None,
    stimulated: ArrayLike | None = None,
) -> TrialSet:
    """Cut a continuous recording into trials around each first pulse.

    Trial ``n`` spans samples ``[onset - lead - runway, onset - lead + horizon)``.

    Args:
        lfp: ``samples x channels`` recording at ``fs`` Hz (must be 1000: the
            model's time step is 1 ms).
        onsets: ``trials`` sample index of pulse 1 of each trial.
        ipi_ms: ``trials`` inter-pulse intervals, or one int for all.
        runway_ms, lead_ms, horizon_ms: the window (ms).
        channels: indices of channels to keep (None: all).
        stimulated: ``trials`` bool (None: all stimulated).
    """
    lfp = np.asarray(lfp)
    if lfp.ndim != 2:
        raise ValueError(f"lfp must be samples x channels, got shape {lfp.shape}")
    if fs != 1000:
        raise ValueError(f"fs must be 1000 Hz (1 ms per sample), got {fs}; resample first")
    if runway_ms < 1 or horizon_ms < 1 or lead_ms < 0:
        raise ValueError(
            f"need runway_ms >= 1, horizon_ms >= 1, lead_ms >= 0; got {runway_ms}, {horizon_ms}, {lead_ms}"
        )
    onsets = np.asarray(onsets, dtype=np.int64).reshape(-1)
    n = onsets.size
    # cast: np.isscalar is a TypeGuard for any scalar (complex, str, ...); an interval is int-like
    ipi = (
        np.full(n, int(cast(SupportsInt, ipi_ms)), dtype=np.int64)
        if np.isscalar(ipi_ms)
        else np.asarray(ipi_ms, dtype=np.int64)
    )
    if ipi.shape != (n,):
        raise ValueError(f"ipi_ms must be an int or one value per onset ({n}), got shape {ipi.shape}")
    stim = np.ones(n, dtype=bool) if stimulated is None else np.asarray(stimulated, dtype=bool)
    if stim.shape != (n,):
        raise ValueError(f"stimulated must have one value per onset ({n}), got shape {stim.shape}")
    chans = np.arange(lfp.shape[1]) if channels is None else np.asarray(channels, dtype=np.int64)
    if chans.size == 0 or chans.min() < 0 or chans.max() >= lfp.shape[1]:
        raise ValueError(f"channels must index 0..{lfp.shape[1] - 1}, got {chans.tolist()[:10]}")
    start = onsets - lead_ms - runway_ms
    stop = onsets - lead_ms + horizon_ms
    if n and (start.min() < 0 or stop.max() > lfp.shape[0]):
        bad = int(np.nonzero((start < 0) | (stop > lfp.shape[0]))[0][0])
        raise ValueError(
            f"trial {bad} (onset {onsets[bad]}) needs samples [{start[bad]}, {stop[bad]}) "
            f"outside the recording (0..{lfp.shape[0]})"
        )
    T = runway_ms + horizon_ms
    x = np.empty((n, T, chans.size), dtype=np.float32)
    steps = np.arange(T)[None, :]
    for i in range(0, n, 512):  # in chunks: never materialize all channels of all windows at once
        x[i : i + 512] = lfp[start[i : i + 512, None] + steps][:, :, chans]
    _check_finite(x, "the windowed LFP")
    return TrialSet(
        x=x, runway_len=runway_ms, lead=lead_ms, ipi_ms=ipi, stimulated=stim, trial_index=np.arange(n), channels=chans
    )


def from_session(
    session,
    *,
    runway_ms: int = RUNWAY_MS,
    lead_ms: int = LEAD_MS,
    horizon_ms: int = HORIZON_MS,
    usable_only: bool = True,
    stimulated_only: bool = True,
) -> TrialSet:
    """Window a simulated :class:`~neuro_opt.tbfm.simulator.LFPSession` (usable channels, stimulated trials)."""
    chans = np.nonzero(session.usable)[0] if usable_only else np.arange(session.n_channels)
    ts = window_trials(
        session.lfp,
        session.onsets,
        session.ipi_ms,
        runway_ms=runway_ms,
        lead_ms=lead_ms,
        horizon_ms=horizon_ms,
        fs=session.fs,
        channels=chans,
        stimulated=session.stimulated,
    )
    if stimulated_only:
        ts = ts.subset(np.nonzero(ts.stimulated)[0])
    return ts


def crop(ts: TrialSet, runway: int | None = None, horizon: int | None = None) -> TrialSet:
    """Shorten the runway (keep its last ``runway`` samples) and/or the horizon (keep its first ``horizon``).

    Raises if either is longer than the trial provides.
    """
    r = ts.runway_len if runway is None else int(runway)
    h = ts.horizon if horizon is None else int(horizon)
    if not 1 <= r <= ts.runway_len:
        raise ValueError(f"runway {r} is longer than the trials' runway ({ts.runway_len}) or < 1")
    if not 1 <= h <= ts.horizon:
        raise ValueError(f"horizon {h} is longer than the trials' horizon ({ts.horizon}) or < 1")
    x = ts.x[:, ts.runway_len - r : ts.runway_len + h]
    return replace(ts, x=np.ascontiguousarray(x), runway_len=r)


def time_ordered_split(
    ts: TrialSet, n_train: int, *, n_test: int | None = None, val_fraction: float = 0.1
) -> tuple[TrialSet, TrialSet, TrialSet]:
    """Split by position in the session: early trials train, late trials test.

    The first ``n_train`` trials are split into training (the first
    ``1 - val_fraction``) and validation (the rest, for early stopping); the
    test set is the last ``n_test`` trials (default: every trial after the
    first ``n_train``).

    Returns:
        ``(train, val, test)``.
    """
    n = ts.n_trials
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_test = n - n_train if n_test is None else int(n_test)
    if n_train < 2 or n_test < 1 or n_train + n_test > n:
        raise ValueError(
            f"need n_train >= 2, n_test >= 1 and n_train + n_test <= {n} trials; got n_train={n_train}, n_test={n_test}"
        )
    n_val = max(1, int(round(val_fraction * n_train)))
    if n_val >= n_train:
        raise ValueError(f"val_fraction={val_fraction} leaves no training trials out of {n_train}")
    order = np.argsort(ts.trial_index, kind="stable")
    return (
        ts.subset(order[: n_train - n_val]),
        ts.subset(order[n_train - n_val : n_train]),
        ts.subset(order[n - n_test :]),
    )


def zscore_stats(ts: TrialSet) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (``channels`` each, float32) over the training trials and time."""
    n = ts.n_trials * ts.x.shape[1]
    if n == 0:
        raise ValueError("no trials to compute z-scoring statistics from")
    s1 = np.zeros(ts.n_channels)
    for i in range(0, ts.n_trials, 1024):
        s1 += ts.x[i : i + 1024].sum(axis=(0, 1), dtype=np.float64)
    mean = s1 / n
    s2 = np.zeros(ts.n_channels)
    for i in range(0, ts.n_trials, 1024):
        s2 += ((ts.x[i : i + 1024].astype(np.float64) - mean) ** 2).sum(axis=(0, 1))
    std = np.sqrt(s2 / n)
    flat = np.nonzero(std < 1e-8)[0]
    if flat.size:
        raise ValueError(
            f"channel(s) {ts.channels[flat].tolist()} are flat (std ~ 0): drop unusable channels before fitting"
        )
    return mean.astype(np.float32), std.astype(np.float32)
