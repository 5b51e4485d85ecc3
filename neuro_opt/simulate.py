"""The offline loop: one problem x one algorithm x replicates -> a per-query trace.

Replicates run in lockstep as one batch (the GP engine batches them). The trace
is an Arrow table with one row per replicate x query, so it crosses process
boundaries (Ray) and lands in Parquet without any live object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from neuro_opt import algorithms
from neuro_opt.algorithms.blocks import BlockGenerator
from neuro_opt.datasets.base import Problem, sample_responses
from neuro_opt.threads import default_threads, intra_op_threads
from neuro_opt.trace import TRACE_SCHEMA, trace_table

__all__ = ["TRACE_SCHEMA", "Block", "simulate", "simulate_batch", "squared_correlation", "curves"]


@dataclass(frozen=True)
class Block:
    """One problem's replicates in a batch of :func:`simulate_batch`.

    Attributes:
        problem: the ground truth and, for repetition modes, the recordings.
        n_reps: replicates of this problem.
        seed: int or SeedSequence; the block's algorithm draws and responses get independent
            child streams of it, exactly as :func:`simulate` gives them.
        noise: Gaussian noise std as a fraction of the maximum response (Fig. S3).
    """

    problem: Problem
    n_reps: int
    seed: int | np.random.SeedSequence = 0
    noise: float = 0.0


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
    threads: int | None = None,
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
        threads: torch intra-op threads for the run; None: :func:`neuro_opt.threads.default_threads`
            (1, or the count of an enclosing ``intra_op_threads`` block: never more cores than asked for).

    Returns:
        Arrow table (``TRACE_SCHEMA``, plus ``map_r2`` and ``posterior`` with
        ``record_map``), ``n_reps x n_queries`` rows.
    """
    block = Block(problem, n_reps, seed, noise)
    return simulate_batch(
        [block],
        algorithm,
        n_queries,
        response_mode=response_mode,
        use_prior=use_prior,
        hyperparameters=hyperparameters,
        progress=progress,
        record_map=record_map,
        threads=threads,
    )[0]


def simulate_batch(
    blocks: Sequence[Block],
    algorithm: str,
    n_queries: int | None = None,
    response_mode: str = "gaussian",
    use_prior: bool = False,
    hyperparameters: dict[str, Any] | None = None,
    progress: Callable[[int], object] | None = None,
    record_map: bool = False,
    threads: int | None = None,
) -> list[pa.Table]:
    """Run several problems' replicates as one engine batch; block ``i``'s table is the one
    :func:`simulate` gives for ``blocks[i]`` alone (same rows, same values).

    The problems must share a search space (the muscles of a subject, one problem at several noise
    levels). The batch pays the per-query overhead of the engine once for all blocks, and each
    block keeps its own random streams (:class:`~neuro_opt.algorithms.blocks.BlockGenerator`).
    An algorithm whose draws are not batch-shaped (``algorithms.batch_draws``), or a run with
    ``use_prior`` (one prior per batch), runs its blocks one after another instead: same results.

    Args:
        blocks: ``k`` blocks (problem, replicates, seed, noise).
        algorithm, n_queries, response_mode, use_prior, hyperparameters, progress, record_map, threads:
            as :func:`simulate`, for every block.

    Returns:
        ``k`` Arrow tables, one per block, as :func:`simulate` returns them.
    """
    blocks = list(blocks)
    if not blocks:
        raise ValueError("simulate_batch needs at least one block")
    space = blocks[0].problem.space
    for i, blk in enumerate(blocks):
        if not isinstance(blk.n_reps, (int, np.integer)) or blk.n_reps < 1:
            raise ValueError(f"block {i}: n_reps must be an integer >= 1, got {blk.n_reps!r}")
        if not (np.isfinite(blk.noise) and blk.noise >= 0):
            raise ValueError(f"block {i}: noise level must be >= 0, got {blk.noise!r}")
        if i and not _same_space(blk.problem.space, space):
            raise ValueError(
                f"block {i} (problem {blk.problem.key!r}) has another search space than block 0 "
                f"(problem {blocks[0].problem.key!r}); a batch shares one space"
            )
    P = space.n_points
    if n_queries is None:
        n_queries = P
    if not isinstance(n_queries, (int, np.integer)) or n_queries < 1:
        raise ValueError(f"n_queries must be a positive integer, got {n_queries!r}")
    if use_prior:
        for blk in blocks:
            if blk.problem.prior is None and blk.problem.meta.get("prior_dims") != []:  # [] = no prior by design
                raise ValueError(f"use_prior is set but problem {blk.problem.key!r} has no prior")
    with intra_op_threads(default_threads() if threads is None else threads):
        if len(blocks) > 1 and (use_prior or not algorithms.batch_draws(algorithm)):
            args = (n_queries, response_mode, use_prior, hyperparameters, None, record_map)
            return [simulate_batch([blk], algorithm, *args)[0] for blk in blocks]
        hp = dict(hyperparameters or {})
        return _run(blocks, algorithm, int(n_queries), response_mode, use_prior, hp, progress, record_map)


