"""The ask/tell contract shared by every optimizer, batched over replicates.

An optimizer runs ``n_reps`` independent replicates in lockstep: ``ask()``
returns one point per replicate, ``tell(points, responses)`` records them and
``best()`` is the point each replicate currently believes best (what the
exploration metric scores).
"""

from __future__ import annotations

import numpy as np

from neuro_opt.acquisition import argmax_random_ties
from neuro_opt.algorithms.blocks import BlockGenerator
from neuro_opt.space import SearchSpace


def make_rng(seed) -> np.random.Generator:
    """A numpy Generator from an int, a SeedSequence or a Generator (a
    :class:`~neuro_opt.algorithms.blocks.BlockGenerator` is kept as it is)."""
    if isinstance(seed, (np.random.Generator, BlockGenerator)):
        return seed  # type: ignore[return-value]  # BlockGenerator: the batch-shaped draws of a Generator
    return np.random.default_rng(seed)


class Optimizer:
    """Base class: bookkeeping of observations per replicate and point.

    Args:
        space: the search space.
        n_reps: number of independent replicates ``b``.
        seed: int, SeedSequence or Generator.
        prior: optional ``P`` prior map (any positive scale), used by the
            subclasses that take one.
    """

    name = "base"
    # True when every random draw covers the whole batch at once (first axis = replicates), so the
    # replicates of several problems can share one batch with a BlockGenerator (simulate_batch)
    batch_draws = False

    def __init__(self, space: SearchSpace, n_reps: int = 1, seed=0, prior=None):
        if n_reps < 1:
            raise ValueError(f"n_reps must be >= 1, got {n_reps}")
        self.space, self.b, self.P = space, int(n_reps), space.n_points
        self.rng = make_rng(seed)
        self.prior = None if prior is None else np.asarray(prior, dtype=np.float64)
        if self.prior is not None and self.prior.shape != (self.P,):
            raise ValueError(f"prior must have shape ({self.P},), got {self.prior.shape}")
        self.t = 0
        self.sums = np.zeros((self.b, self.P))
        self.counts = np.zeros((self.b, self.P))

    def ask(self) -> np.ndarray:
        raise NotImplementedError

    def tell(self, points, responses) -> None:
        points = np.asarray(points, dtype=np.int64)
        responses = np.asarray(responses, dtype=np.float64)
        if points.shape != (self.b,) or responses.shape != (self.b,):
            raise ValueError(f"tell expects ({self.b},) points and responses, got {points.shape} and {responses.shape}")
        if not np.all(np.isfinite(responses)):
            raise ValueError(
                f"responses must be finite numbers, got {responses[~np.isfinite(responses)][:3]} "
                f"at replicates {np.flatnonzero(~np.isfinite(responses))[:5].tolist()}"
            )
        if np.any((points < 0) | (points >= self.P)):
            raise ValueError(f"points must be in 0..{self.P - 1}, got {points.tolist()}")
        rows = np.arange(self.b)
        np.add.at(self.sums, (rows, points), responses)
        np.add.at(self.counts, (rows, points), 1.0)
        self.t += 1
        self._tell(points, responses)

    def _tell(self, points, responses) -> None:
        pass

    def best_observed(self) -> np.ndarray:
        """The point with the highest mean observed response per replicate (``b``)."""
        means = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), -np.inf)
        return argmax_random_ties(means, self.rng) if self.t else self.ask_first()

    def ask_first(self) -> np.ndarray:
        if self.prior is not None:
            return np.full(self.b, int(np.argmax(self.prior)))
        return self.rng.integers(0, self.P, self.b)

    def best(self) -> np.ndarray:
        return self.best_observed()


class ModelOptimizer(Optimizer):
    """An optimizer whose model decides after ``n_initial`` queries: the first one (the prior's
    best when a prior is given, else random) and ``n_random`` random ones."""

    n_random = 1

    @property
    def n_initial(self) -> int:
        return self.n_random + (1 if self.prior is not None else 0)

    def ask_initial(self) -> np.ndarray | None:
        """The points of an initial query (``b``), or None once the model decides."""
        if self.t == 0:
            return self.ask_first()
        if self.t < self.n_initial:
            return self.rng.integers(0, self.P, self.b)
        return None
