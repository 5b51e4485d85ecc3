"""A JSON-ready summary of a dataset (what ``python -m sweeps.dataset describe`` prints)."""

from __future__ import annotations

import numpy as np

from neuro_opt.datasets.base import Dataset


def _one_or_list(values: list):
    uniq = []
    for v in values:
        if v not in uniq:
            uniq.append(v)
    return uniq[0] if len(uniq) == 1 else uniq


def describe(dataset: Dataset) -> dict:
    """Summary of ``dataset``.

    Returns:
        dict with ``name``, ``n_problems``, ``n_subjects``, ``muscles`` (names,
        in order of appearance), ``dims`` (dimension names), ``n_points`` and
        ``grid_shape`` (one value, or the list of distinct values when
        subjects differ), ``n_repetitions`` (``[min, max]`` recorded
        repetitions per point over all problems, None without recordings),
        ``valid_fraction`` (valid / recorded repetitions, None without),
        ``max_response`` (largest ground-truth mean), ``stationary`` and
        ``has_prior`` (every problem).
    """
    problems = list(dataset)
    counts = [np.isfinite(p.repetitions).sum(axis=1) for p in problems if p.repetitions is not None]
    n_rec = sum(int(np.isfinite(p.repetitions).sum()) for p in problems if p.repetitions is not None)
    n_valid = sum(int((p.valid & np.isfinite(p.repetitions)).sum()) for p in problems if p.repetitions is not None)
    return {
        "name": dataset.name,
        "n_problems": len(problems),
        "n_subjects": len(dataset.subjects),
        "muscles": list(dict.fromkeys(p.muscle for p in problems)),
        "dims": _one_or_list([list(p.space.names) for p in problems]),
        "n_points": _one_or_list([int(p.space.n_points) for p in problems]),
        "grid_shape": _one_or_list([list(p.space.grid_shape) for p in problems]),
        "n_repetitions": [int(min(c.min() for c in counts)), int(max(c.max() for c in counts))] if counts else None,
        "valid_fraction": (n_valid / n_rec) if n_rec else None,
        "max_response": float(max(p.max_truth for p in problems)),
        "stationary": all(p.stationary for p in problems),
        "has_prior": all(p.prior is not None for p in problems),
    }
