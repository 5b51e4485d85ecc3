"""Greedy search: one parameter at a time (STAR Methods, benchmark B), as the companion code runs it.

Sources. The STAR Methods of Bonizzato et al. 2023 ("Benchmark comparison ... B. Greedy
search") define the search; the paper's companion code (EduOptimNeurostim: ``GreedySearch`` in
``algorithms.py`` and its driver loop in ``main.py``) fixes what the text leaves open.

From the STAR Methods:

- fix every parameter at a start value, search along one selected dimension, retain the best
  option, fix it and continue along one other selected dimension; start again from the current
  best until the query budget is spent;
- the start point is random, or, given a prior, the prior's best point, "the same exact area which
  is tested first by GP-BO and extensive search. Thus, all algorithms have identical performance
  at query 1".

From the companion code, where the text leaves a choice open:

- the start point is the first query, and it counts as a point of the first search: the first
  search has as many queries as its set has points, the start point first;
- the other points of a search come in random order (``get_random_channel`` draws uniformly from
  those not yet tested), not in order along the dimension;
- each point of a search is tested once; the retained best point is part of the next search
  (it shares every fixed coordinate), so it is tested again, at a random place in that search;
- "the best option" is the point with the highest single response recorded during the search
  just finished (earlier observations of the same point do not count; ties go to the point tested
  first, as Python's ``max`` over the responses in the order they were recorded);
- the dimension order: the first dimension is drawn at random; each next one is drawn at random
  among the dimensions not yet used in the current cycle; when every dimension has been used, the
  new cycle holds every dimension but the one just searched (the companion code's note: the
  previous dimension is never repeated), so the first cycle has ``ndim`` searches and the later
  ones ``ndim - 1``. In 2-D this alternates the two dimensions.
- the believed best (the point the exploration metric scores) is the point with the highest mean
  observed response over the whole run, as ``main.py`` computes it for every algorithm but GP-BO
  (``nanargmax`` of the per-point ``nanmean``). Ties among equal means are broken at random here
  (the companion code takes the first channel in its ``ch2xy`` order, which has no counterpart in
  this package's point numbering).

Where the two conflict: what is searched beyond 2-D. The STAR Methods (and the companion code's
docstring) test "all possibilities along this dimension": a line, every coordinate but one fixed.
The companion code's ``curate_next_channels`` keeps the points that share the start point's value
on the selected dimension: it fixes that one coordinate and searches every other. In 2-D both are
the same line (fixing one coordinate of two leaves a line along the other); in 3-D and more the
companion code searches a hyperplane. Both are offered: ``greedy`` (:class:`GreedySearch`, the
companion code, the default benchmark) and ``greedy_line`` (:class:`GreedyLineSearch`, the STAR
Methods' line). A hyperplane of a large space holds more points than a budget of a few hundred
queries, so beyond 2-D ``greedy`` may never finish its first search; the one configuration beyond
2-D that the companion code ships (a 4-D toy problem) is set to GP-BO.
"""

from __future__ import annotations

import numpy as np

from neuro_opt.algorithms.base import Optimizer
from neuro_opt.space import SearchSpace


class GreedySearch(Optimizer):
    """Greedy search as the companion code runs it: each search fixes the selected dimension's
    coordinate and tests every point that shares it (in 2-D: a line along the other dimension).

    Args: as :class:`~neuro_opt.algorithms.base.Optimizer`; ``prior`` (``P``) only sets the start
    point (its argmax).

    Attributes (per replicate ``b``): ``current`` the point the running search was built around
    (the start point, then each search's best); ``dim`` the selected dimension of the running search.
    """

    name = "greedy"

    def __init__(self, space: SearchSpace, n_reps: int = 1, seed=0, prior: np.ndarray | None = None) -> None:
        super().__init__(space, n_reps, seed, prior)
        self.current = self.ask_first()
        d = space.ndim
        self.dim = [int(self.rng.integers(d)) for _ in range(self.b)]
        self._unused = [[k for k in range(d) if k != self.dim[r]] for r in range(self.b)]
        self._todo = [list(self.search_set(int(self.current[r]), self.dim[r])) for r in range(self.b)]
        self._tested: list[list[int]] = [[] for _ in range(self.b)]
        self._responses: list[list[float]] = [[] for _ in range(self.b)]
        self._next = self.current.copy()  # the start point is the first query

    def search_set(self, point: int, dim: int) -> np.ndarray:
        """The points one search tests from ``point`` with ``dim`` selected (flat indices, ``point``
        among them): every valid point whose coordinate on ``dim`` equals ``point``'s. In 1-D that
        would be ``point`` alone (the companion code has no 1-D case): there the search is the line."""
        if self.space.ndim == 1:
            return self.space.line(int(point), dim)
        index = self.space.index
        return np.flatnonzero(index[:, dim] == index[int(point), dim])

    def ask(self) -> np.ndarray:
        return self._next.copy()

    def _tell(self, points, responses) -> None:
        for r in range(self.b):
            p = int(points[r])
            self._todo[r].remove(p)
            self._tested[r].append(p)
            self._responses[r].append(float(responses[r]))
            if not self._todo[r]:
                self._next_search(r)
            self._next[r] = self._todo[r][int(self.rng.integers(len(self._todo[r])))]

    def _next_search(self, r: int) -> None:
        if not self._unused[r]:  # a new cycle: every dimension but the one just searched (1-D: that one)
            self._unused[r] = [k for k in range(self.space.ndim) if k != self.dim[r]] or [self.dim[r]]
        # np.argmax: the first of equal responses, i.e. the one tested first
        self.current[r] = self._tested[r][int(np.argmax(self._responses[r]))]
        self.dim[r] = self._unused[r].pop(int(self.rng.integers(len(self._unused[r]))))
        self._todo[r] = list(self.search_set(int(self.current[r]), self.dim[r]))
        self._tested[r], self._responses[r] = [], []


class GreedyLineSearch(GreedySearch):
    """Greedy search as the STAR Methods word it beyond 2-D: each search varies the selected
    dimension with every other coordinate fixed (a line). Everything else as :class:`GreedySearch`;
    in 2-D the two search the same lines."""

    name = "greedy_line"

    def search_set(self, point: int, dim: int) -> np.ndarray:
        """The line through ``point`` along ``dim`` (flat indices, ``point`` among them)."""
        return self.space.line(int(point), dim)
