"""The offline loop: one problem x one algorithm x replicates -> a per-query trace.

Replicates run in lockstep as one batch (the GP engine batches them). The trace
is an Arrow table with one row per replicate x query, so it crosses process
boundaries (Ray) and lands in Parquet without any live object.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pyarrow as pa

from neuro_opt import algorithms
from neuro_opt.datasets.base import Problem, sample_responses
from neuro_opt.trace import TRACE_SCHEMA, trace_table

__all__ = ["TRACE_SCHEMA", "simulate", "squared_correlation", "curves"]


def simulate(
    problem: Problem,
    algorithm: str,
    n_reps: int,
    n_queries: int | None = None,
    seed: int | np.random.SeedSequence = 0,
    noise: float = 0.0,
    response_mode: str = "gaussian",
    use_prior: bool = False,
    hyperparameters: dict[str, Any] | None = None,
    progress: Callable[[int], object] | None = None,
    record_map: bool = False,
) -> pa.Table:
    """Run ``n_reps`` replicates of ``algorithm`` on ``problem``.

    Args:
        problem: the ground truth and, for repetition modes, the recordings.
        algorithm: a name known to :func:`neuro_opt.algorithms.make`.
        n_reps: replicates (one batch).
        n_queries: queries per replicate; None = the size of the space.
        seed: int or SeedSequence; the algorithm and the responses get
            independent child streams.
        noise: Gaussian noise std as a fraction of the maximum response (Fig. S3).
        response_mode: see :func:`neuro_opt.datasets.sample_responses`.
        use_prior: give ``problem.prior`` to the algorithm.
        hyperparameters: keyword arguments of the algorithm.
        progress: optional callable ``progress(query)`` after each query.
        record_map: for algorithms with a model (``posterior()``), add
            ``map_r2`` at every query (the squared Pearson correlation between
            the posterior mean and the truth in force, Fig. S6B's map accuracy)
            and ``posterior`` on each replicate's last row (the final posterior
            mean, float32 ``P``; null on other rows). Other algorithms get nulls.

    Returns:
        Arrow table (``TRACE_SCHEMA``, plus ``map_r2`` and ``posterior`` with
        ``record_map``), ``n_reps x n_queries`` rows.
    """
    P = problem.space.n_points
    if n_queries is None:
        n_queries = P
    if not isinstance(n_queries, (int, np.integer)) or n_queries < 1:
        raise ValueError(f"n_queries must be a positive integer, got {n_queries!r}")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise level must be >= 0, got {noise!r}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    s_alg, s_resp = ss.spawn(2)
    prior = problem.prior if use_prior else None
    if use_prior and prior is None and problem.meta.get("prior_dims") != []:  # [] = no prior by design
        raise ValueError(f"use_prior is set but problem {problem.key!r} has no prior")
    hp = dict(hyperparameters or {})
    if algorithm.startswith("gpbo"):
        hp.setdefault("capacity", n_queries)
    opt = algorithms.make(algorithm, problem.space, n_reps=n_reps, seed=s_alg, prior=prior, **hp)
    rng = np.random.default_rng(s_resp)
    pts = np.empty((n_reps, n_queries), dtype=np.int64)
    resp = np.empty((n_reps, n_queries))
    best = np.empty((n_reps, n_queries), dtype=np.int64)
    explore = np.empty((n_reps, n_queries))
    exploit = np.empty((n_reps, n_queries))
    model = opt if record_map and hasattr(opt, "posterior") else None  # None: no map to record
    map_r2 = np.full((n_reps, n_queries), np.nan)
    for t in range(n_queries):
        truth = problem.truth_at(t)
        x = opt.ask()
        y = sample_responses(
            problem, x, rng, noise=noise, mode=response_mode, truth=None if problem.stationary else truth
        )
        opt.tell(x, y)
        b = opt.best()
        top = truth.max()
        pts[:, t], resp[:, t], best[:, t] = x, y, b
        explore[:, t] = truth[b] / top if top > 0 else 0.0
        exploit[:, t] = truth[x] / top if top > 0 else 0.0
        if model is not None:
            map_r2[:, t] = squared_correlation(model.posterior()[0], truth)
        if progress is not None:
            progress(t + 1)
    reps = np.repeat(np.arange(n_reps), n_queries)
    queries = np.tile(np.arange(1, n_queries + 1), n_reps)
    table = trace_table(
        {
            "rep": reps,
            "query": queries,
            "point": pts,
            "response": resp,
            "best": best,
            "exploration": explore,
            "exploitation": exploit,
        }
    )
    if not record_map:
        return table
    maps: list[np.ndarray | None] = [None] * (n_reps * n_queries)
    if model is not None:
        final = np.asarray(model.posterior()[0], dtype=np.float32)
        for r in range(n_reps):
            maps[(r + 1) * n_queries - 1] = final[r]
    table = table.append_column("map_r2", pa.array(map_r2.ravel(), pa.float64(), mask=np.isnan(map_r2.ravel())))
    return table.append_column("posterior", pa.array(maps, pa.list_(pa.float32())))


def squared_correlation(maps: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Row-wise squared Pearson correlation of ``b x P`` maps with a ``P`` truth (0 for a constant map)."""
    m = np.asarray(maps, dtype=np.float64)
    m = m - m.mean(axis=1, keepdims=True)
    t = np.asarray(truth, dtype=np.float64) - np.mean(truth)
    den = np.sqrt((m * m).sum(axis=1) * (t @ t))
    r = np.divide(m @ t, den, out=np.zeros(m.shape[0]), where=den > 0)
    return r * r


def curves(table: pa.Table, column: str) -> np.ndarray:
    """A trace column as a ``reps x queries`` array (rows ordered by rep, then query)."""
    rep = table.column("rep").to_numpy()
    q = table.column("query").to_numpy()
    vals = table.column(column).to_numpy()
    n_reps, n_q = int(rep.max()) + 1, int(q.max())
    out = np.full((n_reps, n_q), np.nan)
    out[rep, q - 1] = vals
    return out
