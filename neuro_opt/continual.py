"""Continual learning over sessions (Cell Reports Medicine Fig. 5).

A lineage is a chain of short optimization sessions on a drifting map: what a
session ends up knowing becomes the next session's prior (STAR Methods:
"the previous session's posterior mu_{s,t=8}(x) was fed as a prior to the GP
mean in the next session"). Lineages are independent of one another, as
published: lineage k of session s+1 depends only on lineage k of session s.

What a session hands to the next (``b x P``, see :func:`handoff`):

- GP-BO: its posterior mean, on its normalized scale (responses divided by the
  largest seen); GP-BO rescales any prior to max 1 and multiplies it by
  ``prior_scale`` (0.75) and fades it out over ``prior_fade`` (3) queries;
- benchmarks (prior-ranked extensive search, greedy search from the prior's
  best): their knowledge map, the mean observed response divided by the
  session's largest mean observed response where observed, else the previous
  prior divided by its maximum (both on a max-1 scale; only the order matters
  to them: extensive search ranks by it, greedy search starts at its argmax).

Electrode loss (Fig. 5D-F): from the 1-based session ``loss_session`` on, the
best electrode of the truth in force at that session responds 0; exploration
and exploitation are then scored against the map without it.

Each lineage runs its own ``n_reps=1`` optimizer per session: the optimizers
take one ``P`` prior shared by their replicates, and after the first session
every lineage has its own prior.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from neuro_opt import algorithms
from neuro_opt.algorithms.base import Optimizer
from neuro_opt.datasets.base import Problem, sample_responses
from neuro_opt.trace import trace_schema, trace_table

ARMS = ("standard", "electrode_loss")

#: the trace (``rep``: the lineage; ``query``: 1-based within the session) and the continual columns
TABLE_SCHEMA = trace_schema(
    ("session", pa.int32()),  # 1-based
    ("global_query", pa.int32()),  # 1-based over the sessions
    ("arm", pa.string()),  # standard | electrode_loss
    ("lost_point", pa.int32()),  # -1 before the loss and in the standard arm
)


def session_truths(problem: Problem, n_sessions: int, loss_session: int | None = None) -> tuple[np.ndarray, int]:
    """The ground truth in force in each session and the lost point.

    Args:
        problem: a problem with ``sessions`` (``S x P``, e.g. the ``plasticity``
            scenario of :func:`neuro_opt.datasets.nonstationary`) or a stationary one
            (its ``truth`` in every session).
        n_sessions: sessions to return (at most ``S``).
        loss_session: 1-based session from which the best electrode of that
            session's truth responds 0 (None: no loss).

    Returns:
        ``n_sessions x P`` truths and the lost point (-1: none).
    """
    sessions = getattr(problem, "sessions", None)
    if sessions is None:
        truths = np.repeat(problem.truth[None, :], n_sessions, axis=0)
    else:
        if n_sessions > sessions.shape[0]:
            raise ValueError(f"n_sessions={n_sessions}: problem {problem.key!r} has {sessions.shape[0]} sessions")
        truths = np.array(sessions[:n_sessions], dtype=np.float64)
    lost = -1
    if loss_session is not None:
        if not 1 <= loss_session <= n_sessions:
            raise ValueError(f"loss_session={loss_session}: must be a 1-based session in 1..{n_sessions}")
        lost = int(np.argmax(truths[loss_session - 1]))
        truths[loss_session - 1 :, lost] = 0.0
    return truths, lost


def handoff(opt: Optimizer, prior: np.ndarray | None) -> np.ndarray:
    """What a finished session knows, to become the next session's prior (``b x P``).

    GP-BO (any optimizer with ``posterior()``): the posterior mean. Others: mean
    observed response / the largest mean observed response where observed, else
    the previous ``prior`` / its maximum (0 without a prior).
    """
    if hasattr(opt, "posterior"):
        return np.array(opt.posterior()[0])
    observed = opt.counts > 0
    means = np.where(observed, opt.sums / np.maximum(opt.counts, 1), 0.0)
    top = np.where(observed, means, -np.inf).max(axis=1, keepdims=True)
    means = np.where(top > 0, means / np.where(top > 0, top, 1.0), means)
    old = np.zeros_like(means)
    if prior is not None and prior.max() > 0:
        old = np.broadcast_to(prior / prior.max(), means.shape)
    return np.where(observed, means, old)


def continual(
    problem: Problem,
    algorithm: str,
    n_lineages: int,
    n_sessions: int | None = None,
    queries_per_session: int | None = None,
    seed: int | np.random.SeedSequence = 0,
    noise: float = 0.0,
    loss_session: int | None = None,
    hyperparameters: dict[str, Any] | None = None,
    prior: np.ndarray | None = None,
    prior_scale: float = 0.75,
    prior_fade: int | None = 3,
    chain: bool = True,
) -> pa.Table:
    """Run ``n_lineages`` independent lineages of ``n_sessions`` sessions of ``algorithm``.

    Args:
        problem: the ground truth per session (see :func:`session_truths`).
        algorithm: a name known to :func:`neuro_opt.algorithms.make`.
        n_lineages: independent lineages (``rep`` in the table).
        n_sessions: sessions per lineage (None: all of the problem's sessions).
        queries_per_session: queries in a session (None: the problem's).
        seed: int or SeedSequence. Lineage ``k`` draws from child ``k`` only, so it
            does not depend on ``n_lineages``; each of its sessions gets independent
            algorithm and response streams.
        noise: Gaussian response noise std as a fraction of ``problem.max_truth``.
        loss_session: 1-based session from which the best electrode is off (None: none).
        hyperparameters: keyword arguments of the algorithm; GP-BO also gets
            ``prior_scale`` and ``prior_fade`` unless given here.
        prior: optional ``P`` prior of the first session (any positive scale).
        prior_scale: GP-BO's weight of an injected prior (0.75 published).
        prior_fade: GP-BO fades the prior out over this many queries (3 published).
        chain: hand each session's knowledge to the next (False: every session
            starts from ``prior``; a control).

    Returns:
        Arrow table (:data:`TABLE_SCHEMA`), ``n_lineages x n_sessions x queries_per_session``
        rows ordered by lineage, session, query.
    """
    sessions = getattr(problem, "sessions", None)
    S = (sessions.shape[0] if sessions is not None else None) if n_sessions is None else n_sessions
    Q = (getattr(problem, "queries_per_session", 0) or None) if queries_per_session is None else queries_per_session
    for name, v in (("n_lineages", n_lineages), ("n_sessions", S), ("queries_per_session", Q)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    assert S is not None and Q is not None  # checked just above
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise level must be >= 0, got {noise!r}")
    truths, lost = session_truths(problem, S, loss_session)
    hp = dict(hyperparameters or {})
    if algorithm.startswith("gpbo"):
        hp = {"capacity": Q, "prior_scale": prior_scale, "prior_fade": prior_fade, **hp}
    first = None if prior is None else np.asarray(prior, dtype=np.float64)
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    shape = (n_lineages, S, Q)
    pts, best = np.empty(shape, np.int64), np.empty(shape, np.int64)
    resp, explore, exploit = np.empty(shape), np.empty(shape), np.empty(shape)
    for k, ss_k in enumerate(root.spawn(n_lineages)):
        current = first
        for s, ss_s in enumerate(ss_k.spawn(S)):
            s_alg, s_resp = ss_s.spawn(2)
            opt = algorithms.make(algorithm, problem.space, n_reps=1, seed=s_alg, prior=current, **hp)
            rng = np.random.default_rng(s_resp)
            truth = truths[s]
            top = truth.max()
            for t in range(Q):
                x = opt.ask()
                y = sample_responses(problem, x, rng, noise=noise, truth=truth)
                opt.tell(x, y)
                b = opt.best()
                pts[k, s, t], resp[k, s, t], best[k, s, t] = x[0], y[0], b[0]
                explore[k, s, t] = truth[b[0]] / top if top > 0 else 0.0
                exploit[k, s, t] = truth[x[0]] / top if top > 0 else 0.0
            if chain:
                current = handoff(opt, current)[0]
    idx = np.indices(shape).reshape(3, -1)
    session = idx[1] + 1
    lost_col = np.where((lost >= 0) & (session >= (loss_session or 0)), lost, -1)
    return trace_table(
        {
            "rep": idx[0],
            "session": session,
            "query": idx[2] + 1,
            "global_query": idx[1] * Q + idx[2] + 1,
            "point": pts,
            "response": resp,
            "best": best,
            "exploration": explore,
            "exploitation": exploit,
            "arm": [ARMS[loss_session is not None]] * idx.shape[1],
            "lost_point": lost_col,
        },
        TABLE_SCHEMA,
    )
