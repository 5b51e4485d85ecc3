"""Synthetic cortical datasets shaped like NeuroMOSAICS Dataset 1.

Maps of EMG response over an intracortical array: a few spatially clustered
hotspots per muscle (Gaussian bumps one to two electrodes wide), multiplied by
electrode-level granularity (M1 maps are not smooth: a strong electrode can sit
beside a weak one), over a small baseline. Each point also gets recorded
repetitions with trial-to-trial variability, spontaneous-activity outliers
flagged invalid and rare artefacts that are not flagged; awake subjects are
noisier than sedated ones and may have dead array columns. Everything is a
deterministic function of the seed.
"""

from __future__ import annotations

import numpy as np

from neuro_opt.datasets.base import Dataset, Problem
from neuro_opt.space import SearchSpace

NHP_MUSCLES = ("FCR", "FCU", "ECR", "EDC", "FDS", "BIC", "TRI", "DEL", "APB", "ADM", "PL")
RAT_MUSCLES = ("TA", "EDL", "GM", "ST", "BF", "VL")


def array_space(kind: str) -> SearchSpace:
    """The electrode grid of a cortical array: ``nhp`` 10 x 10 minus 4 corners, ``rat`` 8 x 4."""
    if kind == "nhp":
        mask = np.ones((10, 10), dtype=bool)
        mask[0, 0] = mask[0, -1] = mask[-1, 0] = mask[-1, -1] = False
        return SearchSpace({"x": range(1, 11), "y": range(1, 11)}, mask=mask)
    if kind == "rat":
        return SearchSpace({"x": range(1, 9), "y": range(1, 5)})
    raise ValueError(f"unknown array kind {kind!r}; expected 'nhp' or 'rat'")


def cortical_map(
    space: SearchSpace,
    rng: np.random.Generator,
    n_hotspots: tuple[int, int] = (1, 3),
    width: tuple[float, float] = (0.7, 1.8),
    granularity: float = 0.45,
    baseline: float = 0.03,
) -> np.ndarray:
    """One muscle's ground-truth map (``P``), max normalized to 1.

    Args:
        n_hotspots: inclusive range of hotspot counts.
        width: range of hotspot widths (std, in electrode spacings).
        granularity: std of the electrode-level log-normal factor.
        baseline: response floor as a fraction of the maximum.
    """
    X = space.X
    lo, hi = X.min(axis=0), X.max(axis=0)
    k = int(rng.integers(n_hotspots[0], n_hotspots[1] + 1))
    # hotspots cluster: later ones fall near the first
    first = rng.uniform(lo, hi)
    centers = [first] + [np.clip(first + rng.normal(0, 2.0, size=X.shape[1]), lo, hi) for _ in range(k - 1)]
    amps = np.concatenate([[1.0], rng.uniform(0.35, 0.9, size=k - 1)])
    m = np.zeros(space.n_points)
    for c, a in zip(centers, amps):
        w = rng.uniform(*width, size=X.shape[1])
        m += a * np.exp(-0.5 * np.sum(((X - c) / w) ** 2, axis=1))
    m *= rng.lognormal(0.0, granularity, size=space.n_points)
    m += baseline * rng.random(space.n_points)
    return m / m.max()


STATES = ("sedated", "awake")


def subject_state(kind: str, subject: int, state: str = "auto") -> str:
    """Sedated or awake: ``auto`` follows NeuroMOSAICS (NHP subjects alternate
    sedated capuchin / awake macaque, rats are awake)."""
    if state == "auto":
        return ("sedated" if subject % 2 == 0 else "awake") if kind == "nhp" else "awake"
    if state not in STATES:
        raise ValueError(f"state must be 'auto', 'sedated' or 'awake', got {state!r}")
    return state


