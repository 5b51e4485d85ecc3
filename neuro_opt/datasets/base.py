"""The dataset contract: problems (one muscle of one subject) with ground truth.

Every loader and generator returns a :class:`Dataset`, an ordered collection of
:class:`Problem` objects keyed ``"subject/muscle"``. A problem carries its search
space, the ground-truth mean response per point and, when the data has them, the
recorded repetitions with their valid flags. :func:`sample_responses` turns a
problem into simulated responses for the queried points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np

from neuro_opt.space import SearchSpace


@dataclass
class Problem:
    """One optimization problem.

    Attributes:
        key: ``"subject/muscle"``, unique within its dataset.
        space: the search space.
        truth: ``P`` ground-truth mean response per point (>= 0 for EMG peaks).
        repetitions: optional ``P x R`` recorded responses, NaN where a point has
            fewer than ``R`` repetitions.
        valid: optional ``P x R`` boolean valid flags matching ``repetitions``.
        prior: optional ``P`` prior mean map on the truth's scale (None: no prior).
        meta: free-form description (units, source file, ...).

    Non-stationary problems (drift, plasticity, a lost electrode) subclass this
    and override :meth:`truth_at` and :attr:`stationary`; the simulator then asks
    for the truth at every query.
    """

    key: str
    space: SearchSpace
    truth: np.ndarray
    repetitions: np.ndarray | None = None
    valid: np.ndarray | None = None
    prior: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.truth = np.asarray(self.truth, dtype=np.float64)
        if self.truth.shape != (self.space.n_points,):
            raise ValueError(
                f"problem {self.key!r}: truth has shape {self.truth.shape}, expected ({self.space.n_points},)"
            )
        if not np.all(np.isfinite(self.truth)):
            bad = np.flatnonzero(~np.isfinite(self.truth))[:5].tolist()
            raise ValueError(f"problem {self.key!r}: truth has NaN/inf at points {bad}")
        if self.repetitions is not None:
            self.repetitions = np.asarray(self.repetitions, dtype=np.float64)
            if self.repetitions.ndim != 2 or self.repetitions.shape[0] != self.space.n_points:
                raise ValueError(
                    f"problem {self.key!r}: repetitions has shape {self.repetitions.shape}, "
                    f"expected ({self.space.n_points}, n_repetitions)"
                )
            if self.valid is None:
                self.valid = np.isfinite(self.repetitions)
            self.valid = np.asarray(self.valid, dtype=bool)
            if self.valid.shape != self.repetitions.shape:
                raise ValueError(
                    f"problem {self.key!r}: valid has shape {self.valid.shape}, "
                    f"expected {self.repetitions.shape} like repetitions"
                )

        if self.prior is not None:
            self.prior = np.asarray(self.prior, dtype=np.float64)
            if self.prior.shape != (self.space.n_points,) or not np.all(np.isfinite(self.prior)):
                raise ValueError(f"problem {self.key!r}: prior must be {self.space.n_points} finite values")

    stationary = True

    def truth_at(self, query: int) -> np.ndarray:
        """Ground-truth mean map (``P``) in force at 0-based query ``query``."""
        return self.truth

    @property
    def subject(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def muscle(self) -> str:
        return self.key.split("/", 1)[-1]

    @property
    def max_truth(self) -> float:
        return float(self.truth.max())


class Dataset:
    """An ordered, read-only mapping ``key -> Problem``."""

    def __init__(self, name: str, problems: list[Problem], meta: Mapping | None = None):
        if not problems:
            raise ValueError(f"dataset {name!r} holds no problem")
        keys = [p.key for p in problems]
        if len(set(keys)) != len(keys):
            raise ValueError(f"dataset {name!r} has duplicate problem keys")
        self.name = name
        self._problems = {p.key: p for p in problems}
        self.meta = dict(meta or {})

    def __len__(self) -> int:
        return len(self._problems)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self._problems.values())

    def keys(self) -> list[str]:
        return list(self._problems)

    def __getitem__(self, key: str) -> Problem:
        try:
            return self._problems[key]
        except KeyError:
            raise KeyError(
                f"dataset {self.name!r} has no problem {key!r}; it has {len(self)}: "
                f"{', '.join(self.keys()[:8])}{' ...' if len(self) > 8 else ''}"
            ) from None

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(p.subject for p in self))


def sample_responses(
    problem: Problem,
    points: np.ndarray,
    rng: np.random.Generator,
    noise: float = 0.0,
    mode: str = "gaussian",
    truth: np.ndarray | None = None,
) -> np.ndarray:
    """Simulated responses to stimulating ``points``.

    Args:
        problem: the problem.
        points: integer point indices, any shape.
        rng: the generator that draws the noise (or the repetition).
        noise: for ``mode="gaussian"``, noise std as a fraction of the problem's
            maximum ground-truth response (Fig. S3: 0.0 to 1.0).
        mode: ``"gaussian"``: truth + N(0, (noise * max)^2), clipped at zero;
            ``"repetition_valid"``: a recorded valid repetition drawn at random;
            ``"repetition_all"``: any recorded repetition, outliers included.
        truth: the mean map to use instead of ``problem.truth`` (a
            non-stationary problem's ``truth_at(t)``); gaussian mode only.

    Returns:
        responses with the shape of ``points``.
    """
    points = np.asarray(points, dtype=np.int64)
    if mode == "gaussian":
        if not (noise >= 0 and np.isfinite(noise)):
            raise ValueError(f"noise level must be a finite number >= 0, got {noise!r}")
        mean = (problem.truth if truth is None else truth)[points]
        if noise == 0:
            return mean.copy()
        return np.clip(mean + rng.normal(0.0, noise * problem.max_truth, size=points.shape), 0.0, None)
    if mode in ("repetition_valid", "repetition_all"):
        if problem.repetitions is None:
            raise ValueError(f"problem {problem.key!r} has no recorded repetitions; use mode='gaussian'")
        usable = np.isfinite(problem.repetitions)
        if mode == "repetition_valid":
            usable &= problem.valid
        counts = usable.sum(axis=1)
        flat = points.ravel()
        if np.any(counts[flat] == 0):
            bad = sorted(set(flat[counts[flat] == 0].tolist()))[:5]
            raise ValueError(f"problem {problem.key!r}: no usable repetition at points {bad}")
        # pick the k-th usable repetition of each point, k uniform
        k = (rng.random(flat.shape) * counts[flat]).astype(np.int64)
        order = np.argsort(~usable[flat], axis=1, kind="stable")  # usable columns first
        cols = order[np.arange(flat.size), k]
        return problem.repetitions[flat, cols].reshape(points.shape)
    raise ValueError(f"unknown response mode {mode!r}; expected gaussian, repetition_valid or repetition_all")
