"""Synthetic multi-channel LFP with state-dependent paired-pulse stimulation responses.

A stand-in for the optogenetic micro-ECoG sessions of the TBFM paper (not public).
One call to :func:`simulate_session` returns one continuous session at 1 kHz:

* **Background** (``samples x channels``): a spatial mixture of a few latent
  sources, each a sum of AR(1) processes with log-spaced time constants
  (10 to 400 ms, equal variance, so the spectrum falls roughly as 1/f) plus bursty
  theta (7 Hz) and beta (20 Hz) resonances, over the electrode grid with Gaussian
  footprints and a common component; each channel adds private AR(1) noise
  and white measurement noise. Background std is about 1 (arbitrary units).
* **Stimulation**: two sites (electrodes); each trial delivers pulse 1 at site A
  and pulse 2 at site B ``ipi_ms`` later (10, 30 or 100 ms). Every pulse evokes
  a trough followed by a slower rebound that spreads over the array with a
  Gaussian footprint and a propagation delay of ``delay_ms_per_electrode``.
* **State dependence** (real, exposed, testable): the response to a pulse
  depends on the state at the pulse, ``s = tanh(k b / sd)`` with ``b`` the
  slow (low-passed below ``state_cutoff_hz``) background at the stimulated site
  just before the pulse: the cortex's excitability.
  The state scales the amplitude by ``1 + state_gain * s`` and changes the
  shape (trough time constant and rebound size). ``state_gain=0`` and
  ``state_shape=0`` make the response state-agnostic.
* **Paired pulses**: the second pulse is depressed at 10 ms, facilitated at
  30 ms and independent at 100 ms (factors in :data:`PAIRED_PULSE_FACTOR`).
* **Plasticity drift**: the response gain and the A-to-B coupling grow slowly
  and linearly over the session (``drift`` = relative change by the end),
  so a model trained on early trials must generalize to late ones.
* **Unusable channels**: ``bad_fraction`` of the electrodes (never the
  stimulation sites) are either noisy (large white noise) or flat (near
  constant); ``usable`` marks the others. :func:`find_unusable_channels`
  recovers them from the data alone.

Everything is a deterministic function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
from scipy.signal import butter, lfilter

FS_HZ = 1000
IPI_CHOICES_MS = (10, 30, 100)
#: Relative amplitude of the second pulse, by inter-pulse interval (ms).
PAIRED_PULSE_FACTOR = {10: 0.6, 30: 1.3, 100: 1.0}


@dataclass
class LFPSession:
    """One simulated session.

    Attributes:
        lfp: ``samples x channels`` float32 recording (background + evoked).
        fs: sampling rate in Hz (1000: one sample per ms).
        onsets: ``trials`` int sample index of the first pulse of each trial.
        ipi_ms: ``trials`` int inter-pulse interval of each trial (ms).
        stimulated: ``trials`` bool, False for sham trials (no pulse delivered).
        stim_sites: ``2`` channel indices of site A (pulse 1) and site B (pulse 2).
        ch2xy: ``channels x 2`` grid coordinates (electrode spacings).
        usable: ``channels`` bool, False for unusable (noisy or flat) channels.
        state: ``trials x 2`` state at pulse 1 and pulse 2, in [-1, 1].
        gain: ``trials x 2`` amplitude factor of each pulse (state, paired
            pulse and plasticity combined; 0 for sham trials).
        plasticity: ``trials`` plasticity factor (1 at the start of the session).
        background: optional ``samples x channels`` float32 background alone.
        evoked: optional ``samples x channels`` float32 evoked response alone
            (``lfp = background + evoked`` on usable channels).
        meta: the generator's arguments.
    """

    lfp: np.ndarray
    fs: int
    onsets: np.ndarray
    ipi_ms: np.ndarray
    stimulated: np.ndarray
    stim_sites: np.ndarray
    ch2xy: np.ndarray
    usable: np.ndarray
    state: np.ndarray
    gain: np.ndarray
    plasticity: np.ndarray
    background: np.ndarray | None = None
    evoked: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_trials(self) -> int:
        return int(self.onsets.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.lfp.shape[1])


def electrode_grid(n_channels: int) -> np.ndarray:
    """Grid coordinates ``channels x 2`` of an array with ``n_channels`` electrodes.

    32 -> the 8 x 4 rat array; 96 -> 10 x 10 minus the corners (the NHP array);
    other counts fill a near-square grid row by row.
    """
    if n_channels < 2:
        raise ValueError(f"n_channels must be >= 2 (two stimulation sites), got {n_channels}")
    if n_channels == 32:
        xy = [(x, y) for y in range(4) for x in range(8)]
    elif n_channels == 96:
        corners = {(0, 0), (0, 9), (9, 0), (9, 9)}
        xy = [(x, y) for y in range(10) for x in range(10) if (x, y) not in corners]
    else:
        width = int(np.ceil(np.sqrt(n_channels)))
        xy = [(i % width, i // width) for i in range(n_channels)]
    return np.asarray(xy, dtype=float)


def _ar1(rng: np.random.Generator, n_series: int, n_samples: int, tau_ms: float) -> np.ndarray:
    """``n_series x n_samples`` stationary AR(1) with unit variance and time constant ``tau_ms``."""
    a = np.exp(-1.0 / tau_ms)
    noise = rng.standard_normal((n_series, n_samples)) * np.sqrt(1 - a * a)
    x0 = rng.standard_normal(n_series)
    out, _ = lfilter([1.0], [1.0, -a], noise, axis=1, zi=(a * x0)[:, None])
    return out


def _beta(rng: np.random.Generator, n_series: int, n_samples: int, freq_hz: float, radius: float) -> np.ndarray:
    """Bursty resonance: AR(2) with poles at ``radius * exp(+-2 pi i f / fs)``, unit variance."""
    theta = 2 * np.pi * freq_hz / FS_HZ
    a1, a2 = 2 * radius * np.cos(theta), -radius * radius
    burn = int(20 / (1 - radius))
    noise = rng.standard_normal((n_series, n_samples + burn))
    out = lfilter([1.0], [1.0, -a1, -a2], noise, axis=1)[:, burn:]
    return out / out.std(axis=1, keepdims=True)


def _kernel(tau: np.ndarray, t1: float, t2: float, rebound: float) -> np.ndarray:
    """Evoked waveform at lags ``tau`` (ms, >= 0): alpha-shaped trough at ``t1`` then rebound at ``t2``."""
    tau = np.maximum(tau, 0.0)
    trough = (tau / t1) * np.exp(1.0 - tau / t1)
    bounce = (tau / t2) * np.exp(1.0 - tau / t2)
    return -trough + rebound * bounce


def simulate_session(
    n_trials: int = 2000,
    n_channels: int = 32,
    ipi_ms: int | list[int] = 30,
    seed: int = 0,
    *,
    period_ms: int = 200,
    jitter_ms: int = 10,
    p_stim: float = 1.0,
    n_sources: int = 8,
    theta_weight: float = 0.7,
    beta_weight: float = 0.5,
    private_noise: float = 0.35,
    white_noise: float = 0.1,
    amplitude: float = 3.5,
    footprint: float = 2.2,
    delay_ms_per_electrode: float = 1.5,
    coupling: float = 0.35,
    state_gain: float = 0.9,
    state_shape: float = 0.5,
    state_sharpness: float = 1.5,
    state_cutoff_hz: float = 8.0,
    drift: float = 0.25,
    bad_fraction: float = 0.1,
    return_components: bool = False,
) -> LFPSession:
    """Simulate one continuous paired-pulse session.

    Args:
        n_trials: number of pulse pairs (trials), one every ``period_ms``.
        n_channels: electrodes (2 to 96 or more; 32 and 96 use the rat and NHP grids).
        ipi_ms: inter-pulse interval in ms (one of 10, 30, 100), or a list of
            them to draw from uniformly per trial (a mixed session).
        seed: everything derives from it.
        period_ms: time between the first pulses of consecutive trials.
        jitter_ms: uniform jitter added to each onset (0 .. jitter_ms).
        p_stim: probability that a trial delivers its pulses (else a sham trial).
        n_sources: latent background sources with spatial footprints.
        theta_weight: std of a theta (7 Hz) resonance relative to each 1/f source.
        beta_weight: std of a beta (20 Hz) resonance relative to each 1/f source.
        private_noise: std of per-channel AR(1) noise (tau 10 ms).
        white_noise: std of white measurement noise.
        amplitude: trough amplitude of a pulse at its site (background std ~ 1).
        footprint: spatial std of the evoked response (electrode spacings).
        delay_ms_per_electrode: propagation delay of the response over the array.
        coupling: A-to-B pathway strength at the start of the session
            (pulse 1 also evokes a delayed response around site B).
        state_gain: amplitude modulation by state, ``1 + state_gain * s``.
        state_shape: shape modulation by state (trough time constant and rebound).
        state_sharpness: slope of the state nonlinearity, ``s = tanh(state_sharpness * b / sd)``
            (large values make the cortex switch between low and high excitability).
        state_cutoff_hz: the state is the background at the stimulated site low-passed
            (2nd-order Butterworth, causal) below this frequency: slow excitability.
        drift: relative growth of response gain and A-to-B coupling by the end.
        bad_fraction: fraction of electrodes made unusable.
        return_components: also return ``background`` and ``evoked``.

    Returns:
        An :class:`LFPSession`.
    """
    # casts: np.isscalar is a TypeGuard, which narrows neither branch to int | list[int]
    ipis = [cast(int, ipi_ms)] if np.isscalar(ipi_ms) else list(cast(list[int], ipi_ms))
    for v in ipis:
        if int(v) not in PAIRED_PULSE_FACTOR:
            raise ValueError(f"ipi_ms must be one of {IPI_CHOICES_MS}, got {v}")
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if not 0.0 <= p_stim <= 1.0:
        raise ValueError(f"p_stim must be in [0, 1], got {p_stim}")
    if not 0.0 <= bad_fraction < 1.0:
        raise ValueError(f"bad_fraction must be in [0, 1), got {bad_fraction}")
    if period_ms < 60 + max(ipis):
        raise ValueError(f"period_ms={period_ms} is too short for ipi_ms={max(ipis)}")

    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    xy = electrode_grid(n_channels)
    C = n_channels

    # ---- trial timing ----
    lead_in = 400  # samples before the first onset (room for long runways)
    jit = rng.integers(0, jitter_ms + 1, size=n_trials) if jitter_ms > 0 else np.zeros(n_trials, int)
    onsets = lead_in + np.arange(n_trials) * period_ms + jit
    T = int(onsets[-1] + period_ms + 200)
    trial_ipi = np.asarray([int(v) for v in rng.choice(ipis, size=n_trials)], dtype=int)
    stimulated = rng.random(n_trials) < p_stim

    # ---- background: spatial mixture of 1/f-like sources ----
    taus = (10.0, 40.0, 120.0, 400.0)
    src = np.zeros((n_sources, T))
    for tau in taus:
        src += _ar1(rng, n_sources, T, tau)
    src /= np.sqrt(len(taus))
    src += theta_weight * _beta(rng, n_sources, T, freq_hz=7.0, radius=0.995)
    src += beta_weight * _beta(rng, n_sources, T, freq_hz=20.0, radius=0.985)
    src /= src.std(axis=1, keepdims=True)
    lo, hi = xy.min(0), xy.max(0)
    centers = rng.uniform(lo, hi, size=(n_sources, 2))
    widths = rng.uniform(1.5, 3.5, size=n_sources)
    d2 = ((xy[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    load = np.exp(-0.5 * d2 / widths**2) * rng.uniform(0.6, 1.2, size=n_sources)
    load[:, 0] = 0.5  # source 0 is common to all channels (a volume-conducted component)
    background = src.T @ load.T  # T x C
    background += private_noise * _ar1(rng, C, T, 10.0).T
    background /= background.std(axis=0, keepdims=True)
    background += white_noise * rng.standard_normal((T, C))

    # ---- stimulation sites: two electrodes 2 to 4 spacings apart, away from the edge ----
    interior = np.where(((xy > lo) & (xy < hi)).all(1))[0]
    if interior.size < 2:
        interior = np.arange(C)
    site_a = int(rng.choice(interior))
    dist_a = np.sqrt(((xy - xy[site_a]) ** 2).sum(1))
    cand = [c for c in interior if c != site_a and 2.0 <= dist_a[c] <= 4.0]
    if not cand:
        cand = [c for c in range(C) if c != site_a]
    site_b = int(rng.choice(cand))
    sites = np.array([site_a, site_b])

    # ---- state at each pulse: slow (causally low-passed, < state_cutoff_hz) background at the site ----
    bb, ba = butter(2, state_cutoff_hz / (FS_HZ / 2))
    slow = lfilter(bb, ba, background[:, sites], axis=0)
    slow_sd = slow.std(axis=0)

    def state_at(times: np.ndarray, site: int) -> np.ndarray:
        return np.tanh(state_sharpness * slow[times - 1, site] / slow_sd[site])

    t1 = onsets
    t2 = onsets + trial_ipi
    s1, s2 = state_at(t1, 0), state_at(t2, 1)
    plast = 1.0 + drift * np.arange(n_trials) / max(n_trials - 1, 1)
    ppf = np.array([PAIRED_PULSE_FACTOR[int(v)] for v in trial_ipi])
    g1 = amplitude * plast * (1.0 + state_gain * s1) * stimulated
    g2 = amplitude * plast * ppf * (1.0 + state_gain * s2) * stimulated

    # ---- evoked responses, added trial by trial over a 180 ms support ----
    support = np.arange(0, 180, dtype=float)
    dist = np.sqrt(((xy[:, None, :] - xy[sites][None, :, :]) ** 2).sum(-1))  # C x 2
    spatial = np.exp(-0.5 * (dist / footprint) ** 2) + 0.15  # far-field
    delays = delay_ms_per_electrode * dist  # C x 2
    evoked = np.zeros((T, C))
    pathway = coupling * (1.0 + 2.0 * drift * np.arange(n_trials) / max(n_trials - 1, 1))
    for n in np.nonzero(stimulated)[0]:
        for p, (t, s, g) in enumerate(((t1[n], s1[n], g1[n]), (t2[n], s2[n], g2[n]))):
            lag = support[:, None] - 2.0 - delays[None, :, p]  # 180 x C
            tau1 = 7.0 * (1.0 + state_shape * s)
            rebound = 0.45 * (1.0 - state_shape * s)
            evoked[t : t + support.size] += g * spatial[None, :, p] * _kernel(lag, tau1, 35.0, rebound)
            if p == 0:  # A-to-B pathway: a delayed, smaller response around site B
                lag_b = support[:, None] - 8.0 - delays[None, :, 1]
                evoked[t : t + support.size] += (g * pathway[n]) * spatial[None, :, 1] * _kernel(lag_b, 9.0, 40.0, 0.3)

    lfp = background + evoked

    # ---- unusable channels ----
    n_bad = int(round(bad_fraction * C))
    usable = np.ones(C, dtype=bool)
    if n_bad:
        bad = rng.choice(np.setdiff1d(np.arange(C), sites), size=n_bad, replace=False)
        usable[bad] = False
        for k, c in enumerate(bad):
            if k % 2 == 0:  # noisy: high impedance, mostly white noise
                lfp[:, c] = 4.0 * rng.standard_normal(T) + 0.3 * background[:, c]
            else:  # flat: broken contact, a constant offset with a trace of noise
                lfp[:, c] = rng.uniform(-2, 2) + 0.01 * rng.standard_normal(T)

    meta = dict(
        n_trials=n_trials,
        n_channels=n_channels,
        ipi_ms=ipis,
        seed=seed,
        period_ms=period_ms,
        jitter_ms=jitter_ms,
        p_stim=p_stim,
        amplitude=amplitude,
        state_gain=state_gain,
        state_shape=state_shape,
        drift=drift,
        bad_fraction=bad_fraction,
        units="a.u. (background std ~ 1)",
    )
    return LFPSession(
        lfp=lfp.astype(np.float32),
        fs=FS_HZ,
        onsets=onsets.astype(np.int64),
        ipi_ms=trial_ipi,
        stimulated=stimulated,
        stim_sites=sites,
        ch2xy=xy,
        usable=usable,
        state=np.stack([s1, s2], 1),
        gain=np.stack([g1, g2], 1),
        plasticity=plast,
        background=background.astype(np.float32) if return_components else None,
        evoked=evoked.astype(np.float32) if return_components else None,
        meta=meta,
    )


def find_unusable_channels(lfp: np.ndarray, *, z_thresh: float = 4.0, min_lag1_corr: float = 0.5) -> np.ndarray:
    """Flag unusable channels from the data alone (``channels`` bool, True = usable).

    A channel is unusable if it is nearly flat (robust z-score of its log std
    below ``-z_thresh``), much noisier than the others (above ``+z_thresh``),
    or mostly white noise (lag-1 autocorrelation below ``min_lag1_corr``;
    LFP at 1 kHz is strongly autocorrelated).

    Args:
        lfp: ``samples x channels`` recording.
    """
    lfp = np.asarray(lfp)
    if lfp.ndim != 2 or lfp.shape[0] < 3:
        raise ValueError(f"lfp must be samples x channels with >= 3 samples, got shape {lfp.shape}")
    if not np.isfinite(lfp).all():
        raise ValueError("lfp contains NaN or inf; clean or drop those samples first")
    x = lfp - lfp.mean(0)
    sd = x.std(0)
    logsd = np.log(np.maximum(sd, 1e-12))
    med = np.median(logsd)
    mad = np.median(np.abs(logsd - med)) * 1.4826 + 1e-6
    z = (logsd - med) / mad
    lag1 = (x[1:] * x[:-1]).mean(0) / np.maximum(sd**2, 1e-24)
    return (np.abs(z) < z_thresh) & (lag1 >= min_lag1_corr)