def synthetic_cortical(
    kind: str = "nhp",
    n_subjects: int = 2,
    n_muscles: int = 4,
    seed: int = 0,
    n_repetitions: int = 20,
    trial_cv: float = 0.3,
    outlier_rate: float = 0.03,
    name: str | None = None,
    state: str = "auto",
    awake_noise: float = 1.8,
    n_dead_columns: int | None = None,
    artefact_rate: float = 0.005,
) -> Dataset:
    """A cortical dataset of ``n_subjects x n_muscles`` problems on a rat or NHP array.

    Structure, after NeuroMOSAICS Dataset 1:

    - clustered hotspots with electrode-level granularity (:func:`cortical_map`);
    - sedated subjects have smooth maps and ``trial_cv`` variability; awake
      subjects are noisier (``trial_cv * awake_noise``, three times the
      outlier rate) and more selective (narrower hotspots, stronger
      granularity);
    - dead columns: ``n_dead_columns`` adjacent array columns (``x``) with no
      tissue contact respond at 3 % in every muscle (default: 2 for awake NHP
      subjects, as columns 8-9 of the awake macaque, else 0);
    - spontaneous-activity outliers (large, flagged invalid) and artefacts
      (large, *not* flagged: an online system could not reject them).

    Ground truth is the mean over the valid repetitions, as in the NeuroMOSAICS
    processing, so simulated repetitions and the truth agree (artefacts
    included, as in the published means).

    Args:
        kind: ``"nhp"`` (10 x 10, 96 electrodes) or ``"rat"`` (8 x 4, 32 electrodes).
        n_subjects: number of virtual subjects.
        n_muscles: muscles per subject (at most 11 for NHP, 6 for rat).
        seed: everything derives from it.
        n_repetitions: recorded repetitions per electrode (``P x R`` arrays).
        trial_cv: coefficient of variation of trial-to-trial responses (sedated).
        outlier_rate: fraction of repetitions contaminated by spontaneous
            activity (large, flagged invalid), sedated.
        state: ``"auto"``, ``"sedated"`` or ``"awake"`` for every subject.
        awake_noise: factor on ``trial_cv`` for awake subjects.
        n_dead_columns: dead array columns per subject (None: see above).
        artefact_rate: fraction of repetitions with an unflagged artefact.

    Each problem's ``meta`` records ``state``, ``dead_columns`` (0-based ``x``
    indices) and ``artefact`` (``P x R`` bool mask of the artefacts).
    """
    names = NHP_MUSCLES if kind == "nhp" else RAT_MUSCLES
    if not 1 <= n_muscles <= len(names):
        raise ValueError(f"n_muscles must be 1..{len(names)} for the {kind} array, got {n_muscles}")
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    if n_repetitions < 1:
        raise ValueError(f"n_repetitions must be >= 1, got {n_repetitions}")
    space = array_space(kind)
    n_cols = space.grid_shape[0]
    problems = []
    for s in range(n_subjects):
        rng = np.random.default_rng(np.random.SeedSequence([seed, s]))
        st = subject_state(kind, s, state)
        awake = st == "awake"
        cv = trial_cv * (awake_noise if awake else 1.0)
        out_rate = min(outlier_rate * (3.0 if awake else 1.0), 0.5)
        n_dead = (2 if (awake and kind == "nhp") else 0) if n_dead_columns is None else int(n_dead_columns)
        if not 0 <= n_dead < n_cols:
            raise ValueError(f"n_dead_columns must be 0..{n_cols - 1}, got {n_dead}")
        first = int(rng.integers(0, n_cols - n_dead + 1))  # drawn always: maps do not depend on n_dead
        dead_cols = list(range(first, first + n_dead))
        contact = np.where(np.isin(space.index[:, 0], dead_cols), 0.03, 1.0)
        scale = rng.uniform(0.2, 2.0)  # mV: subjects differ in overall excitability
        for m in range(n_muscles):
            if awake:
                shape = cortical_map(space, rng, width=(0.5, 1.2), granularity=0.7)
            else:
                shape = cortical_map(space, rng)
            shape = shape * contact
            amp = scale * rng.uniform(0.3, 1.0)
            size = (space.n_points, n_repetitions)
            reps = amp * shape[:, None] * rng.lognormal(-0.5 * cv**2, cv, size=size)
            invalid = rng.random(size) < out_rate
            invalid[invalid.all(axis=1), 0] = False  # every point keeps a valid repetition
            reps = np.where(invalid, reps + amp * rng.uniform(0.5, 2.0, size=size), reps)
            artefact = (rng.random(size) < artefact_rate) & ~invalid
            reps = np.where(artefact, reps + amp * rng.uniform(1.0, 3.0, size=size), reps)
            valid = ~invalid
            truth = np.where(valid, reps, 0.0).sum(1) / valid.sum(1)
            problems.append(
                Problem(
                    key=f"{kind}{s + 1}/{names[m]}",
                    space=space,
                    truth=truth,
                    repetitions=reps,
                    valid=valid,
                    meta={
                        "units": "mV",
                        "kind": kind,
                        "generator": "synthetic_cortical",
                        "seed": seed,
                        "state": st,
                        "dead_columns": dead_cols,
                        "artefact": artefact,
                    },
                )
            )
    return Dataset(
        name or f"synthetic_{kind}", problems, meta={"kind": kind, "seed": seed, "default_response": "repetition_valid"}
    )
