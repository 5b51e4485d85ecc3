"""Greedy search: one dimension at a time (STAR Methods, benchmark B).

From a start point (random, or the prior's best), pick a dimension, test every
value along it with the other coordinates fixed, keep the best, fix it and move
to another dimension; when every dimension has been searched, start again from
the current best, in a new random dimension order that does not repeat the dimension
just searched, until the query budget is spent. The believed best is the point with the highest mean observed response.
"""

from __future__ import annotations

import numpy as np

from neuro_opt.acquisition import argmax_random_ties
from neuro_opt.algorithms.base import Optimizer


class GreedySearch(Optimizer):
    name = "greedy"

    def __init__(self, space, n_reps=1, seed=0, prior=None):
        super().__init__(space, n_reps, seed, prior)
        self.current = self.ask_first()
        self._dim_order = [list(self.rng.permutation(space.ndim)) for _ in range(self.b)]
        self._queue = [list(self.space.line(int(self.current[r]), self._dim_order[r][0])) for r in range(self.b)]
        self._line = [list(q) for q in self._queue]

    def ask(self) -> np.ndarray:
        out = np.empty(self.b, dtype=np.int64)
        for r in range(self.b):
            if not self._queue[r]:
                self._next_line(r)
            out[r] = self._queue[r][0]
        return out

    def _tell(self, points, responses) -> None:
        for r in range(self.b):
            self._queue[r].pop(0)

    def _next_line(self, r: int) -> None:
        line = np.asarray(self._line[r])
        means = np.where(self.counts[r, line] > 0, self.sums[r, line] / np.maximum(self.counts[r, line], 1), -np.inf)
        self.current[r] = line[argmax_random_ties(means[None, :], self.rng)[0]]
        last = self._dim_order[r].pop(0)
        if not self._dim_order[r]:
            order = list(self.rng.permutation(self.space.ndim))
            if len(order) > 1 and order[0] == last:  # the search "continues along one other selected
                order = order[1:] + order[:1]  # dimension": never the same one twice in a row
            self._dim_order[r] = order
        self._line[r] = list(self.space.line(int(self.current[r]), self._dim_order[r][0]))
        self._queue[r] = list(self._line[r])