def _same_space(a, b) -> bool:
    return a is b or (a.X.shape == b.X.shape and np.array_equal(a.X, b.X))


def _run(blocks, algorithm, n_queries, response_mode, use_prior, hp, progress, record_map) -> list[pa.Table]:
    """The query loop of :func:`simulate_batch` (its arguments checked)."""
    sizes = [int(blk.n_reps) for blk in blocks]
    edges = np.concatenate([[0], np.cumsum(sizes)])
    rows = [slice(int(a), int(z)) for a, z in zip(edges[:-1], edges[1:])]
    streams = []  # per block: (algorithm stream, response stream), as simulate spawns them
    for blk in blocks:
        ss = blk.seed if isinstance(blk.seed, np.random.SeedSequence) else np.random.SeedSequence(blk.seed)
        streams.append(ss.spawn(2))
    problem0 = blocks[0].problem
    prior = problem0.prior if use_prior else None  # one block when use_prior (simulate_batch)
    if algorithm.startswith("gpbo"):
        hp.setdefault("capacity", n_queries)
    if len(blocks) == 1:
        alg_rng: Any = streams[0][0]
    else:
        alg_rng = BlockGenerator([np.random.default_rng(s) for s, _ in streams], sizes)
    b = int(edges[-1])
    opt = algorithms.make(algorithm, problem0.space, n_reps=b, seed=alg_rng, prior=prior, **hp)
    resp_rng = [np.random.default_rng(r) for _, r in streams]
    pts = np.empty((b, n_queries), dtype=np.int64)
    resp = np.empty((b, n_queries))
    best = np.empty((b, n_queries), dtype=np.int64)
    explore = np.empty((b, n_queries))
    exploit = np.empty((b, n_queries))
    model = opt if record_map and hasattr(opt, "posterior") else None  # None: no map to record
    map_r2 = np.full((b, n_queries), np.nan)
    y = np.empty(b)
    for t in range(n_queries):
        truths = [blk.problem.truth_at(t) for blk in blocks]
        x = opt.ask()
        for blk, sl, rng, truth in zip(blocks, rows, resp_rng, truths):
            y[sl] = sample_responses(
                blk.problem,
                x[sl],
                rng,
                noise=blk.noise,
                mode=response_mode,
                truth=None if blk.problem.stationary else truth,
            )
        opt.tell(x, y.copy())
        bst = opt.best()
        pts[:, t], resp[:, t], best[:, t] = x, y, bst
        post = model.posterior()[0] if model is not None else None
        for sl, truth in zip(rows, truths):
            top = truth.max()
            explore[sl, t] = truth[bst[sl]] / top if top > 0 else 0.0
            exploit[sl, t] = truth[x[sl]] / top if top > 0 else 0.0
            if post is not None:
                map_r2[sl, t] = squared_correlation(post[sl], truth)
        if progress is not None:
            progress(t + 1)
    final = np.asarray(model.posterior()[0], dtype=np.float32) if model is not None else None
    return [
        _trace(
            pts[sl],
            resp[sl],
            best[sl],
            explore[sl],
            exploit[sl],
            map_r2[sl],
            None if final is None else final[sl],
            record_map,
        )
        for sl in rows
    ]


def _trace(pts, resp, best, explore, exploit, map_r2, final, record_map) -> pa.Table:
    """One block's trace table from its ``n_reps x n_queries`` arrays (``final``: ``n_reps x P``)."""
    n_reps, n_queries = pts.shape
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
    if final is not None:
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
