"""Batched exact GP over a discrete point set: many independent replicates at once.

Shapes: ``b`` replicates, ``P`` points in the space, ``d`` dimensions, ``U``
unique observed points (padded to the batch maximum), ``n`` observations.

Two modes, as published (Cell Reports Medicine STAR Methods):

* ``variable`` (variable-rho): one Matérn-5/2 length-scale per dimension and the
  Gaussian noise std are refit within their bounds at every query, by maximizing
  the exact marginal likelihood (Adam on the constrained parameters, warm-started
  from the previous query), batched across replicates.
* ``fixed`` (fixed-rho): length-scales and noise are set; the posterior over all
  points is updated incrementally (rank-one Cholesky append) as each observation
  arrives instead of being recomputed.

What is written by hand here, and why: GPyTorch/BoTorch fit and predict one model
at a time (or a batch with a shared training-set size and no incremental
updates); they have no notion of (1) collapsing repeated queries of one discrete
point into a single observation with noise ``sigma^2 / count`` plus the exact
marginal-likelihood correction for the within-point scatter, (2) padding
replicates with different numbers of unique points into one batched Cholesky
without changing any result, or (3) appending one observation to a cached
Cholesky factor and cached ``L^-1 K(X_obs, X_all)``. Those three pieces are the
batching and incremental algebra below. The bound transforms are GPyTorch's
``Interval`` constraints, and tests check every posterior against GPyTorch's
``ExactGP`` with a ``MaternKernel(nu=2.5)``.

Responses are divided by the largest response seen so far in each replicate
(the published normalization). The kernel's output scale (the prior variance of that
normalized response) is refit with the length-scales and noise within ``outputscale_bounds``.
The papers do not state these bounds; the defaults (``neuro_opt.gp.defaults``) are the choice
of ``+exp=outputscale_calibration`` on training subjects (docs/calibration.md).
An optional prior mean map is given on the same normalized scale.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from gpytorch.constraints import Interval

from neuro_opt.gp import defaults, refit_terms
from neuro_opt.gp.kernels import matern52
from neuro_opt.gp.lattice import LatticeKernel
from neuro_opt.gp.likelihood import MarginalLikelihood
from neuro_opt.gp.linalg import GPNumericalError, flush_denormals
from neuro_opt.gp.screen import ScreenedArgmax

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


def _interior(value: float, lo: float, hi: float) -> float:
    """``value`` moved strictly inside (lo, hi), where the Interval transform is invertible."""
    return min(max(value, lo + 0.01 * (hi - lo)), hi - 0.01 * (hi - lo))


class BatchGP(LatticeKernel, ScreenedArgmax, MarginalLikelihood):
    """Exact GP posterior over all ``P`` points of a discrete space, for ``b`` replicates.

    Args:
        X: ``P x d`` GP inputs of every point.
        n_reps: ``b``.
        capacity: observations per replicate to allocate for; the buffers double when full.
        mode: ``"variable"`` or ``"fixed"``.
        rho_bounds, noise_bounds, outputscale_bounds: bounds of the refit (variable mode).
        lengthscale, noise, outputscale: fixed length-scale (scalar or ``d``), noise std and
            output scale (fixed mode).
        prior_mean: optional ``P`` or ``b x P`` prior mean on the normalized scale.
        fit_steps, lr: Adam steps and learning rate per refit (variable mode).
        fit_tol: a replicate's refit stops early (its parameters stay where they are) once one
            Adam step changed its log marginal likelihood by at most this many nats; 0 = always
            ``fit_steps`` steps. (BoTorch's ExpMAStoppingCriterion needs 11 values before it can stop
            and stops a batch only as a whole; here each replicate stops on its own, so its result
            never depends on the others in its batch.)
        max_jitter: Cholesky jitter bound.
    """

    def __init__(
        self,
        X: ArrayLike,
        n_reps: int,
        capacity: int,
        mode: str = "variable",
        rho_bounds: tuple[float, float] = (defaults.RHO_LOW, defaults.RHO_HIGH),
        noise_bounds: tuple[float, float] = (defaults.NOISE_MIN, defaults.NOISE_MAX),
        outputscale_bounds: tuple[float, float] = (defaults.OUTPUTSCALE_LOW, defaults.OUTPUTSCALE_HIGH),
        lengthscale: ArrayLike = 1.0,
        noise: float = 0.05,
        outputscale: float = 1.0,
        prior_mean: ArrayLike | None = None,
        fit_steps: int = defaults.FIT_STEPS,
        lr: float = defaults.LR,
        fit_tol: float = 0.0,
        max_jitter: float = 1e-6,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> None:
        if mode not in ("variable", "fixed"):
            raise ValueError(f"GP mode must be 'variable' or 'fixed', got {mode!r}")
        self.mode = mode
        self.opts = dict(dtype=dtype, device=device)
        self.X = torch.as_tensor(np.array(X, dtype=np.float64), **self.opts)
        P, d = self.X.shape
        self.b, self.P, self.d, self.capacity = int(n_reps), P, d, int(capacity)
        self.max_jitter = max_jitter
        self.fit_steps, self.lr, self.fit_tol = int(fit_steps), float(lr), float(fit_tol)
        if not self.fit_tol >= 0:
            raise ValueError(f"fit_tol must be >= 0 (nats of log marginal likelihood), got {fit_tol!r}")
        self.last_fit_steps = torch.zeros(self.b, dtype=torch.long)  # Adam steps each replicate took in the last refit
        self.prior = None
        if prior_mean is not None:
            pm = torch.as_tensor(np.asarray(prior_mean, dtype=np.float64), **self.opts)
            self.prior = pm.expand(self.b, P).clone() if pm.ndim == 1 else pm.clone()
            if self.prior.shape != (self.b, P):
                raise ValueError(f"prior_mean must have shape ({P},) or ({self.b}, {P}), got {tuple(pm.shape)}")
        self.prior_weight = torch.ones(self.b, **self.opts)
        self._lattice_init()
        self.n = 0
        self.ymax = torch.zeros(self.b, **self.opts)
        if mode == "variable":
            lo, hi = float(rho_bounds[0]), float(rho_bounds[1])
            nlo, nhi = float(noise_bounds[0]), float(noise_bounds[1])
            if not (0 < lo < hi) or not (0 < nlo < nhi):
                raise ValueError(
                    f"need 0 < rho_low < rho_high and 0 < noise_min < noise_max, got "
                    f"rho {rho_bounds}, noise {noise_bounds}"
                )
            olo, ohi = float(outputscale_bounds[0]), float(outputscale_bounds[1])
            if not 0 < olo < ohi:
                raise ValueError(f"need 0 < outputscale_low < outputscale_high, got {outputscale_bounds}")
            self.ls_con, self.noise_con, self.os_con = Interval(lo, hi), Interval(nlo, nhi), Interval(olo, ohi)
            # the packed [length-scales, noise, output scale] bounds, for the refit's inner loop: there the
            # Interval transform lo + (hi - lo) * sigmoid(raw) is applied once to all d + 2 parameters
            # (the same formula as Interval.transform, tested equal), not three module calls per step
            self._raw_lo = torch.tensor([lo] * d + [nlo, olo], **self.opts)
            self._raw_span = torch.tensor([hi - lo] * d + [nhi - nlo, ohi - olo], **self.opts)
            self.raw_os = self.os_con.inverse_transform(torch.full((self.b,), _interior(0.25, olo, ohi), **self.opts))
            ls0 = torch.full((self.b, d), _interior(1.0, lo, hi), **self.opts)
            nz0 = torch.full((self.b,), math.sqrt(nlo * nhi), **self.opts)
            self.raw_ls = self.ls_con.inverse_transform(ls0)
            self.raw_noise = self.noise_con.inverse_transform(nz0)
            # collapsed observations: one slot per unique point
            self.slot_of = torch.full((self.b, P), -1, dtype=torch.long, device=device)
            self.slot_pt = torch.zeros(self.b, capacity, dtype=torch.long, device=device)
            self.cnt = torch.zeros(self.b, capacity, **self.opts)
            self.sum = torch.zeros(self.b, capacity, **self.opts)
            self.sumsq = torch.zeros(self.b, capacity, **self.opts)
            self.n_slots = torch.zeros(self.b, dtype=torch.long, device=device)
            self._bins_init()
        else:
            ls = torch.as_tensor(lengthscale, **self.opts).flatten()
            self.ls_fixed = (ls.expand(d) if ls.numel() == 1 else ls).expand(self.b, d).clone()
            if self.ls_fixed.shape != (self.b, d) or bool((self.ls_fixed <= 0).any()):
                raise ValueError(f"fixed lengthscale must be > 0, scalar or {d} values, got {lengthscale!r}")
            if not float(noise) > 0:
                raise ValueError(f"fixed noise std must be > 0, got {noise!r}")
            self.noise_fixed = float(noise)
            if not float(outputscale) > 0:
                raise ValueError(f"fixed outputscale must be > 0, got {outputscale!r}")
            self.os_fixed = float(outputscale)
            self.obs_pt = torch.zeros(self.b, capacity, dtype=torch.long, device=device)
            self.L = torch.zeros(self.b, capacity, capacity, **self.opts)
            self.V = torch.zeros(self.b, capacity, P, **self.opts)  # L^-1 K(X_obs, X_all)
            self.beta = torch.zeros(self.b, capacity, **self.opts)  # L^-1 y_raw
            self.gamma = torch.zeros(self.b, capacity, **self.opts)  # L^-1 prior(X_obs)
            self.My = torch.zeros(self.b, P, **self.opts)  # V^T beta
            self.Mm = torch.zeros(self.b, P, **self.opts)  # V^T gamma
            self.var_fixed = torch.full((self.b, P), self.os_fixed, **self.opts)

    # ------------------------------------------------------------------ public
    @property
    def lengthscale(self) -> torch.Tensor:
        """``b x d`` current length-scales."""
        return self.ls_con.transform(self.raw_ls) if self.mode == "variable" else self.ls_fixed

    @property
    def outputscale(self) -> torch.Tensor:
        """``b`` current kernel output scales (prior variance of the normalized response)."""
        if self.mode == "variable":
            return self.os_con.transform(self.raw_os)
        return torch.full((self.b,), self.os_fixed, **self.opts)

    @property
    def noise(self) -> torch.Tensor:
        """``b`` current noise std."""
        if self.mode == "variable":
            return self.noise_con.transform(self.raw_noise)
        return torch.full((self.b,), self.noise_fixed, **self.opts)

    def set_prior_weight(self, w: ArrayLike) -> None:
        """Multiply the prior mean by ``w`` (scalar or ``b``), e.g. to fade it out."""
        self.prior_weight = torch.as_tensor(w, **self.opts).expand(self.b).clone()

    def observe(self, points: ArrayLike, y: ArrayLike) -> None:
        """Add one observation per replicate: ``points`` (b,) point indices, ``y`` (b,) raw responses."""
        pts = torch.as_tensor(np.asarray(points), dtype=torch.long, device=self.X.device)
        yy = torch.as_tensor(np.asarray(y, dtype=np.float64), **self.opts)
        if pts.shape != (self.b,) or yy.shape != (self.b,):
            raise ValueError(
                f"observe expects ({self.b},) points and responses, got {tuple(pts.shape)}, {tuple(yy.shape)}"
            )
        if not bool(torch.isfinite(yy).all()):
            raise ValueError(
                f"responses must be finite, got NaN/inf at replicates "
                f"{torch.nonzero(~torch.isfinite(yy)).flatten().tolist()}"
            )
        if bool(((pts < 0) | (pts >= self.P)).any()):
            raise ValueError(f"point index out of range 0..{self.P - 1}: {pts.tolist()}")
        if self.n >= self.capacity:
            self._grow(2 * self.capacity)
        self.ymax = torch.maximum(self.ymax, yy)
        if self.mode == "variable":
            self._observe_collapsed(pts, yy)
        else:
            self._append_fixed(pts, yy)
        self.n += 1

    @flush_denormals
    def fit(self) -> None:
        """Refit length-scales and noise within their bounds (variable mode; no-op in fixed mode)."""
        if self.mode != "variable" or self.n == 0 or self.fit_steps <= 0:
            return
        d = self.d
        raw = torch.cat([self.raw_ls, self.raw_noise[:, None], self.raw_os[:, None]], dim=1)
        data = self._collapsed()
        if self.lattice is not None:
            data["bin"] = self._pair_bins(data)  # b x U x U, fixed during the refit
        else:
            Xu = data["Xu"]
            data["sqdiff"] = (Xu.unsqueeze(-2) - Xu.unsqueeze(-3)) ** 2  # b x U x U x d, fixed during the refit
        # Adam (ascent on the MLL) by hand on the packed b x (d + 2) parameters, with the
        # analytic gradient of mll_and_grad: for these small batched matrices autograd's
        # per-op overhead costs more than the algebra itself.
        m = torch.zeros_like(raw)
        v = torch.zeros_like(raw)
        b1, b2, eps = 0.9, 0.999, 1e-8
        tol = self.fit_tol
        active = torch.ones(self.b, dtype=torch.bool, device=raw.device)  # replicates still moving
        steps = torch.zeros(self.b, dtype=torch.long)
        prev = None
        for k in range(1, self.fit_steps + 1):
            mll, g = self.mll_and_grad(data, raw, with_mll=tol > 0)
            if tol > 0:
                if prev is not None:  # the last step moved this replicate's MLL by <= tol: it stays put
                    active &= (mll - prev).abs() > tol
                    if not bool(active.any()):
                        break
                prev = mll
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            step = self.lr * (m / (1 - b1**k)) / (torch.sqrt(v / (1 - b2**k)) + eps)
            raw = torch.where(active[:, None], raw + step, raw)
            steps += active.cpu()
        self.last_fit_steps = steps
        self.raw_ls, self.raw_noise, self.raw_os = raw[:, :d].clone(), raw[:, d].clone(), raw[:, d + 1].clone()

    @flush_denormals
    def mll(self) -> torch.Tensor:
        """``b`` exact log marginal likelihood of each replicate's observations at its current
        hyperparameters (variable mode, after at least one observation): what :meth:`fit` ascends."""
        if self.mode != "variable" or self.n == 0:
            raise ValueError("mll() needs variable mode and at least one observation")
        with torch.no_grad():
            return self._mll(self._collapsed(), self.lengthscale, self.noise, self.outputscale)

    @flush_denormals
    def posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance of the latent function at every point, ``b x P`` each."""
        if self.mode == "fixed":
            mean = self.My / self._scale()[:, None]
            if self.prior is not None:
                mean = mean + self.prior_weight[:, None] * (self.prior - self.Mm)
            return mean, torch.clamp(self.var_fixed, min=1e-12)
        prior_all = self._prior_all()
        if self.n == 0:
            return prior_all.clone(), self.outputscale[:, None].expand(self.b, self.P).clone()
        with torch.no_grad():
            data = self._collapsed()
            os_ = self.outputscale
            sums = self._compiled_posterior(data, os_)
            if sums is not None:
                yv, vv = sums
                return prior_all + yv, torch.clamp(os_[:, None] - vv, min=1e-12)
            L, r = self._chol(data, self.lengthscale, self.noise, os_)
            Kc = self._cross(data, self.lengthscale)
            Kc.mul_(os_[:, None, None])
            A = torch.linalg.solve_triangular(L, Kc, upper=False)
            alpha = torch.linalg.solve_triangular(L, r[..., None], upper=False)
            mean = prior_all + torch.bmm(alpha.mT, A)[:, 0]
            var = torch.clamp(os_[:, None] - torch.linalg.vector_norm(A, dim=-2) ** 2, min=1e-12)
        return mean, var

    # --------------------------------------------------------------- internals
    def _compiled_posterior(self, data: dict[str, torch.Tensor], os_: torch.Tensor):
        """The posterior's sums from the compiled routine (neuro_opt/gp/refit_terms.py) on a lattice
        with the cached offset bins, where the refit's gradient runs compiled too; else ``None``
        (also when a factor needs jitter: the torch path then adds it)."""
        b, U = data["mask"].shape
        if self.slot_bins is None or not self._compiled(b, U, data["r"]):
            return None
        table = self._kernel_bins(self.lengthscale) * os_[:, None]
        diag = self._noise_diagonal(data, self.noise)
        return refit_terms.posterior_sums(
            data["n_slots"], self._pair_bins(data), table, diag, data["r"], self.slot_bins[:, :, :U]
        )

    def _grow(self, capacity: int) -> None:
        """Double the observation buffers (amortized O(1) per observation)."""

        def pad(t: torch.Tensor, dims: set[int]) -> torch.Tensor:
            shape = list(t.shape)
            out = torch.zeros(
                [capacity if i in dims else n for i, n in enumerate(shape)], dtype=t.dtype, device=t.device
            )
            out[tuple(slice(0, n) for n in shape)] = t
            return out

        if self.mode == "variable":
            self.slot_pt, self.cnt = pad(self.slot_pt, {1}), pad(self.cnt, {1})
            self.sum, self.sumsq = pad(self.sum, {1}), pad(self.sumsq, {1})
            if self.slot_bins is not None:
                assert self.lattice is not None  # slot_bins is made only on a lattice
                grown = torch.full(
                    (self.b, self.P, capacity), self.lattice["n_bins"], dtype=torch.long, device=self.X.device
                )
                grown[:, :, : self.capacity] = self.slot_bins
                self.slot_bins = grown
        else:
            self.obs_pt, self.beta, self.gamma = pad(self.obs_pt, {1}), pad(self.beta, {1}), pad(self.gamma, {1})
            self.L, self.V = pad(self.L, {1, 2}), pad(self.V, {1})
        self.capacity = capacity

    def _scale(self) -> torch.Tensor:
        return torch.where(self.ymax > 0, self.ymax, torch.ones_like(self.ymax))

    def _prior_all(self) -> torch.Tensor:
        if self.prior is None:
            return torch.zeros(self.b, self.P, **self.opts)
        return self.prior_weight[:, None] * self.prior

    def _append_fixed(self, pts: torch.Tensor, yy: torch.Tensor) -> None:
        n, b = self.n, self.b
        rows = torch.arange(b, device=pts.device)
        ls = self.ls_fixed
        kx = self.os_fixed * matern52(self.X[pts][:, None, :], self.X.expand(b, -1, -1), ls)[:, 0, :]  # b x P
        s2 = self.noise_fixed**2
        pm = self.prior[rows, pts] if self.prior is not None else torch.zeros(b, **self.opts)
        if n == 0:
            lk = torch.zeros(b, 0, **self.opts)
            d2 = torch.full((b,), self.os_fixed + s2, **self.opts)
        else:
            knn = torch.gather(kx, 1, self.obs_pt[:, :n])  # b x n
            Ln = self.L[:, :n, :n]
            lk = torch.linalg.solve_triangular(Ln, knn[..., None], upper=False)[..., 0]
            d2 = self.os_fixed + s2 - (lk * lk).sum(-1)
        jitter = 0.0
        while bool((d2 <= 1e-14).any()):
            jitter = 1e-10 if jitter == 0 else jitter * 10
            if jitter > self.max_jitter:
                r = int(torch.nonzero(d2 <= 1e-14)[0])
                raise GPNumericalError(
                    f"GP covariance is not positive definite even with jitter {self.max_jitter:g}: replicate {r}: "
                    f"lengthscale={ls[r].tolist()}, noise={self.noise_fixed:.3g}"
                )
            d2 = torch.where(d2 <= 1e-14, d2 + jitter, d2)
        d = torch.sqrt(d2)
        self.obs_pt[:, n] = pts
        self.L[:, n, :n] = lk
        self.L[:, n, n] = d
        if n == 0:
            vrow = kx / d[:, None]
            bn, gn = yy / d, pm / d
        else:
            vrow = (kx - torch.bmm(lk[:, None, :], self.V[:, :n, :])[:, 0, :]) / d[:, None]
            bn = (yy - (lk * self.beta[:, :n]).sum(-1)) / d
            gn = (pm - (lk * self.gamma[:, :n]).sum(-1)) / d
        self.V[:, n] = vrow
        self.beta[:, n], self.gamma[:, n] = bn, gn
        self.My += vrow * bn[:, None]
        self.Mm += vrow * gn[:, None]
        self.var_fixed -= vrow * vrow
