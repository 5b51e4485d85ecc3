"""EMG processing as published: one evoked window -> one scalar response per muscle.

Pipeline per muscle (STAR Protocols; NeuroMOSAICS processing), on a window that
starts ``pre_ms`` before the stimulation onset:

1. scale buffer units to response units (``units_per_volt``: V -> mV by default);
2. blank the stimulation artefact: ``blank_ms`` after every pulse of the train is
   replaced by a straight line between its neighbours (0 disables);
3. high-pass ``highpass_hz`` (70 Hz), zero-phase Butterworth;
4. full-wave rectification;
5. low-pass ``envelope_hz`` (30 Hz), zero-phase: the envelope;
6. baseline = mean envelope over ``baseline_ms`` (the pre-stimulus window; the
   pre-stimulus samples are filtered on their own so that zero-phase filters do
   not ring the response back into the baseline);
7. response = peak envelope in ``response_ms`` minus the baseline.

A trial is invalid when the envelope shows activity before the stimulation
(peak over ``pre_activity_ms`` minus the baseline above ``pre_activity_max``:
the animal moved) or when the raw signal saturates (``saturation``). Invalid
trials are repeated up to a bound by the runner, or recorded as invalid.

Shapes: a window is ``muscles x samples`` (or ``samples`` for one muscle).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Mapping, Sequence

import numpy as np

PZ5_EMG_RATE = 6103.515625  # Hz, the PZ5 in EMG mode ("about 6 kHz")


@dataclass(frozen=True)
class EMGConfig:
    """Processing parameters; times in ms relative to the stimulation onset.

    Args:
        fs: sampling rate of the buffers (Hz).
        pre_ms: time from the window start to the stimulation onset.
        post_ms: time from the onset to the window end (window = pre + post).
        units_per_volt: multiply buffer values by this to get response units.
        highpass_hz: high-pass cut-off before rectification.
        envelope_hz: low-pass cut-off of the rectified signal.
        order: Butterworth order of both filters.
        blank_ms: artefact blanking after each pulse (0: none).
        baseline_ms: (start, end) of the baseline window, before onset.
        response_ms: (start, end) of the window where the peak is taken.
        pre_activity_ms: (start, end) window checked for spontaneous activity.
        pre_activity_max: envelope rise above baseline (response units) in the
            pre-activity window that flags the trial invalid.
        saturation: |raw| (buffer units) at or beyond which a trial is invalid
            (None: no check).
        artefact_min_snr: a pulse artefact counts as present (saline dry run)
            when the peak |raw| right after the pulses exceeds this many robust
            noise SDs of the pre-stimulus signal.
    """

    fs: float = PZ5_EMG_RATE
    pre_ms: float = 100.0
    post_ms: float = 200.0
    units_per_volt: float = 1000.0
    highpass_hz: float = 70.0
    envelope_hz: float = 30.0
    order: int = 4
    blank_ms: float = 1.0
    baseline_ms: tuple[float, float] = (-30.0, 0.0)
    response_ms: tuple[float, float] = (0.0, 50.0)
    pre_activity_ms: tuple[float, float] = (-90.0, -2.0)
    pre_activity_max: float = 0.05
    saturation: float | None = None
    artefact_min_snr: float = 8.0

    def __post_init__(self):
        for name in ("baseline_ms", "response_ms", "pre_activity_ms"):
            v = getattr(self, name)
            if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(_finite(x) for x in v) and v[0] < v[1]):
                raise ValueError(f"rig.emg.{name} must be [start, end] in ms with start < end, got {v!r}")
            object.__setattr__(self, name, (float(v[0]), float(v[1])))
            if v[0] < -self.pre_ms or v[1] > self.post_ms:
                raise ValueError(
                    f"rig.emg.{name} {list(v)} falls outside the window [-{self.pre_ms}, {self.post_ms}] ms"
                )
        if self.baseline_ms[1] > 0 or self.pre_activity_ms[1] > 0:
            raise ValueError("rig.emg.baseline_ms and pre_activity_ms must end at or before the onset (0 ms)")
        for name in (
            "fs",
            "pre_ms",
            "post_ms",
            "units_per_volt",
            "highpass_hz",
            "envelope_hz",
            "pre_activity_max",
            "artefact_min_snr",
        ):
            v = getattr(self, name)
            if not (_finite(v) and v > 0):
                raise ValueError(f"rig.emg.{name} must be a positive number, got {v!r}")
        if not (_finite(self.blank_ms) and self.blank_ms >= 0):
            raise ValueError(f"rig.emg.blank_ms must be >= 0, got {self.blank_ms!r}")
        nyq = self.fs / 2
        if not self.highpass_hz < nyq or not self.envelope_hz < nyq:
            raise ValueError(f"rig.emg filter cut-offs must be below Nyquist ({nyq} Hz)")
        if not (isinstance(self.order, int) and 1 <= self.order <= 8):
            raise ValueError(f"rig.emg.order must be an integer 1..8, got {self.order!r}")
        if self.saturation is not None and not (_finite(self.saturation) and self.saturation > 0):
            raise ValueError(f"rig.emg.saturation must be a positive number or null, got {self.saturation!r}")

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "EMGConfig":
        d = dict(d or {})
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"rig.emg: unknown key(s) {unknown}; allowed: {', '.join(names)}")
        for k in ("baseline_ms", "response_ms", "pre_activity_ms"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("baseline_ms", "response_ms", "pre_activity_ms"):
            d[k] = list(d[k])
        return d

    @property
    def onset(self) -> int:
        """Sample index of the stimulation onset."""
        return int(round(self.pre_ms * self.fs / 1000.0))

    @property
    def n_samples(self) -> int:
        """Samples in a window of ``pre_ms + post_ms``."""
        return int(round((self.pre_ms + self.post_ms) * self.fs / 1000.0))

    def times_ms(self, n: int | None = None) -> np.ndarray:
        """Time of each sample relative to the onset (ms), ``n`` samples."""
        n = self.n_samples if n is None else n
        return (np.arange(n) - self.onset) * 1000.0 / self.fs

    def _slice(self, window: tuple[float, float], n: int) -> slice:
        a = self.onset + int(math.ceil(window[0] * self.fs / 1000.0))
        b = self.onset + int(math.floor(window[1] * self.fs / 1000.0))
        a, b = max(a, 0), min(b, n)
        if b <= a:
            raise ValueError(f"EMG window {window} ms holds no sample of a {n}-sample buffer")
        return slice(a, b)


@dataclass(frozen=True)
class EMGFeature:
    """The processed response of one muscle to one stimulation (response units)."""

    value: float  # peak - baseline
    peak: float
    baseline: float
    peak_ms: float
    pre_activity: float  # max envelope rise above baseline before the onset
    artefact_snr: float  # peak |raw| after the pulses / robust pre-stimulus noise SD
    valid: bool
    reason: str  # "" when valid

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _sos(cfg: EMGConfig):
    from scipy import signal  # here, not at import: scipy.signal takes seconds, and the service never filters

    hp = signal.butter(cfg.order, cfg.highpass_hz, btype="highpass", fs=cfg.fs, output="sos")
    lp = signal.butter(cfg.order, cfg.envelope_hz, btype="lowpass", fs=cfg.fs, output="sos")
    return hp, lp


def blank(x: np.ndarray, cfg: EMGConfig, pulse_times_ms: Sequence[float]) -> np.ndarray:
    """``x`` (``... x n``) with ``blank_ms`` after each pulse replaced by a straight line."""
    x = np.array(x, dtype=np.float64, copy=True)
    if cfg.blank_ms <= 0 or len(pulse_times_ms) == 0:
        return x
    n = x.shape[-1]
    mask = np.zeros(n, dtype=bool)
    for t in pulse_times_ms:
        a = cfg.onset + int(math.floor(t * cfg.fs / 1000.0))
        b = cfg.onset + int(math.ceil((t + cfg.blank_ms) * cfg.fs / 1000.0)) + 1
        mask[max(a, 0) : max(min(b, n), 0)] = True
    if not mask.any() or mask.all():
        return x
    idx = np.arange(n)
    flat = x.reshape(-1, n)
    for row in flat:
        row[mask] = np.interp(idx[mask], idx[~mask], row[~mask])
    return flat.reshape(x.shape)


def envelope(window: np.ndarray, cfg: EMGConfig, pulse_times_ms: Sequence[float] = ()) -> np.ndarray:
    """The EMG envelope (``... x n``, response units) of raw buffer windows (``... x n``)."""
    x = np.asarray(window, dtype=np.float64) * cfg.units_per_volt
    x = blank(x, cfg, pulse_times_ms)
    from scipy import signal

    hp, lp = _sos(cfg)
    x = signal.sosfiltfilt(hp, x, axis=-1)
    return signal.sosfiltfilt(lp, np.abs(x), axis=-1)


def process(window: np.ndarray, cfg: EMGConfig, pulse_times_ms: Sequence[float] = ()) -> list[EMGFeature]:
    """Features of every muscle of one stimulation.

    Args:
        window: ``muscles x samples`` raw buffer values (or ``samples``).
        cfg: processing parameters.
        pulse_times_ms: pulse onsets of the train (blanking, artefact check).

    Returns:
        one :class:`EMGFeature` per muscle.

    Raises:
        ValueError: a window that is empty, not finite, or too short for the
            configured windows.
    """
    w = np.asarray(window, dtype=np.float64)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2 or w.shape[1] == 0:
        raise ValueError(f"EMG window must be muscles x samples, got shape {np.shape(window)}")
    if not np.all(np.isfinite(w)):
        bad = np.argwhere(~np.isfinite(w))[:5].tolist()
        raise ValueError(f"EMG window has NaN/inf at (muscle, sample) {bad}")
    n = w.shape[1]
    if n <= cfg.onset:
        raise ValueError(f"EMG window of {n} samples ends before the stimulation onset (sample {cfg.onset})")
    env = envelope(w, cfg, pulse_times_ms)
    # the pre-stimulus part is filtered on its own: zero-phase filters would otherwise
    # ring a large response back into the baseline
    env_pre = envelope(w[:, : cfg.onset], cfg, ())
    sb, sr, sp = (cfg._slice(cfg.baseline_ms, n), cfg._slice(cfg.response_ms, n), cfg._slice(cfg.pre_activity_ms, n))
    times = cfg.times_ms(n)
    # artefact: raw |x| right after the pulses against the robust pre-stimulus noise
    pre = w[:, : cfg.onset] if cfg.onset > 0 else w[:, :1]
    noise = 1.4826 * np.median(np.abs(pre - np.median(pre, axis=1, keepdims=True)), axis=1) + 1e-12
    art_idx = _pulse_samples(cfg, pulse_times_ms, n)
    art = np.abs(w[:, art_idx]).max(axis=1) if art_idx.size else np.zeros(w.shape[0])
    out = []
    for m in range(w.shape[0]):
        base = float(env_pre[m, sb].mean())
        k = int(np.argmax(env[m, sr]))
        peak = float(env[m, sr][k])
        pre_act = float(env_pre[m, sp].max() - base)
        reasons = []
        if pre_act > cfg.pre_activity_max:
            reasons.append(f"pre-stimulus activity {pre_act:.4g} > {cfg.pre_activity_max:.4g}")
        if cfg.saturation is not None and np.abs(w[m]).max() >= cfg.saturation:
            reasons.append(f"signal saturated (|x| >= {cfg.saturation})")
        out.append(
            EMGFeature(
                value=peak - base,
                peak=peak,
                baseline=base,
                peak_ms=float(times[sr][k]),
                pre_activity=pre_act,
                artefact_snr=float(art[m] / noise[m]),
                valid=not reasons,
                reason="; ".join(reasons),
            )
        )
    return out


def _pulse_samples(cfg: EMGConfig, pulse_times_ms: Sequence[float], n: int) -> np.ndarray:
    """Sample indices within 0.5 ms after each pulse onset."""
    idx = []
    for t in pulse_times_ms:
        a = cfg.onset + int(math.floor(t * cfg.fs / 1000.0))
        b = a + max(1, int(math.ceil(0.5 * cfg.fs / 1000.0)))
        idx.extend(i for i in range(a, b) if 0 <= i < n)
    return np.unique(np.asarray(idx, dtype=np.int64))
