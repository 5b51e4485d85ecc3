"""Timing GP-BO queries for the latency kind: a grid space of any size, a smooth function on it, the untimed
setup of a setting (:func:`prepare_queries`) and one timed round of its queries (:func:`time_round`)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

SETUP_REFITS = 200  # untimed full refits at most, to bring a converging refit's hyperparameters to convergence


def grid_space(n_points: int, n_dims: int):
    """A :class:`SearchSpace` with exactly ``n_points`` points: the first ``n_points`` (C order)
    of the smallest cube with ``side ** n_dims >= n_points``."""
    from neuro_opt.space import SearchSpace

    side = max(1, int(round(n_points ** (1.0 / n_dims))))
    while side**n_dims < n_points:
        side += 1
    while side > 1 and (side - 1) ** n_dims >= n_points:
        side -= 1
    mask = np.zeros(side**n_dims, dtype=bool)
    mask[:n_points] = True
    return SearchSpace({f"x{j}": range(side) for j in range(n_dims)}, mask=mask.reshape((side,) * n_dims))


def smooth_function(X: np.ndarray, rng: np.random.Generator, n_bumps: int = 3) -> np.ndarray:
    """A random smooth map over ``P x d`` inputs: Gaussian bumps 15-35 % of the range wide, max 1."""
    lo, hi = X.min(0), X.max(0)
    span = np.maximum(hi - lo, 1.0)
    f = np.zeros(X.shape[0])
    for k in range(n_bumps):
        c = rng.uniform(lo, hi)
        w = rng.uniform(0.15, 0.35, size=X.shape[1]) * span
        f += (1.0 if k == 0 else rng.uniform(0.3, 0.9)) * np.exp(-0.5 * (((X - c) / w) ** 2).sum(1))
    return f / f.max()


@dataclass
class Prepared:
    """One setting after its untimed setup (steps 1-2 of :mod:`sweeps.kinds.latency`), ready to time.

    ``opt`` is the GP-BO with ``history`` observations and its refit done, ``x`` its next query (asked,
    not yet answered), ``rng`` the response noise generator, ``f`` the ``P`` noise-free responses.
    :func:`time_round` times copies of ``opt`` and ``rng``, so every round starts from this same state.
    """

    opt: Any
    x: np.ndarray
    f: np.ndarray
    rng: np.random.Generator
    device: str
    n_unique: int
    n_timed: int | None = None  # set by the first round: how many queries every later round times


def prepare_queries(
    algorithm: dict,
    n_points: int,
    n_dims: int,
    history: int,
    device: str = "cpu",
    capacity: int = 1,
    seed=0,
    history_from: str = "distinct",
) -> Prepared:
    """Set up one setting (untimed): the space, the function, GP-BO with ``history`` observations.

    Args:
        algorithm: an algorithm config (``name`` plus hyperparameters), e.g. conf/algorithm/gpbo.yaml.
        capacity: observations to allocate for beyond ``history`` (the timed and warm-up queries of a round).
    """
    from neuro_opt import algorithms

    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    s_fun, s_alg, s_pts = ss.spawn(3)
    space = grid_space(n_points, n_dims)
    f = smooth_function(space.X, np.random.default_rng(s_fun))
    rng = np.random.default_rng(s_pts)
    alg = dict(algorithm)
    name = alg.pop("name")
    opt: Any = algorithms.make(
        name, space, n_reps=1, seed=s_alg, capacity=history + capacity + 1, device=device, **alg
    )  # a GP-BO: its engine is opt.gp
    gp = opt.gp
    P = space.n_points
    if history_from == "run":  # the history is GP-BO's own: `history` untimed ask/tell queries
        asked = []
        for _ in range(history):
            x = opt.ask()
            opt.tell(x, _respond(f, rng, x))
            asked.append(int(x[0]))
        pts = np.array(asked)
    else:
        if history <= P:
            pts = rng.choice(P, size=history, replace=False)
        else:
            pts = np.concatenate([rng.permutation(P), rng.integers(0, P, history - P)])
        for p, r in zip(pts, _respond(f, rng, pts)):
            gp.observe(np.array([p]), np.array([r]))
        opt.t = history  # the optimizer is past its random start: every query below uses the model
        gp.fit()
        if gp.mode == "variable" and gp.fit_tol > 0:
            _converge(gp)
    x = opt.ask()
    _sync(device)
    return Prepared(opt=opt, x=x, f=f, rng=rng, device=device, n_unique=int(len(np.unique(pts))))


def time_round(prep: Prepared, repeats: int, warmup: int, max_seconds: float) -> dict:
    """Time one round of queries of a prepared setting (step 3 of :mod:`sweeps.kinds.latency`).

    The round works on copies of the prepared optimizer and response generator, so every round times
    the same queries (history + warmup + 1, ...) with the same responses from the same state; the
    history does not grow from round to round. The first round stops early (after at least 3 timed
    queries) once its timed queries exceed ``max_seconds``; later rounds time as many as it did.

    Returns ``{"ms_query", "ms_tell", "ms_ask", "fit_steps": lists}`` (``fit_steps``: the Adam steps
    of each timed query's refit; 0 in fixed-rho).
    """
    opt, rng = copy.deepcopy(prep.opt), copy.deepcopy(prep.rng)
    gp, x = opt.gp, prep.x.copy()
    n_timed = prep.n_timed if prep.n_timed is not None else repeats
    out: dict[str, list] = {"ms_query": [], "ms_tell": [], "ms_ask": [], "fit_steps": []}
    spent = 0.0
    for i in range(warmup + n_timed):
        y = _respond(prep.f, rng, x)
        t0 = time.perf_counter()
        opt.tell(x, y)
        _sync(prep.device)
        t1 = time.perf_counter()
        x = opt.ask()
        _sync(prep.device)
        t2 = time.perf_counter()
        if i >= warmup:
            out["ms_query"].append(1e3 * (t2 - t0))
            out["ms_tell"].append(1e3 * (t1 - t0))
            out["ms_ask"].append(1e3 * (t2 - t1))
            out["fit_steps"].append(int(gp.last_fit_steps[0]) if gp.mode == "variable" else 0)
            spent += t2 - t0
            if prep.n_timed is None and spent > max_seconds and len(out["ms_query"]) >= 3:
                break
    if prep.n_timed is None:
        prep.n_timed = len(out["ms_query"])
    return out


def _converge(gp) -> None:
    """Bring a converging refit's hyperparameters (``fit_tol`` > 0) to where ``history`` earlier refits
    would have brought them: converged, not one refit away from the initial values, since a refit
    that stops at convergence costs what the state of its hyperparameters makes it cost.

    Untimed refits of all ``fit_steps`` Adam steps each, until one whole refit moves the log marginal
    likelihood by <= ``fit_tol`` (at most SETUP_REFITS). A refit that merely stops early is not
    enough: one step that overshoots a parameter's optimum can change the likelihood by less than
    ``fit_tol`` while another parameter is still climbing, many nats from its optimum.
    """
    tol = gp.fit_tol
    gp.fit_tol = 0.0
    try:
        before = gp.mll()
        for _ in range(SETUP_REFITS):
            gp.fit()
            after = gp.mll()
            if float((after - before).abs().max()) <= tol:
                break
            before = after
    finally:
        gp.fit_tol = tol


def _respond(f: np.ndarray, rng: np.random.Generator, x) -> np.ndarray:
    """Noisy responses at points ``x``: ``f[x]`` plus 5 % Gaussian noise, clipped at 0."""
    return np.clip(f[x] + rng.normal(0.0, 0.05, size=np.shape(x)), 0.0, None)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
