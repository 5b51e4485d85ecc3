"""Spinal-stimulation generators.

- :func:`synthetic_spinal`: NeuroMOSAICS Dataset 2 in shape: an 8 x 8 epidural
  array (4 unused corners, 60 electrodes), 10 bilateral forelimb muscles,
  strong lateralization, broad hotspots, repeatable responses with flagged
  outliers, excitability drift within the session and one electrode that loses
  contact halfway through it.
- :func:`spinal_locomotion4d`: the 4-D locomotion space of Cell Reports
  Medicine Fig. 7 (2 sites x 6 durations x 8 frequencies x 7 timings = 672),
  where amplitude and charge caps lower the allowed amplitude.
"""

from __future__ import annotations

import numpy as np

from neuro_opt.datasets.base import Dataset, Problem
from neuro_opt.space import SearchSpace

# Right then left: Triceps, Biceps, Torso (dorso), Wrist flexor, Spinal deltoid.
SPINAL_MUSCLES = ("R_Tr", "R_Bi", "R_Trs", "R_WrFlex", "R_SpDel", "L_Tr", "L_Bi", "L_Trs", "L_WrFlex", "L_SpDel")
# Rostro-caudal centre of each muscle's motor pool on the array (0 = rostral, 7 = caudal).
_POOL_Y = {"SpDel": 1.0, "Trs": 2.0, "Bi": 3.0, "Tr": 5.0, "WrFlex": 6.0}


def spinal_space() -> SearchSpace:
    """8 x 8 epidural grid minus its 4 corners (60 electrodes); ``x`` is medio-lateral
    (1-4 left of the midline, 5-8 right), ``y`` rostro-caudal."""
    mask = np.ones((8, 8), dtype=bool)
    mask[0, 0] = mask[0, -1] = mask[-1, 0] = mask[-1, -1] = False
    return SearchSpace({"x": range(1, 9), "y": range(1, 9)}, mask=mask)


def muscle_side(name: str) -> str:
    """``"right"`` or ``"left"`` from a muscle name's ``R``/``L`` prefix."""
    head = name.strip().replace("_", " ").split(" ")[0].lower()
    if head in ("r", "right"):
        return "right"
    if head in ("l", "left"):
        return "left"
    raise ValueError(f"muscle {name!r} has no side prefix (R_/L_)")


def _n_reps(n_repetitions, rng, n):
    if isinstance(n_repetitions, (int, np.integer)):
        if n_repetitions < 2:
            raise ValueError(f"n_repetitions must be >= 2, got {n_repetitions}")
        return np.full(n, int(n_repetitions))
    lo, hi = (int(v) for v in n_repetitions)
    if not 2 <= lo <= hi:
        raise ValueError(f"n_repetitions range must satisfy 2 <= lo <= hi, got {n_repetitions}")
    return rng.integers(lo, hi + 1, size=n)


