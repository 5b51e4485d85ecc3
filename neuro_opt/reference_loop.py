"""The plain single-run BoTorch GP-BO loop: the reference the batched engine is measured against.

One complete simulated GP-BO run done the ordinary way, one model per query: after every query a
fresh BoTorch model (:mod:`neuro_opt.gp.reference`: the same model and bounds as the engine's
variable-rho mode) is fitted on every observation so far; the posterior (latent ``f``, no
observation noise) over every point of the space gives the next query, the argmax of UCB
``mu + kappa * sigma`` with ties broken at random, and the believed best, the argmax of the
posterior mean.

Query schedule, random streams, response sampling and the exploration/exploitation
definitions follow :func:`neuro_opt.simulate.simulate` with ``algorithm="gpbo"`` and one
replicate: the seed spawns an algorithm stream and a response stream, the first
``n_random`` queries are uniform at random, and random draws happen in the same order, so
both start from the same queries and responses.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from neuro_opt.acquisition import UCB, argmax_random_ties
from neuro_opt.datasets.base import Problem, sample_responses
from neuro_opt.gp import defaults
from neuro_opt.gp.reference import fit_reference, reference_model
from neuro_opt.trace import trace_table


def botorch_reference_run(
    problem: Problem,
    n_queries: int | None = None,
    seed=0,
    noise: float = 0.0,
    kappa: float = defaults.KAPPA,
    n_random: int = defaults.N_RANDOM,
    rho_low: float = defaults.RHO_LOW,
    rho_high: float = defaults.RHO_HIGH,
    noise_min: float = defaults.NOISE_MIN,
    noise_max: float = defaults.NOISE_MAX,
    outputscale_low: float = defaults.OUTPUTSCALE_LOW,
    outputscale_high: float = defaults.OUTPUTSCALE_HIGH,
    response_mode: str = "gaussian",
    on_query: Callable | None = None,
) -> pa.Table:
    """One simulated GP-BO run with a plain BoTorch loop (module docstring).

    Args:
        problem: ground truth and, for repetition modes, the recordings (no prior map is used).
        n_queries: queries in the run; None = the size of the space.
        seed: int or SeedSequence (spawned exactly as :func:`neuro_opt.simulate.simulate` does).
        noise, response_mode: response sampling, as in :func:`neuro_opt.simulate.simulate`.
        kappa, n_random, rho_low, rho_high, noise_min, noise_max, outputscale_low,
            outputscale_high: GP-BO hyperparameters, as in :class:`neuro_opt.algorithms.GPBO`
            (variable-rho; the noise bounds are on the std).
        on_query: optional ``on_query(t, model, mean, var, points, responses)`` after the
            fit of 1-based query ``t``: the fitted model, the ``P`` posterior mean and
            variance on the normalized scale, and the ``t`` points and raw responses so far.

    Returns:
        Arrow table (``TRACE_SCHEMA``), ``n_queries`` rows, ``rep`` 0.
    """
    P = problem.space.n_points
    if n_queries is None:
        n_queries = P
    if not isinstance(n_queries, (int, np.integer)) or n_queries < 1:
        raise ValueError(f"n_queries must be a positive integer, got {n_queries!r}")
    ucb = UCB(kappa)
    if int(n_random) < 1:
        raise ValueError(f"n_random must be >= 1 (the reference loop takes no prior), got {n_random!r}")
    if not (0 < rho_low < rho_high and 0 < noise_min < noise_max and 0 < outputscale_low < outputscale_high):
        raise ValueError(
            f"need 0 < low < high for every bound, got rho ({rho_low}, {rho_high}), noise "
            f"({noise_min}, {noise_max}), outputscale ({outputscale_low}, {outputscale_high})"
        )
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    s_alg, s_resp = ss.spawn(2)
    rng_alg, rng_resp = np.random.default_rng(s_alg), np.random.default_rng(s_resp)
    X_all = torch.tensor(problem.space.X, dtype=torch.float64)
    bounds = (rho_low, rho_high, noise_min, noise_max, outputscale_low, outputscale_high)

    pts = np.empty(n_queries, dtype=np.int64)
    resp = np.empty(n_queries)
    best = np.empty(n_queries, dtype=np.int64)
    explore = np.empty(n_queries)
    exploit = np.empty(n_queries)
    mean = var = np.zeros(P)  # the posterior after the last fit (first used after n_random >= 1 queries)
    for t in range(n_queries):
        truth = problem.truth_at(t)
        if t < n_random:  # the first query and the initial random ones, as GPBO.ask
            x = rng_alg.integers(0, P, 1)
        else:
            x = ucb.argmax(mean[None, :], var[None, :], rng_alg, f"reference GP-BO (query {t + 1})")
        y = sample_responses(
            problem, x, rng_resp, noise=noise, mode=response_mode, truth=None if problem.stationary else truth
        )
        pts[t], resp[t] = x[0], y[0]
        # fit a new model on everything seen so far, responses divided by the largest one
        top = resp[: t + 1].max()
        y_norm = torch.as_tensor(resp[: t + 1] / top if top > 0 else resp[: t + 1], dtype=torch.float64)
        model, mll = reference_model(X_all[torch.as_tensor(pts[: t + 1])], y_norm, *bounds)
        fit_reference(mll)
        model.eval()
        with torch.no_grad():
            post = model.posterior(X_all)
            mean = post.mean.squeeze(-1).numpy()
            var = post.variance.squeeze(-1).numpy()
        if on_query is not None:
            on_query(t + 1, model, mean, var, pts[: t + 1].copy(), resp[: t + 1].copy())
        b = argmax_random_ties(mean[None, :], rng_alg)[0]
        tmax = truth.max()
        best[t] = b
        explore[t] = truth[b] / tmax if tmax > 0 else 0.0
        exploit[t] = truth[x[0]] / tmax if tmax > 0 else 0.0
    return trace_table(
        {
            "rep": np.zeros(n_queries),
            "query": np.arange(1, n_queries + 1),
            "point": pts,
            "response": resp,
            "best": best,
            "exploration": explore,
            "exploitation": exploit,
        }
    )
