"""Synthetic two-electrode dataset: spatiotemporal patterns on a 2 x 5 cortical subgrid.

After the hierarchical GP-BO paper (seed 003): five EMGs, a 2 x 5 channel subgrid of an
intracortical array, single-electrode responses per channel, and responses to every
ordered channel pair (c1, c2) and inter-event delay in {0, 10, 20, 40, 60, 80, 100} ms,
10 trials per pattern. Responses are rectified EMG envelopes in volts (peaks of 0.01 to
0.03 V, as recorded) on a 2 ms grid over the 200 ms after the first event.

How a pattern's response is built (all random choices derive from ``seed``):

* single events: muscle ``m`` answers channel ``c`` with a bump ``A_m(c) g(t - L_m(c))``:
  ``A_m`` a clustered hotspot map with electrode-level granularity, ``L_m`` a latency of
  about 12 to 20 ms, ``g`` a smooth envelope (gamma-shaped, peak 14 ms after onset, about
  25 ms wide, the length of a 40 ms train's response);
* pairs: the second event's drive is multiplied by a gain ``G_m(c1, c2, dt)``, the
  product of an *occlusion* term (the two channels share neurons: strong for nearby
  channels and short delays, complete refractoriness for the same channel at 0 ms) and
  a *facilitation* term (sparse channel-to-channel connections, each with its own
  preferred delay, 30 to 80 ms, and muscle selectivity; a facilitated response also
  comes up to ``advance_ms`` sooner), and the summed drive of both events saturates per
  muscle (``U tanh(v / U)``: motor-pool occlusion). None of this is predictable from the
  single-electrode responses;
* trials: every event's amplitude jitters (log-normal, ``trial_cv``) and its latency
  (``latency_jitter_ms``), plus white noise on the envelope (``baseline_noise`` V).

* subjects: a subject is redrawn until its best pattern beats the runner-up by
  ``min_margin`` (the paper's best pattern stood out, 0.041 V against about 0.030 V).

The objective is the paper's two-muscle synergy with a target delay: the peak over
``t`` in the first ``window_ms`` of ``r_a(t) + r_b(t + target_delay_ms)``, with
``(a, b) = synergy`` (EMG0 then EMG4, 40 ms apart). The paper's formula did not survive
in the text we have ("the maximum amplitude of combined EMG responses, incorporating the
desired delay"); this is that sentence written out. Each problem is a regular
:class:`Problem` over the pair space (``x1, y1, x2, y2, delay_ms`` restricted to
``search_delays_ms``: 100 pairs x 3 delays = 300 patterns by default): ``truth`` is the
mean objective over the trials and ``repetitions`` the per-trial objectives, so every
standard algorithm runs on it with ``response_mode="repetition_all"``. The single-event
data that a hierarchical search uses in its first stage ride along on
:class:`TwoElectrodeProblem`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, cast

import numpy as np

from neuro_opt.datasets.base import Dataset, Problem
from neuro_opt.space import SearchSpace

MUSCLES = ("EMG0", "EMG1", "EMG2", "EMG3", "EMG4")
ALL_DELAYS_MS = (0, 10, 20, 40, 60, 80, 100)
GRID_X = (0, 1)
GRID_Y = (0, 1, 2, 3, 4)
DT_MS = 2.0
DURATION_MS = 200.0


def pattern_space(
    n_events: int, xs: Sequence = GRID_X, ys: Sequence = GRID_Y, delays_ms: Sequence = (20, 40, 60)
) -> SearchSpace:
    """The space of ``n_events``-event patterns ``s_k = (c_1 .. c_k, dt_1 .. dt_{k-1})``.

    Dimensions, in order: ``x1, y1, .., xk, yk`` (channel coordinates, spatial) then the
    ``k - 1`` inter-event delays in ms (``delay_ms`` for two events, ``delay1_ms`` ..
    for more). ``n_events=1`` is the channel grid itself (``x1, y1``). Points are
    numbered in C order, so for two events on a ``C``-channel grid with ``D`` delays
    the point of ``(c1, c2, d)`` is ``(c1 * C + c2) * D + d`` (channels numbered
    ``x * len(ys) + y``).
    """
    if n_events < 1:
        raise ValueError(f"a pattern has at least one event, got n_events={n_events}")
    dims: dict = {}
    for i in range(1, n_events + 1):
        dims[f"x{i}"] = tuple(xs)
        dims[f"y{i}"] = tuple(ys)
    if n_events == 2:
        dims["delay_ms"] = tuple(delays_ms)
    else:
        for i in range(1, n_events):
            dims[f"delay{i}_ms"] = tuple(delays_ms)
    return SearchSpace(dims)


@dataclass(frozen=True)
class SynergyObjective:
    """``C(r) = max_{t <= window} r_a(t) + r_b(t + delay)``: muscle ``a`` then ``b``, ``delay`` ms apart.

    Args (fields): ``first``, ``second`` muscle indices; ``delay_ms``; ``window_ms`` after
    the first event in which the first muscle's peak must fall.
    """

    first: int = 0
    second: int = 4
    delay_ms: float = 40.0
    window_ms: float = 150.0

    def __call__(self, r: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        """``r``: ``... x M x T`` envelopes on the grid ``t_ms`` (``T``). Returns ``...``."""
        shift = int(round(self.delay_ms / DT_MS))
        n = int(np.searchsorted(t_ms, self.window_ms, side="right"))
        if n + shift > r.shape[-1]:
            raise ValueError(
                f"objective needs {self.window_ms + self.delay_ms} ms of response, have {t_ms[-1] + DT_MS} ms"
            )
        a = r[..., self.first, :n]
        b = r[..., self.second, shift : shift + n]
        return (a + b).max(axis=-1)


@dataclass(eq=False)
class TwoElectrodeProblem(Problem):
    """A two-electrode problem: the pair space with its objective, plus the single-event data.

    Extra attributes (``C`` channels, ``M`` muscles, ``R`` trials, ``Da`` recorded delays,
    ``T`` time bins):
        channels: the channel grid (``pattern_space(1)``: ``x1, y1``).
        muscles: muscle names; ``synergy``: indices of the objective's two muscles.
        objective: the :class:`SynergyObjective`.
        single_peaks: ``C x R x M`` per-trial peak of each muscle, single events.
        single_objective: ``C x R`` objective of single events, per trial.
        single_mean: ``C x M x T`` mean envelope of single events.
        pair_mean: ``C x C x Da x M x T`` mean envelope of pairs at every recorded delay.
        pair_objective_all: ``C x C x Da x R`` per-trial objective at every recorded delay.
        recorded_delays_ms: the ``Da`` recorded delays; ``t_ms``: the ``T`` time bins.
        gain: ``M x C x C x Da`` the interaction gain on the second event's drive
            (occlusion x facilitation), the generator's ground truth.
    """

    channels: SearchSpace | None = None
    muscles: tuple = MUSCLES
    synergy: tuple = (0, 4)
    objective: SynergyObjective = field(default_factory=SynergyObjective)
    single_peaks: np.ndarray | None = None
    single_objective: np.ndarray | None = None
    single_mean: np.ndarray | None = None
    pair_mean: np.ndarray | None = None
    pair_objective_all: np.ndarray | None = None
    recorded_delays_ms: tuple = ALL_DELAYS_MS
    t_ms: np.ndarray | None = None
    gain: np.ndarray | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.channels is None or self.single_peaks is None:
            raise ValueError(f"problem {self.key!r}: a two-electrode problem needs channels and single_peaks")
        C, M = self.channels.n_points, len(self.muscles)
        if self.single_peaks.ndim != 3 or self.single_peaks.shape[0] != C or self.single_peaks.shape[2] != M:
            raise ValueError(
                f"problem {self.key!r}: single_peaks has shape {self.single_peaks.shape}, expected ({C}, n_trials, {M})"
            )
        if self.space.n_points != C * C * len(self.space.dims[-1]):
            raise ValueError(
                f"problem {self.key!r}: pair space of {self.space.n_points} points does not match {C} channels"
            )

    @property
    def n_events(self) -> int:
        return 2

    def pattern_space(self, n_events: int) -> SearchSpace:
        """The space of stage ``n_events`` (1: the channels, 2: the problem's pair space)."""
        if n_events == 1:
            assert self.channels is not None  # checked in __post_init__
            return self.channels
        if n_events == 2:
            return self.space
        raise ValueError(f"problem {self.key!r} holds patterns of 1 and 2 events, not {n_events}")

    def sample(
        self, n_events: np.ndarray, points: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """One recorded trial, drawn uniformly, of each pattern.

        Args:
            n_events: ``b`` events per pattern (1 or 2); points: ``b`` point indices in
                the space of that many events.
        Returns:
            ``objective`` (``b``) and ``peaks`` (``b x M``; NaN for pairs: a pair's
            per-muscle peaks are not used by any stage).
        """
        assert self.single_peaks is not None  # checked in __post_init__
        n_events = np.asarray(n_events, dtype=np.int64)
        points = np.asarray(points, dtype=np.int64)
        b: int = points.shape[0]
        R = self.single_peaks.shape[1]
        trial = rng.integers(0, R, size=b)
        objective = np.empty(b)
        peaks = np.full((b, len(self.muscles)), np.nan)
        one = n_events == 1
        if np.any(~np.isin(n_events, (1, 2))):
            raise ValueError(f"problem {self.key!r}: patterns have 1 or 2 events, got {sorted(set(n_events.tolist()))}")
        if one.any():
            # casts: the generator sets single_objective and repetitions (not checked, as before)
            objective[one] = cast(np.ndarray, self.single_objective)[points[one], trial[one]]
            peaks[one] = self.single_peaks[points[one], trial[one]]
        two = ~one
        if two.any():
            reps = cast(np.ndarray, self.repetitions)
            objective[two] = reps[points[two], trial[two] % reps.shape[1]]
        return objective, peaks

    def single_truth(self) -> np.ndarray:
        """``C x M`` mean single-event peak per muscle."""
        assert self.single_peaks is not None  # checked in __post_init__
        return self.single_peaks.mean(axis=1)


def _envelope(u: np.ndarray, peak_ms: float = 14.0, shape: float = 2.5) -> np.ndarray:
    """Gamma-shaped envelope with peak 1 at ``u = peak_ms``, 0 for ``u <= 0``."""
    v = np.clip(u, 0.0, None) / peak_ms
    return np.where(u > 0, v**shape * np.exp(shape * (1.0 - v)), 0.0)


def _muscle_map(coords: np.ndarray, rng: np.random.Generator, granularity: float) -> np.ndarray:
    """One muscle's single-event amplitude map over the channels, max 1."""
    lo, hi = coords.min(0), coords.max(0)
    center = rng.uniform(lo - 0.3, hi + 0.3)
    width = rng.uniform(0.8, 1.8)
    m = np.exp(-0.5 * np.sum((coords - center) ** 2, axis=1) / width**2)
    m = m * rng.lognormal(0.0, granularity, size=len(coords)) + 0.05 * rng.random(len(coords))
    return m / m.max()


def _subject(
    rng: np.random.Generator,
    s: int,
    seed: int,
    n_trials: int,
    trial_cv: float,
    latency_jitter_ms: float,
    baseline_noise: float,
    facilitation: float,
    connection_rate: float,
    occlusion: float,
    granularity: float,
    advance_ms: float,
    saturation: float,
    objective: SynergyObjective,
    search_delays_ms: tuple,
    name: str,
) -> TwoElectrodeProblem:
    """One virtual subject, every random choice drawn from ``rng``."""
    channels = pattern_space(1)
    coords = channels.X  # C x 2
    C, M = channels.n_points, len(MUSCLES)
    delays = np.asarray(ALL_DELAYS_MS, dtype=np.float64)
    Da = len(delays)
    t = np.arange(0.0, DURATION_MS, DT_MS)

    # single-event responses: amplitude maps (V) and latencies (ms)
    amp_scale = rng.uniform(0.012, 0.026, size=M)
    A = np.stack([amp_scale[m] * _muscle_map(coords, rng, granularity) for m in range(M)])  # M x C
    L = rng.uniform(12.0, 18.0, size=(M, 1)) + rng.normal(0.0, 1.5, size=(M, C))  # M x C
    U = saturation * A.max(axis=1)  # M: saturation level of each motor pool

    # interactions on the second event's drive, M x C x C x Da
    dist2 = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)  # C x C
    omega = occlusion * rng.uniform(0.7, 1.0)
    occl = 1.0 - omega * np.exp(-0.5 * dist2)[..., None] * np.exp(-delays / 20.0)  # C x C x Da
    conn = (rng.random((C, C)) < connection_rate) * rng.lognormal(np.log(facilitation), 0.6, size=(C, C))
    pref = rng.uniform(30.0, 80.0, size=(C, C))
    tuning = np.exp(-0.5 * ((delays[None, None, :] - pref[..., None]) / 12.0) ** 2)  # C x C x Da
    select = rng.uniform(0.2, 1.2, size=(M, 1, C))  # which muscles a facilitated target channel recruits
    fac = conn[None, :, :, None] * select[..., None] * tuning[None]  # M x C x C x Da
    gain = occl[None] * (1.0 + fac)  # M x C x C x Da
    # a primed circuit answers the second event sooner: up to `advance_ms` earlier at full facilitation
    advance = advance_ms * rng.uniform(0.5, 1.0, size=(C, C))[None, :, :, None] * fac / (1.0 + fac)

    def trials(n):  # per-trial amplitude and latency jitter of one event
        return rng.lognormal(-0.5 * trial_cv**2, trial_cv, size=n), rng.normal(0.0, latency_jitter_ms, size=n)

    # single events: C x R x M x T
    ja, jl = trials((C, n_trials, M))
    drive1 = (A.T[:, None, :, None] * ja[..., None]) * _envelope(t - (L.T[:, None, :] + jl)[..., None])
    single = U[None, None, :, None] * np.tanh(drive1 / U[None, None, :, None])
    single = np.clip(single + rng.normal(0.0, baseline_noise, size=single.shape), 0.0, None)

    # pairs: C x C x Da x R x M x T, built per first channel to bound memory
    pair_mean = np.empty((C, C, Da, M, len(t)), dtype=np.float32)
    pair_obj = np.empty((C, C, Da, n_trials))
    for c1 in range(C):
        j1a, j1l = trials((C, Da, n_trials, M))
        j2a, j2l = trials((C, Da, n_trials, M))
        first = (A[:, c1] * j1a)[..., None] * _envelope(t - (L[:, c1] + j1l)[..., None])
        g = np.moveaxis(gain[:, c1], 0, -1)[:, :, None, :]  # C x Da x 1 x M
        adv = np.moveaxis(advance[:, c1], 0, -1)[:, :, None, :]  # C x Da x 1 x M
        onset = delays[None, :, None, None] + L.T[:, None, None, :] - adv + j2l  # C x Da x R x M
        second = (A.T[:, None, None, :] * g * j2a)[..., None] * _envelope(t - onset[..., None])
        r = U[:, None] * np.tanh((first + second) / U[:, None])
        r = np.clip(r + rng.normal(0.0, baseline_noise, size=r.shape), 0.0, None)
        pair_mean[c1] = r.mean(axis=2)
        pair_obj[c1] = objective(r, t)

    d_idx = [ALL_DELAYS_MS.index(d) for d in search_delays_ms]
    space = pattern_space(2, delays_ms=search_delays_ms)
    reps = pair_obj[:, :, d_idx, :].reshape(C * C * len(d_idx), n_trials)
    return TwoElectrodeProblem(
        key=f"{name}{s}/{MUSCLES[objective.first]}+{MUSCLES[objective.second]}@{objective.delay_ms:g}ms",
        space=space,
        truth=reps.mean(axis=1),
        repetitions=reps,
        meta={
            "units": "V",
            "source": "synthetic two-electrode generator",
            "seed": seed,
            "subject": s,
            "search_delays_ms": list(search_delays_ms),
        },
        channels=channels,
        muscles=MUSCLES,
        synergy=(objective.first, objective.second),
        objective=objective,
        single_peaks=single.max(axis=-1),
        single_objective=objective(single, t),
        single_mean=single.mean(axis=1).astype(np.float32),
        pair_mean=pair_mean,
        pair_objective_all=pair_obj,
        recorded_delays_ms=ALL_DELAYS_MS,
        t_ms=t,
        gain=gain,
    )


def two_electrode(
    n_subjects: int = 1,
    seed: int = 0,
    n_trials: int = 10,
    search_delays_ms: Sequence = (20, 40, 60),
    synergy: Sequence = ("EMG0", "EMG4"),
    target_delay_ms: float = 40.0,
    window_ms: float = 150.0,
    trial_cv: float = 0.04,
    latency_jitter_ms: float = 1.0,
    baseline_noise: float = 2e-4,
    facilitation: float = 1.0,
    connection_rate: float = 0.1,
    occlusion: float = 0.8,
    granularity: float = 0.6,
    advance_ms: float = 20.0,
    saturation: float = 3.0,
    min_margin: float = 1.1,
    name: str = "two_electrode",
) -> Dataset:
    """The synthetic two-electrode dataset: one problem per virtual subject.

    Args:
        n_subjects: virtual subjects (independent maps and interactions), keys ``sim0/...``.
        seed: everything derives from it.
        n_trials: recorded trials per pattern (10 in the paper).
        search_delays_ms: the delays of the search space (a subset of 0, 10, 20, 40, 60,
            80, 100; the paper searched 20, 40, 60).
        synergy: the objective's two muscles, first then second.
        target_delay_ms: delay between the two muscles' peaks (multiple of 2 ms).
        window_ms: the first muscle's peak must fall this soon after the first event.
        trial_cv: trial-to-trial amplitude variability of each event.
        latency_jitter_ms: trial-to-trial latency jitter of each event.
        baseline_noise: std (V) of the white noise on the rectified envelope.
        facilitation: median strength of a facilitating connection (gain 1 + this at
            its preferred delay, times the muscle's selectivity).
        connection_rate: fraction of ordered channel pairs that facilitate.
        occlusion: strength of occlusion between nearby channels at short delays.
        granularity: electrode-level log-normal spread of the single-event maps.
        advance_ms: how much sooner a fully facilitated second event's response comes.
        saturation: each muscle's saturation level, in multiples of its largest single response.
        min_margin: a subject is redrawn (from the next seed of its stream) until its best
            pattern's mean objective is at least this multiple of the runner-up's, as in the
            paper's data (0.041 V against about 0.030 V): "accuracy", finding *the* best
            pattern, is only a measure of success when one stands out. 0 keeps the first draw.
            ``meta["draws"]`` and ``meta["margin"]`` record the outcome.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    search = tuple(int(d) if float(d).is_integer() else float(d) for d in search_delays_ms)
    bad = [d for d in search if d not in ALL_DELAYS_MS]
    if not search or bad or len(set(search)) != len(search):
        raise ValueError(
            f"search_delays_ms must be distinct values among {list(ALL_DELAYS_MS)}, got {list(search_delays_ms)}"
        )
    names = list(synergy)
    unknown = [m for m in names if m not in MUSCLES]
    if len(names) != 2 or unknown:
        raise ValueError(f"synergy must name two muscles among {list(MUSCLES)}, got {names}")
    if target_delay_ms < 0 or (target_delay_ms / DT_MS) % 1 != 0:
        raise ValueError(f"target_delay_ms must be a multiple of {DT_MS:g} ms >= 0, got {target_delay_ms}")
    if not 0 < window_ms <= DURATION_MS - target_delay_ms:
        raise ValueError(
            f"window_ms must be in (0, {DURATION_MS - target_delay_ms:g}] "
            f"(the recording is {DURATION_MS:g} ms), got {window_ms}"
        )
    for key, v in (
        ("trial_cv", trial_cv),
        ("latency_jitter_ms", latency_jitter_ms),
        ("baseline_noise", baseline_noise),
        ("facilitation", facilitation),
    ):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{key} must be >= 0, got {v!r}")
    if not 0 <= connection_rate <= 1 or not 0 <= occlusion <= 1:
        raise ValueError(f"connection_rate and occlusion must be in [0, 1], got {connection_rate}, {occlusion}")
    objective = SynergyObjective(
        MUSCLES.index(names[0]), MUSCLES.index(names[1]), float(target_delay_ms), float(window_ms)
    )
    if not 0 <= min_margin < 3:
        raise ValueError(f"min_margin must be in [0, 3), got {min_margin!r}")
    problems: list[Problem] = []
    for s in range(n_subjects):
        for attempt in range(1000):
            rng = np.random.default_rng(np.random.SeedSequence([seed, s, attempt]))
            p = _subject(
                rng,
                s,
                seed,
                n_trials,
                trial_cv,
                latency_jitter_ms,
                baseline_noise,
                facilitation,
                connection_rate,
                occlusion,
                granularity,
                advance_ms,
                saturation,
                objective,
                search,
                "sim",
            )
            top2 = np.sort(p.truth)[-2:]
            if top2[1] >= min_margin * top2[0]:
                p.meta["draws"] = attempt + 1
                p.meta["margin"] = float(top2[1] / top2[0])
                problems.append(p)
                break
        else:
            raise ValueError(
                f"two_electrode: no subject with the best pattern {min_margin}x the runner-up in 1000 "
                f"draws; lower min_margin"
            )
    return Dataset(name, problems, meta={"generator": "two_electrode", "seed": seed})