def synthetic_spinal(
    n_subjects: int = 3,
    n_muscles: int = 10,
    seed: int = 0,
    n_repetitions=(10, 15),
    trial_cv: float = 0.12,
    outlier_rate: float = 0.03,
    drift: float = 0.25,
    contralateral: float = 0.15,
    name: str | None = None,
) -> Dataset:
    """Synthetic spinal maps shaped like NeuroMOSAICS Dataset 2.

    Per placement (subject) and muscle: one or two broad hotspots (2 to 3.5
    electrodes wide) on the muscle's side of the midline at its motor pool's
    rostro-caudal level, plus a weak mirror image (``contralateral``) on the
    other side. Repetitions are in recording order and show:

    - excitability drift: a session-wide gain ``1 + drift * sin(...)`` over
      the repetition index, and one electrode whose excitability rises and
      falls within a few repetitions (``meta["transient_point"]``);
    - a lost electrode: from repetition ``floor(R_p / 2)`` on, the electrode
      ``meta["lost_point"]`` responds at 5 % in every muscle;
    - outliers flagged invalid (``outlier_rate``); ground truth is the mean
      over the valid repetitions, as in the published means.

    Args:
        n_subjects: array placements (9 in 4 rats in the dataset).
        n_muscles: first ``n_muscles`` of :data:`SPINAL_MUSCLES` (R first, then L).
        n_repetitions: repetitions per electrode: an int, or ``[lo, hi]`` drawn
            per electrode (NaN padded to ``hi``).
        trial_cv: trial-to-trial coefficient of variation (sedated: small).

    Returns:
        a dataset keyed ``"spinal<s>/<muscle>"``; ``meta`` holds ``side``,
        ``lost_point``, ``lost_from_rep`` (``P``, per electrode),
        ``transient_point`` and ``gain`` (the session gain per repetition).
    """
    if not 1 <= n_muscles <= len(SPINAL_MUSCLES):
        raise ValueError(f"n_muscles must be 1..{len(SPINAL_MUSCLES)}, got {n_muscles}")
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    space = spinal_space()
    X = space.X
    P = space.n_points
    problems = []
    for s in range(n_subjects):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, s]))
        counts = _n_reps(n_repetitions, rng, P)
        R = int(counts.max())
        present = np.arange(R)[None, :] < counts[:, None]  # P x R
        tau = np.arange(R) / max(R - 1, 1)
        gain = 1.0 + drift * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * tau + rng.uniform(0, 1)))
        y_shift = rng.normal(0, 0.8)  # placement: the array sits more rostral or caudal
        scale = rng.uniform(3.0, 12.0)  # mV, a placement's overall excitability
        maps = []
        for m in range(n_muscles):
            muscle = SPINAL_MUSCLES[m]
            side = muscle_side(muscle)
            pool = _POOL_Y[muscle.split("_", 1)[1]]
            m_map = np.zeros(P)
            for k in range(int(rng.integers(1, 3))):
                cx = rng.uniform(5.0, 7.0) if side == "right" else rng.uniform(0.0, 2.0)
                cy = np.clip(pool + y_shift + rng.normal(0, 0.7), 0, 7)
                w = rng.uniform(2.0, 3.5, size=2) / 2
                a = 1.0 if k == 0 else rng.uniform(0.4, 0.8)
                bump = np.exp(-0.5 * (((X[:, 0] - cx) / w[0]) ** 2 + ((X[:, 1] - cy) / w[1]) ** 2))
                mirror = np.exp(-0.5 * (((X[:, 0] - (7 - cx)) / w[0]) ** 2 + ((X[:, 1] - cy) / w[1]) ** 2))
                m_map += a * (bump + contralateral * mirror)
            m_map *= rng.lognormal(0, 0.1, size=P)
            maps.append(scale * rng.uniform(0.3, 1.0) * m_map / m_map.max() + 0.02 * rng.random(P))
        total = np.sum(maps, axis=0)
        lost = int(rng.choice(np.argsort(total)[-P // 4 :]))  # a responsive electrode
        transient = int(rng.choice(np.setdiff1d(np.argsort(total)[-P // 3 :], [lost])))
        lost_from = counts // 2
        r_idx = np.arange(R)[None, :]
        contact = np.ones((P, R))
        contact[lost] = np.where(r_idx[0] >= lost_from[lost], 0.05, 1.0)
        center = rng.uniform(0.3, 0.7) * (counts[transient] - 1)
        boost = np.ones((P, R))
        boost[transient] = 1.0 + rng.uniform(0.8, 1.5) * np.exp(-0.5 * ((r_idx[0] - center) / 1.2) ** 2)
        for m in range(n_muscles):
            noise = rng.lognormal(-0.5 * trial_cv**2, trial_cv, size=(P, R))
            reps = maps[m][:, None] * gain[None, :] * contact * boost * noise
            outlier = (rng.random((P, R)) < outlier_rate) & present
            outlier[outlier.sum(1) >= counts - 1] = False  # keep at least two valid repetitions
            reps = np.where(outlier, reps * rng.choice([0.3, 1.8], size=(P, R)), reps)
            reps = np.where(present, reps, np.nan)
            valid = present & ~outlier
            truth = np.where(valid, reps, 0.0).sum(1) / valid.sum(1)
            muscle = SPINAL_MUSCLES[m]
            problems.append(
                Problem(
                    key=f"spinal{s + 1}/{muscle}",
                    space=space,
                    truth=truth,
                    repetitions=reps,
                    valid=valid,
                    meta={
                        "generator": "synthetic_spinal",
                        "seed": seed,
                        "units": "mV",
                        "side": muscle_side(muscle),
                        "lost_point": lost,
                        "lost_from_rep": lost_from.tolist(),
                        "transient_point": transient,
                        "gain": gain.tolist(),
                    },
                )
            )
    return Dataset(name or "synthetic_spinal", problems, meta={"seed": seed, "default_response": "repetition_valid"})


# ----------------------------------------------------------------------------- Fig. 7


SITES = ("lumbar", "sacral")
DURATIONS_MS = (20, 40, 60, 80, 100, 120)
FREQUENCIES_HZ = (20, 40, 60, 80, 150, 220, 330, 500)
TIMINGS_MS = (140, 170, 200, 230, 260, 290, 320)


def locomotion_space() -> SearchSpace:
    """site x duration x frequency x timing = 2 x 6 x 8 x 7 = 672 points."""
    return SearchSpace({"site": SITES, "duration": DURATIONS_MS, "frequency": FREQUENCIES_HZ, "timing": TIMINGS_MS})


def allowed_amplitude(
    duration_ms, frequency_hz, amplitude_cap_ua: float, charge_cap_nc: float, pulse_width_us: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Amplitude allowed by the caps, the pulse count and the train's charge.

    A train of ``n = ceil(duration * frequency)`` pulses may use amplitude
    ``min(amplitude_cap, charge_cap / (n * pulse_width))``: the amplitude cap
    binds for short, slow trains, the charge cap (per phase, over the train)
    for long or fast ones.

    Returns:
        ``(amplitude_ua, n_pulses, charge_nc)``, each shaped like the inputs.
    """
    d = np.asarray(duration_ms, dtype=np.float64)
    f = np.asarray(frequency_hz, dtype=np.float64)
    n = np.maximum(1, np.ceil(d * f / 1000.0 - 1e-9))
    amp = np.minimum(amplitude_cap_ua, charge_cap_nc * 1000.0 / (n * pulse_width_us))
    charge = amp * pulse_width_us * n / 1000.0  # uA * us = pC -> nC
    return amp, n, charge


def spinal_locomotion4d(
    n_subjects: int = 4,
    seed: int = 0,
    amplitude_cap_ua: float = 300.0,
    charge_cap_nc: float = 600.0,
    pulse_width_us: float = 200.0,
    name: str | None = None,
) -> Dataset:
    """Step height (cm) over the 4-D spinal locomotion space of Fig. 7.

    step height = dragging baseline + gain x site x timing x recruitment(A) x
    summation(n), where A is the cap-limited amplitude
    (:func:`allowed_amplitude`), recruitment a sigmoid of A, and summation
    ``1 - exp(-n / n0)`` of the pulse count. Efficacy grows with frequency and
    duration until the charge cap lowers the amplitude: the optimum sits at the
    notch the caps define. Lumbar beats sacral; timing peaks around foot lift
    and early swing (190-240 ms). Subjects differ in every parameter.

    Args:
        n_subjects: virtual rats (4 in Fig. 7).
        amplitude_cap_ua: amplitude cap (uA).
        charge_cap_nc: cap on the charge per phase summed over the train (nC).
        pulse_width_us: pulse width per phase (200 us as published).

    Returns:
        a dataset of 672-point problems keyed ``"loco<s>/step_height"``; each
        ``meta`` holds ``amplitude_ua``, ``n_pulses`` and ``charge_nc`` (``P``
        lists) and the caps.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    if min(amplitude_cap_ua, charge_cap_nc, pulse_width_us) <= 0:
        raise ValueError("amplitude_cap_ua, charge_cap_nc and pulse_width_us must be > 0")
    space = locomotion_space()
    ix = space.index
    d = np.asarray(DURATIONS_MS, float)[ix[:, 1]]
    f = np.asarray(FREQUENCIES_HZ, float)[ix[:, 2]]
    t = np.asarray(TIMINGS_MS, float)[ix[:, 3]]
    amp, n, charge = allowed_amplitude(d, f, amplitude_cap_ua, charge_cap_nc, pulse_width_us)
    problems = []
    for s in range(n_subjects):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7, s]))
        a50 = amplitude_cap_ua * rng.uniform(0.35, 0.55)
        slope = amplitude_cap_ua * rng.uniform(0.08, 0.14)
        n0 = rng.uniform(3.0, 6.0)
        recruit = 1.0 / (1.0 + np.exp(-(amp - a50) / slope))
        summation = 1.0 - np.exp(-n / n0)
        site = np.where(ix[:, 0] == 0, 1.0, rng.uniform(0.4, 0.7))
        timing = np.exp(-0.5 * ((t - rng.uniform(190, 240)) / rng.uniform(40, 70)) ** 2)
        height = rng.uniform(0.3, 0.7) + rng.uniform(1.5, 2.5) * site * timing * recruit * summation
        problems.append(
            Problem(
                key=f"loco{s + 1}/step_height",
                space=space,
                truth=height,
                meta={
                    "generator": "spinal_locomotion4d",
                    "seed": seed,
                    "units": "cm",
                    "amplitude_ua": amp.tolist(),
                    "n_pulses": n.astype(int).tolist(),
                    "charge_nc": charge.tolist(),
                    "amplitude_cap_ua": amplitude_cap_ua,
                    "charge_cap_nc": charge_cap_nc,
                    "pulse_width_us": pulse_width_us,
                },
            )
        )
    return Dataset(name or "spinal4d", problems, meta={"seed": seed, "default_response": "gaussian"})


__all__ = [
    "SPINAL_MUSCLES",
    "spinal_space",
    "muscle_side",
    "synthetic_spinal",
    "locomotion_space",
    "allowed_amplitude",
    "spinal_locomotion4d",
]
