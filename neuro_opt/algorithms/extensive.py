"""Extensive search: every point in a predetermined order (STAR Methods, benchmark A).

The order is a random permutation, or, given a prior, the points ranked by
decreasing prior (ties in random order). After the whole space has been tested
the next pass starts with a new order. The believed best is the point with the
highest mean observed response.
"""

from __future__ import annotations

import numpy as np

from neuro_opt.algorithms.base import Optimizer


class ExtensiveSearch(Optimizer):
    name = "extensive"

    def __init__(self, space, n_reps=1, seed=0, prior=None):
        super().__init__(space, n_reps, seed, prior)
        self._orders = self._new_orders()

    def _new_orders(self) -> np.ndarray:
        if self.prior is not None:
            keys = np.stack([np.lexsort((self.rng.random(self.P), -self.prior)) for _ in range(self.b)])
            return keys
        return np.stack([self.rng.permutation(self.P) for _ in range(self.b)])

    def ask(self) -> np.ndarray:
        k = self.t % self.P
        if k == 0 and self.t > 0:
            self._orders = self._new_orders()
        return self._orders[:, k].copy()
