"""Hierarchical GP-BO over spatiotemporal multi-electrode patterns (seed 003), and its flat baseline.

A ``k``-event pattern is ``s_k = (c_1 .. c_k, dt_1 .. dt_{k-1})`` (channels on an electrode
grid, inter-event delays); :func:`neuro_opt.datasets.two_electrode.pattern_space` numbers
them. The hierarchical search learns the stages in order:

1. **stage 1**, single electrodes: GP-BO over the channels, one GP per *component* (by
   default the objective's muscles: the peak of the first muscle, the peak of the
   second), each query records every component; the next channel maximizes the largest
   component UCB, so the search looks for the best channel of every component. It stops
   after ``stage_queries[0]`` queries (``stage1_rule="budget"``, the paper's 25) or once
   every component's believed best channel has not changed for ``stage1_patience``
   queries (``"stable"``, at least ``stage1_min``).
2. **stage j >= 2**, ``j``-event patterns: GP-BO with the additive prior mean
   ``a1 * mu_{j-1}(s_{j-1}) + a2 * mu_1(c_j)``: the previous stage's posterior mean of the
   pattern's first ``j - 1`` events plus the stage-1 mean of the component that drives
   event ``j``. For two events that is ``a1 * mu1(c1) + a2 * mu2(c2)`` (by default ``mu1``
   the first muscle's single-electrode map, ``mu2`` the second's: the synergy objective
   is, without interactions, their sum at the target delay). The weights are refit at
   every query (MAP under ``N(weight_mean, weight_sd^2)``, closed form given the kernel,
   R&W 2.7), alternating with the kernel's refit; the kernel is a product of Matérn-5/2
   kernels over space (all ``2j`` channel coordinates share one length-scale, bounded to
   ``rho_space``, [1, 2] in the paper) and time (the delays, one length-scale in
   ``rho_time``), with output scale and noise std refit within bounds. The last stage
   runs until the query budget is spent; earlier stages ``j >= 2`` take
   ``stage_queries[j-1]`` queries. ``n_events > 2`` is the recursion the paper proposes;
   the two-electrode dataset holds data for one and two events only.

Every query counts toward one budget, stage 1 included; the believed best pattern at any
query is the argmax of the last stage's posterior mean, or before the last stage the
argmax of the prior that stage would start from (that prior ties a pair's delays: the tie
is broken at random once per replicate, so the belief does not flicker between queries).

The flat baseline (:class:`neuro_opt.algorithms.product_gpbo.ProductGPBO`, registered as
``gpbo_product``) is the same GP-BO on the full pattern space with a zero prior mean (or a single
prior map, weight refit).

The GP of both (a product kernel, shared length-scales per group, a refit basis prior mean) is
:class:`neuro_opt.gp.product.ProductGP`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, cast

import numpy as np
import pyarrow as pa
from numpy.typing import ArrayLike

from neuro_opt.acquisition import UCB, argmax_random_ties
from neuro_opt.algorithms.base import Optimizer, make_rng
from neuro_opt.algorithms.product_gpbo import product_gp_kwargs
from neuro_opt.gp.product import ProductGP, split_inputs
from neuro_opt.space import SearchSpace
from neuro_opt.trace import trace_schema, trace_table


class PatternProblem(Protocol):
    """What the pattern searches need from a problem (see ``TwoElectrodeProblem``):

    ``n_events`` (of the final space), ``pattern_space(k)`` (``k = 1`` the channels),
    ``muscles``, ``synergy`` (the objective's muscle indices), ``truth`` over the final space,
    and ``sample(n_events, points, rng) -> (objective b, peaks b x M)``.
    """

    @property
    def n_events(self) -> int: ...
    @property
    def muscles(self) -> Sequence[str]: ...
    @property
    def synergy(self) -> Sequence[int]: ...
    @property
    def truth(self) -> np.ndarray: ...
    def pattern_space(self, n_events: int) -> SearchSpace: ...
    def sample(
        self, n_events: np.ndarray, points: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]: ...


def _projections(spaces: list[SearchSpace]) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """For each stage ``j >= 2``: (prefix point in stage ``j - 1``, last channel) of every pattern."""
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None]
    channels = spaces[0]
    for j in range(2, len(spaces) + 1):
        sp, prev = spaces[j - 1], spaces[j - 2]
        idx = sp.index  # P x (2j + j - 1)
        coords = idx[:, : 2 * j]
        delays = idx[:, 2 * j :]
        prefix_grid = np.concatenate([coords[:, : 2 * (j - 1)], delays[:, : j - 2]], axis=1)
        prefix = np.array([prev.point_of_index(g) for g in prefix_grid], dtype=np.int64)
        last = np.array([channels.point_of_index(g) for g in coords[:, 2 * (j - 1) :]], dtype=np.int64)
        out.append((prefix, last))
    return out


class HierarchicalGPBO:
    """Hierarchical GP-BO, batched over ``b`` replicates (see the module docstring).

    Protocol shared with :class:`FlatPatternSearch`: ``ask() -> (events b, points b)`` (the
    stage, i.e. number of events, and the point in that stage's space), ``tell(events,
    points, objective, peaks)``, ``best() -> b`` points of the final space.

    Args:
        problem: a :class:`PatternProblem`.
        n_reps, seed: replicates, and an int / SeedSequence / Generator.
        kappa: UCB weight, every stage (stage 1: ``stage1_kappa`` when given).
        stage_queries: queries of stages ``1 .. k-1`` (the last stage takes the rest);
            a scalar is stage 1's budget.
        stage1_rule: ``budget`` or ``stable`` (stop stage 1 early, see the module docstring).
        stage1_min, stage1_patience: the ``stable`` rule's minimum and patience.
        stage1_model: ``muscles`` (one GP per muscle of the objective's synergy; event ``i``
            uses ``event_components[i]``) or ``objective`` (one GP of the single-event
            objective, used for every event: the paper's ``mu_Data(c1), mu_Data(c2)``).
        event_components: the stage-1 component of each event (default: event 1 -> the
            first muscle, every later event -> the second).
        stage1_rho: ``[low, high]`` length-scale bounds of the stage-1 (channel) GP.
        rho_space, rho_time, noise_min, noise_max, noise_units, outputscale_low,
            outputscale_high, fit_steps, lr: the GP of every stage (see :class:`ProductGP`).
        weight_mean, weight_sd: prior of the weights ``a1, a2`` (MAP refit each query).
        time_unit_ms: unit of the temporal inputs.
        n_events: events of the final stage (default: the problem's).
    """

    def __init__(
        self,
        problem: PatternProblem,
        n_reps: int = 1,
        seed: int | np.random.SeedSequence | np.random.Generator = 0,
        kappa: float = 3.0,
        stage_queries: int | Sequence[int] = 25,
        stage1_kappa: float | None = None,
        stage1_rule: str = "budget",
        stage1_min: int = 10,
        stage1_patience: int = 5,
        stage1_model: str = "muscles",
        event_components: Sequence[int] | None = None,
        stage1_rho: Sequence[float] = (0.5, 3.0),
        rho_space: Sequence[float] = (1.0, 2.0),
        rho_time: Sequence[float] = (5.0, 20.0),
        noise_min: float = 5e-4,
        noise_max: float = 1e-3,
        noise_units: str = "raw",
        outputscale_low: float = 0.05,
        outputscale_high: float = 1.0,
        weight_mean: Sequence[float] = (1.0, 1.0),
        weight_sd: float = 0.5,
        time_unit_ms: float = 1.0,
        fit_steps: int = 15,
        lr: float = 0.1,
        n_events: int | None = None,
    ) -> None:
        self.k = int(n_events or problem.n_events)
        if self.k < 2:
            raise ValueError(f"a hierarchical search needs at least 2 events, got n_events={self.k}")
        self.ucb, self.ucb1 = UCB(kappa), UCB(kappa if stage1_kappa is None else stage1_kappa)
        self.b = int(n_reps)
        if self.b < 1:
            raise ValueError(f"n_reps must be >= 1, got {n_reps}")
        self.rng = make_rng(seed)
        self.kappa, self.kappa1 = self.ucb.kappa, self.ucb1.kappa
        # casts: np.isscalar is a TypeGuard, which narrows neither branch to int | Sequence[int]
        sq = [cast(int, stage_queries)] if np.isscalar(stage_queries) else list(cast(Sequence[int], stage_queries))
        if len(sq) != self.k - 1 or any(int(q) < 1 for q in sq):
            raise ValueError(f"stage_queries needs {self.k - 1} budget(s) >= 1 (stages 1..{self.k - 1}), got {sq}")
        self.budgets = np.cumsum([int(q) for q in sq])  # stage j ends after budgets[j-1] queries
        if stage1_rule not in ("budget", "stable"):
            raise ValueError(f"stage1_rule must be 'budget' or 'stable', got {stage1_rule!r}")
        self.rule, self.s1_min, self.patience = stage1_rule, int(stage1_min), int(stage1_patience)
        self.spaces = [problem.pattern_space(j) for j in range(1, self.k + 1)]
        self.C = self.spaces[0].n_points
        self.proj = _projections(self.spaces)
        self.outputs: list[int | None]
        if stage1_model == "muscles":
            self.outputs = list(problem.synergy)  # muscle indices read from the peaks
        elif stage1_model == "objective":
            self.outputs = [None]
        else:
            raise ValueError(f"stage1_model must be 'muscles' or 'objective', got {stage1_model!r}")
        self.J1 = len(self.outputs)
        if event_components is None:
            event_components = [0] + [self.J1 - 1] * (self.k - 1)
        self.events = [int(e) for e in event_components]
        if len(self.events) != self.k or any(not 0 <= e < self.J1 for e in self.events):
            raise ValueError(f"event_components needs {self.k} indices in 0..{self.J1 - 1}, got {event_components}")
        wm = [float(w) for w in weight_mean]
        if len(wm) != 2:
            raise ValueError(f"weight_mean needs 2 values (a1, a2), got {weight_mean}")
        self.a0 = np.asarray(wm)
        gp = product_gp_kwargs(
            rho_space, rho_time, noise_min, noise_max, noise_units, outputscale_low, outputscale_high, fit_steps, lr
        )
        S1, _ = split_inputs(self.spaces[0], time_unit_ms)
        self.gp1 = ProductGP(
            S1,
            np.zeros((self.C, 0)),
            self.b * self.J1,
            **{**gp, "rho_space": tuple(stage1_rho)},
            capacity=int(self.budgets[0]),
        )
        self.gps: list[ProductGP | None] = [None]  # stage j's GP is gps[j - 1]; stage 1's is gp1
        for j in range(2, self.k + 1):
            S, T = split_inputs(self.spaces[j - 1], time_unit_ms)
            self.gps.append(ProductGP(S, T, self.b, n_basis=2, weight_mean=wm, weight_sd=weight_sd, **gp, capacity=64))
        self.stage = np.ones(self.b, dtype=np.int64)
        self.t = 0
        self.t_stage = np.zeros(self.b, dtype=np.int64)  # queries spent in the current stage
        self._best1 = np.full((self.b, self.J1), -1)
        self._streak = np.zeros(self.b, dtype=np.int64)
        self._post: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._tie_keys = self.rng.random((self.b, self.spaces[-1].n_points))

    # ------------------------------------------------------------- posteriors
    def _gp(self, j: int) -> ProductGP:
        """Stage ``j >= 2``'s GP."""
        gp = self.gps[j - 1]
        assert gp is not None
        return gp

    def _posterior(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Stage ``j`` posterior mean and variance, normalized (stage 1: ``b x J1 x C``; else ``b x P_j``)."""
        if j not in self._post:
            gp = self.gp1 if j == 1 else self._gp(j)
            m, v = gp.posterior()
            m, v = m.numpy(), v.numpy()
            if j == 1:
                m, v = m.reshape(self.b, self.J1, self.C), v.reshape(self.b, self.J1, self.C)
            self._post[j] = (m, v)
        return self._post[j]

    def stage1_means(self) -> np.ndarray:
        """``b x J1 x C`` stage-1 posterior means in response units."""
        m, _ = self._posterior(1)
        return m * self.gp1.scale.numpy().reshape(self.b, self.J1, 1)

    def stage_mean(self, j: int) -> np.ndarray:
        """``b x P_j`` posterior mean of stage ``j >= 2`` in response units."""
        return self._posterior(j)[0] * self._gp(j).scale.numpy()[:, None]

    def prior_basis(self, j: int, prev_mean: np.ndarray | None = None) -> np.ndarray:
        """Stage ``j``'s basis maps ``b x P_j x 2`` in response units: the previous stage's mean of
        the prefix and the stage-1 mean of event ``j``'s component at the last channel.

        ``prev_mean`` (``b x P_{j-1}``) replaces stage ``j - 1``'s posterior mean (for ``j > 2``).
        """
        mu1 = self.stage1_means()
        proj = self.proj[j - 1]
        assert proj is not None  # None only for stage 1
        prefix, last = proj
        if j == 2:
            first = mu1[:, self.events[0], :][:, prefix]
        else:
            prev = self.stage_mean(j - 1) if prev_mean is None else prev_mean
            first = prev[:, prefix]
        second = mu1[:, self.events[j - 1], :][:, last]
        return np.stack([first, second], axis=-1)

    def _enter(self, j: int, rows: np.ndarray) -> None:
        """Start stage ``j`` for ``rows``: its prior from the stages before, its scale the prior's max."""
        H = self.prior_basis(j)
        top = (H @ self.a0).max(axis=1)
        scale = np.where(top > 0, top, 1.0)
        gp = self._gp(j)
        gp.set_scale(scale, rows)
        gp.set_basis(H, rows)
        self.stage[rows] = j
        self.t_stage[rows] = 0
        self._post.pop(j, None)

    # ----------------------------------------------------------------- ask/tell
    def ask(self) -> tuple[np.ndarray, np.ndarray]:
        points = np.empty(self.b, dtype=np.int64)
        one = self.stage == 1
        if one.any():
            if self.t == 0:
                points[one] = self.rng.integers(0, self.C, int(one.sum()))
            else:
                m, v = self._posterior(1)
                ucb = self.ucb1(m, v).max(axis=1)  # b x C: the best of the component UCBs
                points[one] = argmax_random_ties(ucb[one], self.rng)
        for j in range(2, self.k + 1):
            rows = self.stage == j
            if rows.any():
                m, v = self._posterior(j)
                points[rows] = argmax_random_ties(self.ucb(m, v)[rows], self.rng)
        return self.stage.copy(), points

    def tell(self, events: ArrayLike, points: ArrayLike, objective: ArrayLike, peaks: ArrayLike) -> None:
        events = np.asarray(events, dtype=np.int64)
        points = np.asarray(points, dtype=np.int64)
        objective = np.asarray(objective, dtype=np.float64)
        if events.shape != (self.b,) or not np.array_equal(events, self.stage):
            raise ValueError(f"tell expects the stages ask() returned, {self.stage.tolist()}, got {events.tolist()}")
        one = self.stage == 1
        if one.any():
            if self.outputs == [None]:
                y = objective[:, None]
            else:
                y = np.asarray(peaks, dtype=np.float64)[:, cast(list[int], self.outputs)]  # muscles: no None
            rows = np.repeat(one, self.J1)
            self.gp1.observe(np.repeat(points, self.J1), np.where(rows, y.reshape(-1), 0.0), rows)
            self.gp1.fit()
        for j in range(2, self.k + 1):
            rows = self.stage == j
            if rows.any():
                self._gp(j).observe(points, np.where(rows, objective, 0.0), rows)
                self._gp(j).fit()
        self._post = {}
        self.t += 1
        self.t_stage += 1
        self._advance()

    def _advance(self) -> None:
        one = self.stage == 1
        if one.any():
            done = one & (self.t_stage >= self.budgets[0])
            if self.rule == "stable":
                best = self._posterior(1)[0].argmax(axis=2)  # b x J1
                same = (best == self._best1).all(axis=1)
                self._streak = np.where(same, self._streak + 1, 0)
                self._best1 = best
                done |= one & (self.t_stage >= self.s1_min) & (self._streak >= self.patience)
            if done.any():
                self._enter(2, done)
        for j in range(2, self.k):
            done = (self.stage == j) & (self.t_stage >= self.budgets[j - 1] - self.budgets[j - 2])
            if done.any():
                self._enter(j + 1, done)

    def best(self) -> np.ndarray:
        """``b`` believed-best points of the final space: the argmax of the last stage's posterior
        mean, or for rows not there yet, of the prior it would start from (weights ``weight_mean``)."""
        mean: np.ndarray | None = None
        for j in range(2, self.k + 1):
            prior = self.prior_basis(j, prev_mean=mean) @ self.a0
            reached = self.stage >= j
            mean = np.where(reached[:, None], self.stage_mean(j), prior) if reached.any() else prior
        assert mean is not None  # k >= 2 (checked in __init__)
        final = self.stage == self.k
        out = np.empty(self.b, dtype=np.int64)
        if final.any():
            out[final] = argmax_random_ties(mean[final], self.rng)
        if (~final).any():  # a prior ties every delay: keep one random choice per replicate, not a new one per query
            m = mean[~final]
            top = m.max(axis=1, keepdims=True)
            ties = m >= top - 1e-12 * np.maximum(np.abs(top), 1.0)
            out[~final] = np.where(ties, self._tie_keys[~final], -1.0).argmax(axis=1)
        return out


class FlatPatternSearch:
    """A standard optimizer over the final pattern space behind the pattern protocol
    (``ask() -> (events, points)``, ``tell(events, points, objective, peaks)``, ``best()``)."""

    def __init__(self, problem: PatternProblem, optimizer: Optimizer) -> None:
        self.k = int(problem.n_events)
        self.opt = optimizer
        self.b = optimizer.b

    def ask(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(self.b, self.k), self.opt.ask()

    def tell(self, events: ArrayLike, points: ArrayLike, objective: ArrayLike, peaks: ArrayLike | None = None) -> None:
        self.opt.tell(points, objective)

    def best(self) -> np.ndarray:
        return self.opt.best()


METHODS = ("hierarchical", "flat")


def make_method(
    name: str,
    problem: PatternProblem,
    n_reps: int = 1,
    seed: int | np.random.SeedSequence | np.random.Generator = 0,
    **hyperparameters: Any,
) -> HierarchicalGPBO | FlatPatternSearch:
    """``hierarchical``, ``flat`` (:class:`ProductGPBO` on the final space, no prior) or any name of
    :func:`neuro_opt.algorithms.make` run flat on the final space."""
    from neuro_opt import algorithms

    if name == "hierarchical":
        try:
            return HierarchicalGPBO(problem, n_reps=n_reps, seed=seed, **hyperparameters)
        except TypeError as exc:
            raise ValueError(f"method 'hierarchical': bad hyperparameters {sorted(hyperparameters)}: {exc}") from None
    space = problem.pattern_space(problem.n_events)
    alg = "gpbo_product" if name == "flat" else name
    return FlatPatternSearch(problem, algorithms.make(alg, space, n_reps=n_reps, seed=seed, **hyperparameters))


#: the trace (``query`` counts stage 1 too; ``point`` is in the queried stage's space, ``best`` in the
#: final one; ``exploitation``, the truth at the queried pattern / max truth, is null for queries of
#: earlier stages, whose patterns are not in the final space) and the pattern columns
TRACE_SCHEMA = trace_schema(
    ("stage", pa.int8()),  # events of the queried pattern
    ("accuracy", pa.float64()),  # 1 if the believed best is the true best pattern
)


def run_patterns(
    problem: PatternProblem,
    method: str,
    n_reps: int,
    n_queries: int,
    seed: int | np.random.SeedSequence = 0,
    hyperparameters: dict[str, Any] | None = None,
    progress: Callable[[int], object] | None = None,
) -> pa.Table:
    """Run ``n_reps`` replicates of a pattern search on ``problem`` for ``n_queries`` total queries.

    Args:
        problem: a :class:`PatternProblem` (e.g. from ``load("two_electrode")``).
        method: see :func:`make_method`.
        seed: int or SeedSequence; the search and the trial draws get independent streams.
        hyperparameters: keyword arguments of the method.
    Returns:
        Arrow table (:data:`TRACE_SCHEMA`), ``n_reps x n_queries`` rows.
    """
    if not isinstance(n_queries, (int, np.integer)) or n_queries < 1:
        raise ValueError(f"n_queries must be a positive integer, got {n_queries!r}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    s_alg, s_resp = ss.spawn(2)
    opt = make_method(method, problem, n_reps=n_reps, seed=np.random.default_rng(s_alg), **(hyperparameters or {}))
    rng = np.random.default_rng(s_resp)
    truth = problem.truth
    top = truth.max()
    shape = (n_reps, n_queries)
    stage, pts, best = (np.empty(shape, dtype=np.int64) for _ in range(3))
    resp = np.empty(shape)
    for t in range(n_queries):
        ev, x = opt.ask()
        y, peaks = problem.sample(ev, x, rng)
        opt.tell(ev, x, y, peaks)
        stage[:, t], pts[:, t], resp[:, t], best[:, t] = ev, x, y, opt.best()
        if progress is not None:
            progress(t + 1)
    acc = (truth[best] >= top).astype(np.float64)
    expl = truth[best] / top if top > 0 else np.zeros(shape)
    final = stage == problem.n_events
    exploit = np.where(final, truth[np.where(final, pts, 0)] / top if top > 0 else 0.0, np.nan)
    return trace_table(
        {
            "rep": np.repeat(np.arange(n_reps), n_queries),
            "query": np.tile(np.arange(1, n_queries + 1), n_reps),
            "point": pts,
            "response": resp,
            "best": best,
            "exploration": expl,
            "exploitation": pa.array(exploit.ravel(), pa.float64(), mask=~final.ravel()),
            "stage": stage,
            "accuracy": acc,
        },
        TRACE_SCHEMA,
    )
