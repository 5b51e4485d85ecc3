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

The flat baseline (:class:`ProductGPBO`, registered as ``gpbo_product``) is the same GP-BO
on the full pattern space with a zero prior mean (or a single prior map, weight refit).

Why a GP is written here instead of using :class:`neuro_opt.gp.BatchGP`: the engine's kernel
is one Matérn-5/2 over all dimensions with one length-scale per dimension and one set of
bounds; this stage needs (1) a *product* of Matérns over dimension groups, (2) length-scales
*shared* within a group with per-group bounds, (3) a prior mean that is a weighted sum of
basis maps whose weights are refit per replicate (the engine has one map and a scalar
weight that is set, not fit), (4) a normalization scale fixed per replicate (the prior's
units must not move as responses arrive) and noise bounds in response units, and (5)
observations for only some replicates at a time (replicates leave stage 1 at different
queries under the stopping rule). :class:`ProductGP` is that small batched exact GP, with
autograd on the marginal likelihood (the matrices are at most a hundred observations).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from neuro_opt.algorithms.base import Optimizer, argmax_random_ties, make_rng
from neuro_opt.gp.engine import safe_cholesky
from neuro_opt.space import SearchSpace

SQRT5 = math.sqrt(5.0)


def _m52(r2: torch.Tensor) -> torch.Tensor:
    """Matérn-5/2 correlation from squared scaled distances."""
    r = torch.sqrt(torch.clamp(r2, min=1e-30))
    return (1.0 + SQRT5 * r + (5.0 / 3.0) * r2) * torch.exp(-SQRT5 * r)


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``... x n x d`` and ``... x m x d`` -> ``... x n x m`` squared distances (0 when ``d = 0``)."""
    if a.shape[-1] == 0:
        return torch.zeros(*torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-2],
                           dtype=a.dtype, device=a.device)
    return ((a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2).sum(-1)


def split_inputs(space: SearchSpace, time_unit_ms: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """GP inputs of a pattern space: spatial ``P x ds`` (grid indices of every dimension not
    named ``*_ms``) and temporal ``P x dt`` (the ``*_ms`` dimensions' values in units of
    ``time_unit_ms``)."""
    t_dims = [i for i, n in enumerate(space.names) if n.endswith("_ms")]
    s_dims = [i for i in range(space.ndim) if i not in t_dims]
    S = space.X[:, s_dims]
    T = np.stack([np.asarray(space.dims[i].values, dtype=np.float64)[space.index[:, i]] / time_unit_ms
                  for i in t_dims], axis=1) if t_dims else np.zeros((space.n_points, 0))
    return S, T


class ProductGP:
    """Batched exact GP over ``P`` discrete points with kernel
    ``os * m52(|s - s'| / l_s) * m52(|t - t'| / l_t)`` and prior mean ``H a``.

    Shapes: ``b`` replicates (rows), ``P`` points, ``J`` basis maps, ``N`` observations
    (padded to the largest row count).

    Args:
        S: ``P x ds`` spatial inputs (one shared length-scale); T: ``P x dt`` temporal inputs
            (``dt`` may be 0: no temporal factor).
        n_reps: ``b``.
        n_basis: ``J`` prior basis maps (0: zero prior mean).
        weight_mean, weight_sd: Gaussian prior of the basis weights (``J`` values, scalar).
        rho_space, rho_time, outputscale: bounds of the refit hyperparameters.
        noise: bounds of the noise std, in response units (``noise_units="raw"``: divided by each
            row's normalization scale) or on the normalized scale (``"normalized"``).
        fit_steps, lr: Adam steps per refit (warm-started) and learning rate.
        capacity: observations per row to allocate for (grows).

    Responses are divided by a per-row scale: the largest response seen so far (default) or a
    value fixed with :meth:`set_scale` (then the basis, given in response units, keeps its meaning).
    """

    def __init__(self, S, T, n_reps: int, n_basis: int = 0, weight_mean=None, weight_sd: float = 0.5,
                 rho_space=(1.0, 2.0), rho_time=(0.5, 2.0), noise=(5e-4, 1e-3), noise_units: str = "raw",
                 outputscale=(0.05, 1.0), fit_steps: int = 20, lr: float = 0.1, capacity: int = 32,
                 max_jitter: float = 1e-6):
        self.opts = dict(dtype=torch.float64, device="cpu")
        self.S = torch.as_tensor(np.asarray(S, dtype=np.float64))
        self.T = torch.as_tensor(np.asarray(T, dtype=np.float64)).reshape(self.S.shape[0], -1)
        self.P = self.S.shape[0]
        self.b, self.J = int(n_reps), int(n_basis)
        for name, (lo, hi) in (("rho_space", rho_space), ("rho_time", rho_time), ("noise", noise),
                               ("outputscale", outputscale)):
            if not 0 < float(lo) < float(hi):
                raise ValueError(f"{name} bounds must satisfy 0 < low < high, got {lo!r}, {hi!r}")
        if noise_units not in ("raw", "normalized"):
            raise ValueError(f"noise_units must be 'raw' or 'normalized', got {noise_units!r}")
        if not weight_sd > 0:
            raise ValueError(f"weight_sd must be > 0, got {weight_sd!r}")
        self.noise_units = noise_units
        self.lo = torch.tensor([rho_space[0], rho_time[0], noise[0], outputscale[0]], **self.opts)
        self.hi = torch.tensor([rho_space[1], rho_time[1], noise[1], outputscale[1]], **self.opts)
        init = torch.stack([torch.clamp(torch.tensor(1.0, **self.opts), self.lo[0], self.hi[0]),
                            torch.clamp(torch.tensor(1.0, **self.opts), self.lo[1], self.hi[1]),
                            torch.sqrt(self.lo[2] * self.hi[2]),
                            torch.clamp(torch.tensor(0.25, **self.opts), self.lo[3], self.hi[3])])
        frac = torch.clamp((init - self.lo) / (self.hi - self.lo), 0.01, 0.99)
        self.raw = torch.log(frac / (1 - frac)).expand(self.b, 4).clone()
        self.fit_steps, self.lr, self.max_jitter = int(fit_steps), float(lr), max_jitter
        wm = np.ones(self.J) if weight_mean is None else np.asarray(weight_mean, dtype=np.float64).reshape(-1)
        if wm.shape != (self.J,):
            raise ValueError(f"weight_mean needs {self.J} values, got {wm.tolist()}")
        self.a0 = torch.as_tensor(wm, **self.opts)
        self.wsd = float(weight_sd)
        self.H = torch.zeros(self.b, self.P, self.J, **self.opts)
        self.a = self.a0.expand(self.b, self.J).clone()
        self.pts = torch.zeros(self.b, max(int(capacity), 1), dtype=torch.long)
        self.y = torch.zeros(self.b, max(int(capacity), 1), **self.opts)
        self.n = torch.zeros(self.b, dtype=torch.long)
        self.ymax = torch.zeros(self.b, **self.opts)
        self.scale = torch.ones(self.b, **self.opts)
        self.fixed = torch.zeros(self.b, dtype=torch.bool)

    # ----------------------------------------------------------------- state
    def _rows(self, rows) -> torch.Tensor:
        if rows is None:
            return torch.ones(self.b, dtype=torch.bool)
        rows = torch.as_tensor(np.asarray(rows, dtype=bool))
        if rows.shape != (self.b,):
            raise ValueError(f"rows must be a ({self.b},) boolean mask, got {tuple(rows.shape)}")
        return rows

    def set_scale(self, scale, rows=None) -> None:
        """Fix the normalization scale of ``rows`` (``b`` mask) to ``scale`` (``b`` or scalar, > 0)."""
        rows = self._rows(rows)
        s = torch.as_tensor(np.asarray(scale, dtype=np.float64)).expand(self.b)
        if bool((s[rows] <= 0).any()) or not bool(torch.isfinite(s[rows]).all()):
            raise ValueError(f"normalization scales must be finite and > 0, got {s[rows].tolist()}")
        self.scale = torch.where(rows, s, self.scale)
        self.fixed = self.fixed | rows

    def set_basis(self, H, rows=None) -> None:
        """Prior basis maps of ``rows``: ``H`` is ``b x P x J`` in response units (divided by the scale)."""
        rows = self._rows(rows)
        H = torch.as_tensor(np.asarray(H, dtype=np.float64))
        if H.shape != (self.b, self.P, self.J):
            raise ValueError(f"basis must have shape ({self.b}, {self.P}, {self.J}), got {tuple(H.shape)}")
        self.H[rows] = H[rows] / self.scale[rows, None, None]

    def observe(self, points, y, rows=None) -> None:
        """Add one observation to each row of ``rows``: ``points`` and raw ``y`` are ``b`` (others ignored)."""
        rows = self._rows(rows)
        pts = torch.as_tensor(np.asarray(points, dtype=np.int64))
        yy = torch.as_tensor(np.asarray(y, dtype=np.float64))
        if pts.shape != (self.b,) or yy.shape != (self.b,):
            raise ValueError(f"observe expects ({self.b},) points and responses, got {tuple(pts.shape)}, "
                             f"{tuple(yy.shape)}")
        if not bool(torch.isfinite(yy[rows]).all()):
            raise ValueError("responses must be finite")
        if bool(((pts[rows] < 0) | (pts[rows] >= self.P)).any()):
            raise ValueError(f"point index out of range 0..{self.P - 1}: {pts[rows].tolist()}")
        if int(self.n.max()) >= self.pts.shape[1]:
            cap = 2 * self.pts.shape[1]
            self.pts = torch.cat([self.pts, torch.zeros_like(self.pts)], 1)[:, :cap]
            self.y = torch.cat([self.y, torch.zeros_like(self.y)], 1)[:, :cap]
        idx = torch.nonzero(rows).flatten()
        self.pts[idx, self.n[idx]] = pts[idx]
        self.y[idx, self.n[idx]] = yy[idx]
        self.n[idx] += 1
        self.ymax = torch.where(rows, torch.maximum(self.ymax, yy), self.ymax)
        running = ~self.fixed & (self.ymax > 0)
        self.scale = torch.where(running, self.ymax, self.scale)

    # ------------------------------------------------------------- algebra
    def hyper(self, raw: torch.Tensor | None = None) -> dict:
        """Current hyperparameters (``b`` each): ``rho_space, rho_time, noise`` (normalized), ``outputscale``."""
        raw = self.raw if raw is None else raw
        v = self.lo + (self.hi - self.lo) * torch.sigmoid(raw)
        noise = v[:, 2] / self.scale if self.noise_units == "raw" else v[:, 2]
        return {"rho_space": v[:, 0], "rho_time": v[:, 1], "noise": noise, "outputscale": v[:, 3]}

    def _data(self) -> dict:
        N = int(self.n.max())
        mask = (torch.arange(N)[None, :] < self.n[:, None]).to(torch.float64)
        pts = self.pts[:, :N]
        far = 1e6 * (1.0 + torch.arange(N, dtype=torch.float64))[None, :, None]
        Sx = torch.where(mask[..., None] > 0, self.S[pts], far.expand(self.b, N, self.S.shape[1]))
        Tx = self.T[pts]
        y = self.y[:, :N] / self.scale[:, None] * mask
        Hx = torch.gather(self.H, 1, pts[..., None].expand(self.b, N, self.J)) * mask[..., None]
        return dict(N=N, mask=mask, pts=pts, S=Sx, T=Tx, y=y, H=Hx,
                    ds=_sqdist(Sx, Sx), dt=_sqdist(Tx, Tx))

    def _kn(self, data: dict, h: dict) -> torch.Tensor:
        mask = data["mask"]
        k = _m52(data["ds"] / h["rho_space"][:, None, None] ** 2) * _m52(data["dt"] / h["rho_time"][:, None, None] ** 2)
        k = h["outputscale"][:, None, None] * k * (mask[:, :, None] * mask[:, None, :])
        return k + torch.diag_embed(mask * h["noise"][:, None] ** 2 + (1.0 - mask))

    def _weights(self, L: torch.Tensor, data: dict) -> torch.Tensor:
        """MAP basis weights given the kernel (``b x J``)."""
        if self.J == 0:
            return self.a0.expand(self.b, 0)
        H, y = data["H"], data["y"]
        KiH = torch.cholesky_solve(H, L)  # b x N x J
        Kiy = torch.cholesky_solve(y[..., None], L)[..., 0]
        A = H.transpose(1, 2) @ KiH + torch.eye(self.J, **self.opts) / self.wsd ** 2
        rhs = (H * Kiy[..., None]).sum(1) + self.a0 / self.wsd ** 2
        return torch.linalg.solve(A, rhs[..., None])[..., 0]

    def _chol(self, Kn: torch.Tensor, h: dict) -> torch.Tensor:
        def info(r):
            return (f"rho_space={float(h['rho_space'][r]):.3g}, rho_time={float(h['rho_time'][r]):.3g}, "
                    f"noise={float(h['noise'][r]):.3g}, outputscale={float(h['outputscale'][r]):.3g}")
        return safe_cholesky(Kn, self.max_jitter, "product-kernel GP covariance", info)

    def mll(self, data: dict, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log marginal likelihood of each row at the MAP weights (``b``), and those weights."""
        h = self.hyper(raw)
        L = self._chol(self._kn(data, h), h)
        a = self._weights(L, data).detach()  # profiled out: the envelope theorem makes this exact
        r = data["y"] - (data["H"] * a[:, None, :]).sum(-1) if self.J else data["y"]
        alpha = torch.cholesky_solve(r[..., None], L)[..., 0]
        logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        nu = data["mask"].sum(-1)
        return -0.5 * (r * alpha).sum(-1) - logdet - 0.5 * nu * math.log(2 * math.pi), a

    def fit(self) -> None:
        """Refit the hyperparameters (Adam on the MLL, warm-started) and the basis weights of every row."""
        if int(self.n.max()) == 0:
            return
        data = self._data()
        raw = self.raw.clone().requires_grad_(True)
        if self.fit_steps > 0:
            opt = torch.optim.Adam([raw], lr=self.lr)
            for _ in range(self.fit_steps):
                opt.zero_grad()
                mll, _ = self.mll(data, raw)
                (-mll.sum()).backward()
                opt.step()
        with torch.no_grad():
            self.raw = raw.detach().clone()
            h = self.hyper()
            self.a = self._weights(self._chol(self._kn(data, h), h), data)

    def posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance on the normalized scale, ``b x P`` each."""
        with torch.no_grad():
            h = self.hyper()
            prior = (self.H * self.a[:, None, :]).sum(-1) if self.J else torch.zeros(self.b, self.P, **self.opts)
            if int(self.n.max()) == 0:
                return prior, h["outputscale"][:, None].expand(self.b, self.P).clone()
            data = self._data()
            L = self._chol(self._kn(data, h), h)
            a = self._weights(L, data)
            self.a = a
            prior = (self.H * a[:, None, :]).sum(-1) if self.J else prior
            r = data["y"] - (data["H"] * a[:, None, :]).sum(-1) if self.J else data["y"]
            ks = _m52(_sqdist(data["S"], self.S.expand(self.b, -1, -1)) / h["rho_space"][:, None, None] ** 2)
            kt = _m52(_sqdist(data["T"], self.T.expand(self.b, -1, -1)) / h["rho_time"][:, None, None] ** 2)
            Kc = h["outputscale"][:, None, None] * ks * kt * data["mask"][..., None]
            A = torch.linalg.solve_triangular(L, Kc, upper=False)
            beta = torch.linalg.solve_triangular(L, r[..., None], upper=False)[..., 0]
            mean = prior + (A * beta[..., None]).sum(-2)
            var = torch.clamp(h["outputscale"][:, None] - (A * A).sum(-2), min=1e-12)
        return mean, var


def _gp_kwargs(rho_space, rho_time, noise_min, noise_max, noise_units, outputscale_min, outputscale_max,
               fit_steps, lr) -> dict:
    return dict(rho_space=tuple(rho_space), rho_time=tuple(rho_time), noise=(noise_min, noise_max),
                noise_units=noise_units, outputscale=(outputscale_min, outputscale_max), fit_steps=fit_steps, lr=lr)


class ProductGPBO(Optimizer):
    """Flat GP-BO with the product space x time kernel over a whole pattern space (the baseline).

    UCB ``mu + kappa * sigma`` on :class:`ProductGP`; ``n_random`` random queries first (or
    the prior's argmax first when a prior is given); the believed best is the posterior
    mean's argmax. A ``prior`` map becomes one basis with weight ``prior_scale`` a priori,
    refit like the hierarchical weights. Spatial inputs are the grid indices of the
    dimensions not named ``*_ms``, temporal ones the ``*_ms`` values / ``time_unit_ms``.

    Args:
        kappa, n_random: acquisition and initial random queries.
        rho_space, rho_time: ``[low, high]`` length-scale bounds (space in grid steps, time in
            ``time_unit_ms``, by default ms). The delay length-scale's upper bound matters: the
            synergy objective peaks at one delay, and a length-scale as long as the delay step
            (20 ms) smooths that peak away, so stage 2 wastes queries on the wrong delays.
        noise_min, noise_max, noise_units: noise std bounds, ``raw`` (response units) or
            ``normalized`` (divided by the largest response seen).
        outputscale_min, outputscale_max: kernel output scale bounds (normalized scale).
        weight_sd: prior std of the prior map's weight.
        fit_steps, lr: refit effort per query.
    """

    name = "gpbo_product"

    def __init__(self, space, n_reps=1, seed=0, prior=None, kappa: float = 3.0, n_random: int = 1,
                 rho_space: Sequence[float] = (1.0, 2.0), rho_time: Sequence[float] = (5.0, 20.0),
                 noise_min: float = 1e-3, noise_max: float = 0.05, noise_units: str = "normalized",
                 outputscale_min: float = 0.05, outputscale_max: float = 1.0, prior_scale: float = 0.75,
                 weight_sd: float = 0.5, time_unit_ms: float = 1.0, fit_steps: int = 15, lr: float = 0.1,
                 capacity: int | None = None):
        super().__init__(space, n_reps, seed, prior)
        if not kappa >= 0:
            raise ValueError(f"kappa must be >= 0, got {kappa!r}")
        if int(n_random) < 0 or (prior is None and int(n_random) < 1):
            raise ValueError(f"n_random must be >= 1 (>= 0 with a prior), got {n_random!r}")
        self.kappa, self.n_random = float(kappa), int(n_random)
        S, T = split_inputs(space, time_unit_ms)
        J = 0 if self.prior is None else 1
        self.gp = ProductGP(S, T, self.b, n_basis=J, weight_mean=[prior_scale] * J, weight_sd=weight_sd,
                            capacity=capacity or 64,
                            **_gp_kwargs(rho_space, rho_time, noise_min, noise_max, noise_units, outputscale_min,
                                         outputscale_max, fit_steps, lr))
        if J:
            top = self.prior.max()
            self.gp.set_scale(1.0)
            self.gp.fixed[:] = False  # the scale still follows the responses; the map is normalized to max 1
            self.gp.H[:] = torch.as_tensor(self.prior / top if top > 0 else self.prior)[None, :, None]
        self._post = None

    @property
    def n_initial(self) -> int:
        return self.n_random + (1 if self.prior is not None else 0)

    def ask(self) -> np.ndarray:
        if self.t == 0:
            return self.ask_first()
        if self.t < self.n_initial:
            return self.rng.integers(0, self.P, self.b)
        mean, var = self.posterior()
        return argmax_random_ties(mean + self.kappa * np.sqrt(var), self.rng)

    def _tell(self, points, responses) -> None:
        self.gp.observe(points, responses)
        self._post = None
        if self.t >= self.n_initial:
            self.gp.fit()

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance on the normalized scale, ``b x P`` each."""
        if self._post is None:
            m, v = self.gp.posterior()
            self._post = (m.numpy(), v.numpy())
        return self._post

    def best(self) -> np.ndarray:
        if self.t == 0:
            return self.ask_first()
        return argmax_random_ties(self.posterior()[0], self.rng)


# ----------------------------------------------------------------------------- patterns
class PatternProblem:
    """What the pattern searches need from a problem (see ``TwoElectrodeProblem``):

    ``n_events`` (of the final space), ``pattern_space(k)`` (``k = 1`` the channels),
    ``muscles``, ``synergy`` (the objective's muscle indices), ``truth`` over the final space,
    and ``sample(n_events, points, rng) -> (objective b, peaks b x M)``.
    """


def _projections(spaces: list[SearchSpace]) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """For each stage ``j >= 2``: (prefix point in stage ``j - 1``, last channel) of every pattern."""
    out: list = [None]
    channels = spaces[0]
    for j in range(2, len(spaces) + 1):
        sp, prev = spaces[j - 1], spaces[j - 2]
        idx = sp.index  # P x (2j + j - 1)
        coords = idx[:, :2 * j]
        delays = idx[:, 2 * j:]
        prefix_grid = np.concatenate([coords[:, :2 * (j - 1)], delays[:, :j - 2]], axis=1)
        prefix = np.array([prev.point_of_index(g) for g in prefix_grid], dtype=np.int64)
        last = np.array([channels.point_of_index(g) for g in coords[:, 2 * (j - 1):]], dtype=np.int64)
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
        rho_space, rho_time, noise_min, noise_max, noise_units, outputscale_min,
            outputscale_max, fit_steps, lr: the GP of every stage (see :class:`ProductGP`).
        weight_mean, weight_sd: prior of the weights ``a1, a2`` (MAP refit each query).
        time_unit_ms: unit of the temporal inputs.
        n_events: events of the final stage (default: the problem's).
    """

    def __init__(self, problem, n_reps: int = 1, seed=0, kappa: float = 3.0, stage_queries=25,
                 stage1_kappa: float | None = None, stage1_rule: str = "budget", stage1_min: int = 10,
                 stage1_patience: int = 5, stage1_model: str = "muscles",
                 event_components: Sequence[int] | None = None, stage1_rho: Sequence[float] = (0.5, 3.0),
                 rho_space: Sequence[float] = (1.0, 2.0), rho_time: Sequence[float] = (5.0, 20.0),
                 noise_min: float = 5e-4, noise_max: float = 1e-3, noise_units: str = "raw",
                 outputscale_min: float = 0.05, outputscale_max: float = 1.0,
                 weight_mean: Sequence[float] = (1.0, 1.0), weight_sd: float = 0.5, time_unit_ms: float = 1.0,
                 fit_steps: int = 15, lr: float = 0.1, n_events: int | None = None):
        self.k = int(n_events or problem.n_events)
        if self.k < 2:
            raise ValueError(f"a hierarchical search needs at least 2 events, got n_events={self.k}")
        if not kappa >= 0 or not (stage1_kappa is None or stage1_kappa >= 0):
            raise ValueError(f"kappa and stage1_kappa must be >= 0, got {kappa!r}, {stage1_kappa!r}")
        self.b = int(n_reps)
        if self.b < 1:
            raise ValueError(f"n_reps must be >= 1, got {n_reps}")
        self.rng = make_rng(seed)
        self.kappa = float(kappa)
        self.kappa1 = self.kappa if stage1_kappa is None else float(stage1_kappa)
        sq = [stage_queries] if np.isscalar(stage_queries) else list(stage_queries)
        if len(sq) != self.k - 1 or any(int(q) < 1 for q in sq):
            raise ValueError(f"stage_queries needs {self.k - 1} budget(s) >= 1 (stages 1..{self.k - 1}), got {sq}")
        self.budgets = np.cumsum([int(q) for q in sq])  # stage j ends after budgets[j-1] queries
        if stage1_rule not in ("budget", "stable"):
            raise ValueError(f"stage1_rule must be 'budget' or 'stable', got {stage1_rule!r}")
        self.rule, self.s1_min, self.patience = stage1_rule, int(stage1_min), int(stage1_patience)
        self.spaces = [problem.pattern_space(j) for j in range(1, self.k + 1)]
        self.C = self.spaces[0].n_points
        self.proj = _projections(self.spaces)
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
        gp = _gp_kwargs(rho_space, rho_time, noise_min, noise_max, noise_units, outputscale_min, outputscale_max,
                        fit_steps, lr)
        S1, _ = split_inputs(self.spaces[0], time_unit_ms)
        self.gp1 = ProductGP(S1, np.zeros((self.C, 0)), self.b * self.J1, **{**gp, "rho_space": tuple(stage1_rho)},
                             capacity=int(self.budgets[0]))
        self.gps = [None]
        for j in range(2, self.k + 1):
            S, T = split_inputs(self.spaces[j - 1], time_unit_ms)
            self.gps.append(ProductGP(S, T, self.b, n_basis=2, weight_mean=wm, weight_sd=weight_sd, **gp,
                                      capacity=64))
        self.stage = np.ones(self.b, dtype=np.int64)
        self.t = 0
        self.t_stage = np.zeros(self.b, dtype=np.int64)  # queries spent in the current stage
        self._best1 = np.full((self.b, self.J1), -1)
        self._streak = np.zeros(self.b, dtype=np.int64)
        self._post: dict = {}
        self._tie_keys = self.rng.random((self.b, self.spaces[-1].n_points))

    # ------------------------------------------------------------- posteriors
    def _posterior(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Stage ``j`` posterior mean and variance, normalized (stage 1: ``b x J1 x C``; else ``b x P_j``)."""
        if j not in self._post:
            gp = self.gp1 if j == 1 else self.gps[j - 1]
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
        return self._posterior(j)[0] * self.gps[j - 1].scale.numpy()[:, None]

    def prior_basis(self, j: int, prev_mean: np.ndarray | None = None) -> np.ndarray:
        """Stage ``j``'s basis maps ``b x P_j x 2`` in response units: the previous stage's mean of
        the prefix and the stage-1 mean of event ``j``'s component at the last channel.

        ``prev_mean`` (``b x P_{j-1}``) replaces stage ``j - 1``'s posterior mean (for ``j > 2``).
        """
        mu1 = self.stage1_means()
        prefix, last = self.proj[j - 1]
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
        gp = self.gps[j - 1]
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
                ucb = (m + self.kappa1 * np.sqrt(v)).max(axis=1)  # b x C: the best of the component UCBs
                points[one] = argmax_random_ties(ucb[one], self.rng)
        for j in range(2, self.k + 1):
            rows = self.stage == j
            if rows.any():
                m, v = self._posterior(j)
                points[rows] = argmax_random_ties((m + self.kappa * np.sqrt(v))[rows], self.rng)
        return self.stage.copy(), points

    def tell(self, events, points, objective, peaks) -> None:
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
                y = np.asarray(peaks, dtype=np.float64)[:, self.outputs]
            rows = np.repeat(one, self.J1)
            self.gp1.observe(np.repeat(points, self.J1), np.where(rows, y.reshape(-1), 0.0), rows)
            self.gp1.fit()
        for j in range(2, self.k + 1):
            rows = self.stage == j
            if rows.any():
                self.gps[j - 1].observe(points, np.where(rows, objective, 0.0), rows)
                self.gps[j - 1].fit()
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
        mean = None
        for j in range(2, self.k + 1):
            prior = self.prior_basis(j, prev_mean=mean) @ self.a0
            reached = self.stage >= j
            mean = np.where(reached[:, None], self.stage_mean(j), prior) if reached.any() else prior
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

    def __init__(self, problem, optimizer: Optimizer):
        self.k = int(problem.n_events)
        self.opt = optimizer
        self.b = optimizer.b

    def ask(self):
        return np.full(self.b, self.k), self.opt.ask()

    def tell(self, events, points, objective, peaks=None) -> None:
        self.opt.tell(points, objective)

    def best(self) -> np.ndarray:
        return self.opt.best()


METHODS = ("hierarchical", "flat")


def make_method(name: str, problem, n_reps: int = 1, seed=0, **hyperparameters):
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


TRACE_SCHEMA = pa.schema([
    ("rep", pa.int32()),
    ("query", pa.int32()),  # 1-based, stage 1 included
    ("stage", pa.int8()),  # events of the queried pattern
    ("point", pa.int32()),  # in that stage's space
    ("response", pa.float64()),  # the objective of the queried pattern
    ("best", pa.int32()),  # believed best in the final space
    ("accuracy", pa.float64()),  # 1 if the believed best is the true best pattern
    ("exploration", pa.float64()),  # truth at the believed best / max truth
])


def run_patterns(problem, method: str, n_reps: int, n_queries: int, seed=0, hyperparameters: dict | None = None,
                 progress=None) -> pa.Table:
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
    return pa.table({
        "rep": pa.array(np.repeat(np.arange(n_reps), n_queries), pa.int32()),
        "query": pa.array(np.tile(np.arange(1, n_queries + 1), n_reps), pa.int32()),
        "stage": pa.array(stage.ravel(), pa.int8()), "point": pa.array(pts.ravel(), pa.int32()),
        "response": pa.array(resp.ravel()), "best": pa.array(best.ravel(), pa.int32()),
        "accuracy": pa.array(acc.ravel()), "exploration": pa.array(expl.ravel()),
    }, schema=TRACE_SCHEMA)
