"""Semi-synthetic frequency augmentation (STAR Protocols, step 10b/c).

A 2-D electrode map recorded at 300 Hz is extended with a frequency dimension
by multiplying every response with a normalized modulation factor per
frequency: for [100, 200, 300, 400, 500] Hz, [0.52, 0.94, 1, 1.05, 1.11]
(after Watson et al. 2016, Fig. 5).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from neuro_opt.datasets.base import Dataset, Problem
from neuro_opt.space import Dimension, SearchSpace

STAR_FREQUENCIES_HZ = (100, 200, 300, 400, 500)
STAR_FACTORS = (0.52, 0.94, 1.0, 1.05, 1.11)


def augment_problem(
    problem: Problem,
    frequencies: Sequence[float] = STAR_FREQUENCIES_HZ,
    factors: Sequence[float] = STAR_FACTORS,
    space: SearchSpace | None = None,
) -> Problem:
    """``problem`` with a last ``frequency`` dimension.

    Point ``p * F + j`` of the new space is base point ``p`` at frequency
    ``j``: truth ``truth[p] * factors[j]``; repetitions (``P x R`` ->
    ``P*F x R``), valid flags and prior follow.
    """
    f = np.asarray(factors, dtype=np.float64)
    if len(frequencies) != f.size or f.size == 0:
        raise ValueError(f"need one factor per frequency, got {len(frequencies)} frequencies and {f.size} factors")
    if not np.all(np.isfinite(f)) or np.any(f < 0):
        raise ValueError(f"factors must be finite and >= 0, got {list(factors)}")
    if "frequency" in problem.space.names:
        raise ValueError(f"problem {problem.key!r} already has a frequency dimension")
    if space is None:
        space = augmented_space(problem.space, frequencies)
    F = f.size
    reps = valid = prior = None
    if problem.repetitions is not None:
        assert problem.valid is not None  # Problem sets valid whenever it has repetitions
        reps = (problem.repetitions[:, None, :] * f[None, :, None]).reshape(-1, problem.repetitions.shape[1])
        valid = np.repeat(problem.valid, F, axis=0)
    if problem.prior is not None:
        prior = (problem.prior[:, None] * f[None, :]).ravel()
    return Problem(
        key=problem.key,
        space=space,
        truth=(problem.truth[:, None] * f[None, :]).ravel(),
        repetitions=reps,
        valid=valid,
        prior=prior,
        meta=dict(problem.meta, frequencies_hz=list(frequencies), frequency_factors=f.tolist(), base_frequency_hz=300),
    )


def augmented_space(base: SearchSpace, frequencies: Sequence[float]) -> SearchSpace:
    """``base`` x ``frequency`` (last dimension); masked where the base is."""
    dims = list(base.dims) + [Dimension("frequency", tuple(frequencies))]
    mask = np.repeat(base.mask[..., None], len(frequencies), axis=-1)
    return SearchSpace(dims, mask=mask)


def augment_frequency(
    dataset: Dataset,
    frequencies: Sequence[float] = STAR_FREQUENCIES_HZ,
    factors: Sequence[float] = STAR_FACTORS,
    name: str | None = None,
) -> Dataset:
    """Every problem of ``dataset`` augmented by :func:`augment_problem` (spaces shared when the base's are)."""
    spaces: dict[int, SearchSpace] = {}
    problems = []
    for p in dataset:
        sp = spaces.setdefault(id(p.space), augmented_space(p.space, frequencies))
        problems.append(augment_problem(p, frequencies, factors, space=sp))
    meta = dict(dataset.meta, base=dataset.name, frequencies_hz=list(frequencies), frequency_factors=list(factors))
    return Dataset(name or f"{dataset.name}_frequency", problems, meta=meta)


def frequency_augmented(
    base: str = "synthetic_rat",
    path=None,
    base_kwargs: dict | None = None,
    frequencies: Sequence[float] = STAR_FREQUENCIES_HZ,
    factors: Sequence[float] = STAR_FACTORS,
    name: str | None = None,
) -> Dataset:
    """A registered 2-D dataset (``base``) with the STAR Protocols frequency dimension.

    Args:
        base: registry name of the 2-D dataset (``synthetic_rat``,
            ``neuromosaics_rat``, ...).
        path: passed to the base as ``path`` when set (loaders).
        base_kwargs: further keyword arguments of the base.
        frequencies, factors: the frequency values (Hz) and their factors
            (1.0 at the frequency the base was recorded at).
    """
    from neuro_opt.datasets import load

    kwargs = dict(base_kwargs or {})
    if path is not None:
        kwargs["path"] = path
    return augment_frequency(load(base, **kwargs), frequencies, factors, name=name or "frequency_augmented")
