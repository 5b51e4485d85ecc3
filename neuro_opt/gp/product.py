"""A small batched exact GP with a product kernel and a refit basis prior mean (seed 003's stages).

Why a GP is written here instead of using :class:`neuro_opt.gp.BatchGP`: the engine's kernel
is one Matérn-5/2 over all dimensions with one length-scale per dimension and one set of
bounds; this stage needs (1) a *product* of Matérns over dimension groups, (2) length-scales
*shared* within a group with per-group bounds, (3) a prior mean that is a weighted sum of
basis maps whose weights are refit per replicate (the engine has one map and a scalar
weight that is set, not fit), (4) a normalization scale fixed per replicate (the prior's
units must not move as responses arrive) and noise bounds in response units, and (5)
observations for only some replicates at a time (replicates leave stage 1 at different
queries under the stopping rule). This small batched exact GP, with
autograd on the marginal likelihood (the matrices are at most a hundred observations).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from neuro_opt.gp.kernels import matern52_of_r
from neuro_opt.gp.linalg import safe_cholesky
from neuro_opt.space import SearchSpace


def _m52(r2: torch.Tensor) -> torch.Tensor:
    """Matérn-5/2 correlation from squared scaled distances."""
    return matern52_of_r(torch.sqrt(torch.clamp(r2, min=1e-30)), r2)


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``... x n x d`` and ``... x m x d`` -> ``... x n x m`` squared distances (0 when ``d = 0``)."""
    if a.shape[-1] == 0:
        return torch.zeros(
            *torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]),
            a.shape[-2],
            b.shape[-2],
            dtype=a.dtype,
            device=a.device,
        )
    return ((a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2).sum(-1)


def split_inputs(space: SearchSpace, time_unit_ms: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """GP inputs of a pattern space: spatial ``P x ds`` (grid indices of every dimension not
    named ``*_ms``) and temporal ``P x dt`` (the ``*_ms`` dimensions' values in units of
    ``time_unit_ms``)."""
    t_dims = [i for i, n in enumerate(space.names) if n.endswith("_ms")]
    s_dims = [i for i in range(space.ndim) if i not in t_dims]
    S = space.X[:, s_dims]
    T = (
        np.stack(
            [np.asarray(space.dims[i].values, dtype=np.float64)[space.index[:, i]] / time_unit_ms for i in t_dims],
            axis=1,
        )
        if t_dims
        else np.zeros((space.n_points, 0))
    )
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

    def __init__(
        self,
        S,
        T,
        n_reps: int,
        n_basis: int = 0,
        weight_mean=None,
        weight_sd: float = 0.5,
        rho_space=(1.0, 2.0),
        rho_time=(0.5, 2.0),
        noise=(5e-4, 1e-3),
        noise_units: str = "raw",
        outputscale=(0.05, 1.0),
        fit_steps: int = 20,
        lr: float = 0.1,
        capacity: int = 32,
        max_jitter: float = 1e-6,
    ):
        self.opts = dict(dtype=torch.float64, device="cpu")
        self.S = torch.as_tensor(np.asarray(S, dtype=np.float64))
        self.T = torch.as_tensor(np.asarray(T, dtype=np.float64)).reshape(self.S.shape[0], -1)
        self.P = self.S.shape[0]
        self.b, self.J = int(n_reps), int(n_basis)
        for name, (lo, hi) in (
            ("rho_space", rho_space),
            ("rho_time", rho_time),
            ("noise", noise),
            ("outputscale", outputscale),
        ):
            if not 0 < float(lo) < float(hi):
                raise ValueError(f"{name} bounds must satisfy 0 < low < high, got {lo!r}, {hi!r}")
        if noise_units not in ("raw", "normalized"):
            raise ValueError(f"noise_units must be 'raw' or 'normalized', got {noise_units!r}")
        if not weight_sd > 0:
            raise ValueError(f"weight_sd must be > 0, got {weight_sd!r}")
        self.noise_units = noise_units
        self.lo = torch.tensor([rho_space[0], rho_time[0], noise[0], outputscale[0]], **self.opts)
        self.hi = torch.tensor([rho_space[1], rho_time[1], noise[1], outputscale[1]], **self.opts)
        init = torch.stack(
            [
                torch.clamp(torch.tensor(1.0, **self.opts), self.lo[0], self.hi[0]),
                torch.clamp(torch.tensor(1.0, **self.opts), self.lo[1], self.hi[1]),
                torch.sqrt(self.lo[2] * self.hi[2]),
                torch.clamp(torch.tensor(0.25, **self.opts), self.lo[3], self.hi[3]),
            ]
        )
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
            raise ValueError(
                f"observe expects ({self.b},) points and responses, got {tuple(pts.shape)}, {tuple(yy.shape)}"
            )
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
        return dict(N=N, mask=mask, pts=pts, S=Sx, T=Tx, y=y, H=Hx, ds=_sqdist(Sx, Sx), dt=_sqdist(Tx, Tx))

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
        A = H.transpose(1, 2) @ KiH + torch.eye(self.J, **self.opts) / self.wsd**2
        rhs = (H * Kiy[..., None]).sum(1) + self.a0 / self.wsd**2
        return torch.linalg.solve(A, rhs[..., None])[..., 0]

    def _chol(self, Kn: torch.Tensor, h: dict) -> torch.Tensor:
        def info(r):
            return (
                f"rho_space={float(h['rho_space'][r]):.3g}, rho_time={float(h['rho_time'][r]):.3g}, "
                f"noise={float(h['noise'][r]):.3g}, outputscale={float(h['outputscale'][r]):.3g}"
            )

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
