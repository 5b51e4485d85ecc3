"""The 5-D rat cortical space (Cell Reports Medicine Fig. 8): loader and generator.

32 electrodes (8 x 4 array) x train duration [20, 40, 80, 100, 150, 200, 250] ms
x frequency [25, 50, 100, 200, 300, 400, 500] Hz x pulse width [50, 100, 150,
200, 300, 400, 500] us = 10,976 points.

File layout (the public copy, one ``.mat`` per subject, top-level variables read
by name):

- ``emg_response``: ``R x M x K x 4`` (repetitions, EMG channels, conditions,
  metrics; metric 0 = peak EMG);
- ``stim_combinations``: ``K x 7`` = [pulse width, frequency, duration, pulse
  count, channel, x, y] (x, y 1-based electrode coordinates);
- ``emgs`` (optional): M muscle names.

Both the loader and the generator use the dimension order
``(x, y, duration, frequency, pulse_width)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from neuro_opt.datasets._common import (
    DataFormatError,
    as_name_list,
    check_unique,
    find_files,
    first_muscles,
    grid_space,
    problems_from_channels,
    require_path,
    select_files,
    select_muscles,
)
from neuro_opt.datasets.base import Dataset, Problem
from neuro_opt.datasets.matfiles import read_mat
from neuro_opt.datasets.synthetic import RAT_MUSCLES, array_space, cortical_map
from neuro_opt.space import SearchSpace

DURATIONS_MS = (20, 40, 80, 100, 150, 200, 250)
FREQUENCIES_HZ = (25, 50, 100, 200, 300, 400, 500)
PULSE_WIDTHS_US = (50, 100, 150, 200, 300, 400, 500)
COMBINATION_COLUMNS = ("pulse_width", "frequency", "duration", "count", "channel", "x", "y")
DIMS = ("x", "y", "duration", "frequency", "pulse_width")
_DIM_COLUMN = {"x": 5, "y": 6, "duration": 2, "frequency": 1, "pulse_width": 0}


def five_d_space() -> SearchSpace:
    """The full 8 x 4 x 7 x 7 x 7 grid (10,976 points)."""
    return SearchSpace(
        {
            "x": range(1, 9),
            "y": range(1, 5),
            "duration": DURATIONS_MS,
            "frequency": FREQUENCIES_HZ,
            "pulse_width": PULSE_WIDTHS_US,
        }
    )


def read_rat5d_mat(file: Path) -> dict:
    """The variables of one 5-D file.

    Returns:
        dict with ``combinations`` (K x 7 float), ``response`` (R x M x K x
        n_metrics float) and ``muscles`` (M names or None).
    """
    where = str(file)
    mat = read_mat(file, squeeze_me=False, chars_as_strings=True)
    for key in ("emg_response", "stim_combinations"):
        if key not in mat:
            raise DataFormatError(
                f"{where}: missing variable {key!r}; variables present: {[k for k in mat if not k.startswith('__')]}"
            )
    combos = np.asarray(mat["stim_combinations"], dtype=np.float64)
    if combos.ndim != 2 or combos.shape[1] != 7:
        raise DataFormatError(
            f"{where}: stim_combinations has shape {combos.shape}, expected (n_conditions, 7) = "
            f"{list(COMBINATION_COLUMNS)}"
        )
    resp = np.asarray(mat["emg_response"], dtype=np.float64)
    if resp.ndim != 4 or resp.shape[2] != combos.shape[0]:
        raise DataFormatError(
            f"{where}: emg_response has shape {resp.shape}, expected (repetitions, emgs, "
            f"{combos.shape[0]} conditions, metrics)"
        )
    muscles = None
    if "emgs" in mat:
        muscles = as_name_list(mat["emgs"], where, "emgs")
        if len(muscles) != resp.shape[1]:
            raise DataFormatError(f"{where}: emgs has {len(muscles)} names for {resp.shape[1]} EMG channels")
    return {"combinations": combos, "response": resp, "muscles": muscles}


class _ConditionLabel:
    """Names condition ``k`` (row of ``stim_combinations``) in error messages."""

    def __init__(self, combos):
        self.combos = combos

    def __call__(self, k: int) -> str:
        return f"condition {k} {dict(zip(COMBINATION_COLUMNS, self.combos[k].tolist()))}"


def load_rat5d(
    path=None,
    muscles: Sequence[str] | None = None,
    emg_names: Sequence[str] | None = None,
    subjects: Sequence[str] | None = None,
    metric: int = 0,
    truth: str = "valid_mean",
    outlier_sd: float | None = None,
    n_subjects: int | None = None,
    n_muscles: int | None = None,
    name: str | None = None,
) -> Dataset:
    """The 5-D rat cortical recordings: one problem per subject file and EMG channel.

    Args:
        path: a ``.mat`` file, a folder of them, or a root holding ``5d_rat/``.
        muscles: names to keep (None: all).
        emg_names: names of the M EMG channels when the file holds no ``emgs``
            (default ``emg1 .. emgM``); overrides the file's names when given.
        subjects: file stems to keep.
        metric: index along the last axis of ``emg_response`` (0 = peak EMG).
        truth: ``"valid_mean"`` or ``"all_mean"`` (the file stores no means).
        outlier_sd: flag repetitions farther than this many standard
            deviations from their condition's mean as invalid (None: only
            missing values are invalid; the file carries no flags).
        n_subjects: keep the first ``n_subjects`` files; None: all.
        n_muscles: keep at most the first ``n_muscles`` (selected) channels.

    Returns:
        problems on the ``(x, y, duration, frequency, pulse_width)`` grid of
        the values found in ``stim_combinations``, masked to the conditions
        present; ``repetitions`` are ``P x R``.
    """
    dataset = name or "rat_5d"
    root = require_path(path, dataset)
    files = select_files(find_files(root, (".mat",), ("5d_rat", "5d"), dataset), subjects, dataset, n_subjects)
    problems = []
    for f in files:
        where = str(f)
        data = read_rat5d_mat(f)
        combos, resp = data["combinations"], data["response"]
        if not 0 <= metric < resp.shape[3]:
            raise ValueError(f"{where}: metric {metric} out of range, emg_response has {resp.shape[3]} metrics")
        cols = combos[:, [_DIM_COLUMN[d] for d in DIMS]]
        if not np.all(np.isfinite(cols)):
            row, col = np.argwhere(~np.isfinite(cols))[0]
            raise DataFormatError(f"{where}: stim_combinations has NaN at row {row} (0-based), column {DIMS[col]!r}")
        values, grid = [], []
        for j in range(len(DIMS)):
            v, inv = np.unique(cols[:, j], return_inverse=True)
            values.append([int(x) if x == round(x) else float(x) for x in v])
            grid.append(inv)
        space, point_of_row = grid_space(np.stack(grid, axis=1), DIMS, where, values=values)
        n_emg = resp.shape[1]
        names = list(emg_names) if emg_names is not None else (data["muscles"] or [f"emg{i + 1}" for i in range(n_emg)])
        if len(names) != n_emg:
            raise ValueError(f"{where}: emg_names has {len(names)} names for {n_emg} EMG channels")
        check_unique(names, where, "emg names")
        reps = resp[..., metric].transpose(2, 1, 0)  # K x M x R
        valid = np.isfinite(reps)
        if outlier_sd is not None:
            with np.errstate(invalid="ignore"):
                mu = np.nanmean(reps, axis=2, keepdims=True)
                sd = np.nanstd(reps, axis=2, keepdims=True)
                valid &= np.abs(reps - mu) <= outlier_sd * sd
        idx = select_muscles(names, muscles, where)
        idx = idx[: first_muscles(n_muscles, len(idx), where)]
        label = _ConditionLabel(combos)
        problems += problems_from_channels(
            f.stem,
            where,
            space,
            point_of_row,
            [names[i] for i in idx],
            reps[:, idx],
            valid[:, idx],
            None,
            truth,
            label,
            {"source": "5-D rat cortical", "file": where, "metric": metric, "units": "mV"},
        )
    return Dataset(
        dataset,
        problems,
        meta={"source": "5-D rat cortical (Fig. 8)", "path": str(root), "default_response": "repetition_valid"},
    )


# ----------------------------------------------------------------------------- generator


def _log_bump(values, center, width_octaves, floor):
    """A bump over log2(values): 1 at ``center``, ``floor`` far away."""
    z = (np.log2(np.asarray(values, float)) - np.log2(center)) / width_octaves
    return floor + (1 - floor) * np.exp(-0.5 * z**2)


def synthetic_cortical5d(
    n_subjects: int = 6,
    n_muscles: int = 1,
    seed: int = 0,
    n_repetitions: int = 8,
    trial_cv: float = 0.25,
    name: str | None = None,
) -> Dataset:
    """Synthetic 5-D cortical problems shaped like Fig. 8.

    Truth = a granular rat cortical map (x, y) x a duration profile x a
    frequency profile x a pulse-width profile, each a bump over log units.
    As published, the frequency profile is stable across subjects (optimum
    near 250 Hz, small jitter), duration moderately so, and the pulse-width
    optimum varies widely between subjects.

    Args:
        n_subjects: virtual rats (6 in Fig. 8).
        n_muscles: EMG channels per rat (names from the rat muscle list).
        n_repetitions: recorded repetitions per condition (``P x R``, as in the
            public 5-D files); 0 for none.
        trial_cv: coefficient of variation of the repetitions.

    Returns:
        a dataset on the 10,976-point space; ``meta`` of each problem holds
        the profile parameters (``freq_peak_hz``, ``duration_peak_ms``,
        ``pulse_width_peak_us``).
    """
    if not 1 <= n_muscles <= len(RAT_MUSCLES):
        raise ValueError(f"n_muscles must be 1..{len(RAT_MUSCLES)}, got {n_muscles}")
    if n_subjects < 1 or n_repetitions < 0:
        raise ValueError("n_subjects must be >= 1 and n_repetitions >= 0")
    space = five_d_space()
    rat = array_space("rat")
    ix = space.index
    problems = []
    for s in range(n_subjects):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 5, s]))
        for m in range(n_muscles):
            spatial = cortical_map(rat, rng)
            fp = 250.0 * 2 ** rng.normal(0, 0.25)
            dp = float(rng.uniform(100, 250))
            pp = float(2 ** rng.uniform(np.log2(50), np.log2(500)))
            freq = _log_bump(FREQUENCIES_HZ, fp, 1.3 + rng.normal(0, 0.1), 0.08)
            dur = _log_bump(DURATIONS_MS, dp, rng.uniform(1.0, 1.6), 0.15)
            pw = _log_bump(PULSE_WIDTHS_US, pp, rng.uniform(0.6, 1.4), 0.1)
            grid_map = rat.to_grid(spatial)
            amp = rng.uniform(0.5, 3.0)
            truth = amp * grid_map[ix[:, 0], ix[:, 1]] * dur[ix[:, 2]] * freq[ix[:, 3]] * pw[ix[:, 4]]
            reps = valid = None
            if n_repetitions:
                size = (space.n_points, n_repetitions)
                reps = truth[:, None] * rng.lognormal(-0.5 * trial_cv**2, trial_cv, size=size)
                valid = np.ones(reps.shape, dtype=bool)
                truth = reps.mean(axis=1)
            problems.append(
                Problem(
                    key=f"rat5d{s + 1}/{RAT_MUSCLES[m]}",
                    space=space,
                    truth=truth,
                    repetitions=reps,
                    valid=valid,
                    meta={
                        "generator": "synthetic_cortical5d",
                        "seed": seed,
                        "units": "mV",
                        "freq_peak_hz": float(fp),
                        "duration_peak_ms": dp,
                        "pulse_width_peak_us": pp,
                    },
                )
            )
    return Dataset(
        name or "synthetic_cortical5d",
        problems,
        meta={"seed": seed, "default_response": "repetition_valid" if n_repetitions else "gaussian"},
    )
