"""Greedy search as the companion code (EduOptimNeurostim ``GreedySearch``, ``main.py``) runs it.

Each test pins one behaviour the docstring of ``neuro_opt.algorithms.greedy`` traces to the
companion code or to the STAR Methods; the walk-in-order search it replaced fails each of them.
"""

import numpy as np
import pytest

from neuro_opt import algorithms
from neuro_opt.datasets import array_space
from neuro_opt.space import SearchSpace


def _run(opt, respond, n_queries):
    """Run ``opt``; per query (``queries x reps``): the point, the response, and the search it
    belongs to as (point it was built around, selected dimension), read before the query is asked."""
    pts, ys, searches = [], [], []
    for _ in range(n_queries):
        searches.append([(int(c), int(d)) for c, d in zip(opt.current, opt.dim)])
        x = opt.ask()
        y = respond(x)
        opt.tell(x, y)
        pts.append(x)
        ys.append(y)
    return np.array(pts), np.array(ys), searches


def _split(points, responses, searches, r):
    """Replicate ``r``'s queries cut into searches: [(current, dim, points, responses)], the last one
    possibly unfinished (consecutive searches differ in their dimension, so a change marks a new one)."""
    out: list = []
    for t, key in enumerate(s[r] for s in searches):
        if not out or out[-1][:2] != key:
            out.append((*key, [], []))
        out[-1][2].append(int(points[t, r]))
        out[-1][3].append(float(responses[t, r]))
    return out


def test_the_start_point_is_the_first_query_and_counts_in_the_first_search():
    s = array_space("rat")
    truth = np.random.default_rng(0).random(s.n_points)
    opt = algorithms.make("greedy", s, n_reps=16, seed=0)
    start = opt.current.copy()
    pts, ys, searches = _run(opt, lambda x: truth[x], 12)
    np.testing.assert_array_equal(pts[0], start)
    for r in range(16):
        cur, dim, first, _ = _split(pts, ys, searches, r)[0]
        assert cur == start[r] and first[0] == start[r]
        assert sorted(first) == sorted(opt.search_set(cur, dim).tolist())  # each point once, the start too


def test_with_a_prior_every_replicate_first_queries_the_prior_best():
    """STAR Methods: greedy starts at the prior's best, so all algorithms score the same at query 1."""
    s = array_space("rat")
    prior = np.linspace(0.0, 1.0, s.n_points)[::-1].copy()
    prior[17] = 2.0
    for name in ("greedy", "greedy_line"):
        opt = algorithms.make(name, s, n_reps=6, seed=2, prior=prior)
        assert opt.ask().tolist() == [17] * 6


def test_the_points_of_a_search_come_in_random_order():
    """From one start and one selected dimension, replicates test the same points in different
    orders, most of them not along the dimension (companion: ``random.choice`` of the points left)."""
    s = array_space("rat")
    prior = np.zeros(s.n_points)
    prior[13] = 1.0
    truth = np.random.default_rng(1).random(s.n_points)
    opt = algorithms.make("greedy", s, n_reps=24, seed=5, prior=prior)
    pts, ys, searches = _run(opt, lambda x: truth[x], 8)
    orders: dict[int, set] = {}
    monotone = 0
    for r in range(24):
        _, dim, first, _ = _split(pts, ys, searches, r)[0]
        if len(first) < len(opt.search_set(13, dim)):
            continue  # an unfinished search (the 8-point one)
        orders.setdefault(dim, set()).add(tuple(first))
        rest = first[1:]
        monotone += rest == sorted(rest) or rest == sorted(rest, reverse=True)
    assert all(len(v) > 1 for v in orders.values()) and orders
    assert monotone < sum(len(v) for v in orders.values()) / 2


def test_the_retained_point_is_the_best_single_response_of_the_search_just_finished():
    """Companion: the best of the ``responses`` recorded in the finished search (ties: the first
    tested); the next search is built around it, re-tests it, and selects another dimension."""
    s = array_space("rat")
    truth = np.random.default_rng(2).random(s.n_points)
    noise = np.random.default_rng(3)
    opt = algorithms.make("greedy", s, n_reps=8, seed=4)
    pts, ys, searches = _run(opt, lambda x: truth[x] + noise.normal(0, 0.3, x.shape), 120)
    differs_from_mean = 0
    for r in range(8):
        parts = _split(pts, ys, searches, r)
        assert len(parts) > 5
        t_end = 0
        for (_, dim, p, y), (nxt, nxt_dim, nxt_p, _) in zip(parts, parts[1:]):
            t_end += len(p)
            assert nxt == p[int(np.argmax(y))] and nxt in nxt_p and nxt_dim != dim
            assert sorted(p) == sorted(opt.search_set(p[0], dim).tolist())  # a finished search, each point once
            # the best mean over the whole history at the search's points: not what the companion keeps
            hist_p, hist_y = pts[:t_end, r], ys[:t_end, r]
            means = {q: hist_y[hist_p == q].mean() for q in p}
            differs_from_mean += max(means, key=lambda q: means[q]) != nxt
    assert differs_from_mean > 0  # so a best-mean rule would fail the assertions above


def test_the_dimension_cycle_skips_the_dimension_just_searched():
    """Companion: the first cycle uses every dimension once in random order; each later cycle holds
    every dimension but the last one searched, again in random order."""
    s = SearchSpace({"a": range(3), "b": range(2), "c": range(3)})
    truth = np.random.default_rng(5).random(s.n_points)
    opt = algorithms.make("greedy_line", s, n_reps=12, seed=6)
    pts, ys, searches = _run(opt, lambda x: truth[x], 60)
    cycles_seen = set()
    for r in range(12):
        dims = [part[1] for part in _split(pts, ys, searches, r)][:-1]  # finished searches
        assert len(dims) >= 9 and sorted(dims[:3]) == [0, 1, 2]
        for k in range(3, len(dims) - 1, 2):
            assert sorted(dims[k : k + 2]) == sorted({0, 1, 2} - {dims[k - 1]}), dims
            cycles_seen.add(tuple(dims[k : k + 2]))
    assert len(cycles_seen) >= 4  # both orders of several cycles: drawn at random


@pytest.mark.parametrize("name, kind", [("greedy", "hyperplane"), ("greedy_line", "line")])
def test_beyond_2d_greedy_fixes_one_coordinate_and_greedy_line_varies_one(name, kind):
    """The one conflict: the companion code keeps the points sharing the selected dimension's value
    (a hyperplane beyond 2-D); the STAR Methods search along the selected dimension (a line)."""
    s = SearchSpace({"a": range(4), "b": range(3), "c": range(5)})
    truth = np.random.default_rng(7).random(s.n_points)
    opt = algorithms.make(name, s, n_reps=6, seed=8)
    pts, ys, searches = _run(opt, lambda x: truth[x], 90)
    for r in range(6):
        for _, dim, p, _ in _split(pts, ys, searches, r)[:-1]:
            coords = s.index[p]
            constant = [j for j in range(3) if len(set(coords[:, j])) == 1]
            if kind == "hyperplane":
                assert constant == [dim] and len(p) == s.n_points // s.grid_shape[dim]
            else:
                assert sorted(constant) == sorted({0, 1, 2} - {dim}) and len(p) == s.grid_shape[dim]
