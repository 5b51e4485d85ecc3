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
(the published normalization); the kernel's output scale is fixed at 1 on that
normalized scale. The kernel's output scale (the prior variance of that normalized
response) is refit with the length-scales within ``outputscale_bounds`` (default
0.25 to 1; the papers do not state one). Pinned at 1 it biases the fitted
length-scales long on sparse maps where most responses are near zero, and the GP
grows overconfident; left free it shrinks to ~0.1, and then an unexplored
point's UCB (0 + kappa * 0.3) can never beat a normalized local maximum of 1, so
exploration stops for good. On synthetic rat maps (9 problems x 6 replicates)
the bounds 0.25 to 1 gave the best final exploration at every noise level tried.
An optional prior mean map is given on the same normalized scale.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from gpytorch.constraints import Interval

from neuro_opt.gp import lapack

SQRT5 = math.sqrt(5.0)


class GPNumericalError(RuntimeError):
    """A covariance matrix stayed non-positive-definite after the maximum jitter."""


def matern52(x1: torch.Tensor, x2: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """Matérn nu=5/2 covariance with output scale 1.

    Args:
        x1: ``b x n x d``; x2: ``b x m x d``; lengthscale: ``b x d``.
    Returns:
        ``b x n x m``.
    """
    ls = lengthscale.unsqueeze(-2)
    return matern52_of_r(torch.cdist(x1 / ls, x2 / ls, compute_mode="donot_use_mm_for_euclid_dist"))


def matern52_of_r(r: torch.Tensor) -> torch.Tensor:
    """Matérn nu=5/2 (output scale 1) of scaled distances ``r``."""
    return (1.0 + SQRT5 * r + (5.0 / 3.0) * r * r) * torch.exp(-SQRT5 * r)


def safe_cholesky(A: torch.Tensor, max_jitter: float = 1e-6, what: str = "covariance", info=None) -> torch.Tensor:
    """Cholesky of a batch ``b x n x n``; adds diagonal jitter (1e-10 .. max_jitter) where it fails.

    Raises GPNumericalError naming the failing replicate(s) and ``info(rep)`` (the
    hyperparameters) once the jitter bound is reached.
    """
    L, status = torch.linalg.cholesky_ex(A)
    if not bool((status > 0).any()):
        return L
    jitter = 1e-10
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    while jitter <= max_jitter:
        bad = status > 0
        Lb, sb = torch.linalg.cholesky_ex(A[bad] + jitter * eye)
        L = L.clone()
        L[bad] = Lb
        status = status.clone()
        status[bad] = sb
        if not bool((status > 0).any()):
            return L
        jitter *= 10
    reps = torch.nonzero(status > 0).flatten().tolist()
    details = "; ".join(f"replicate {r}: {info(r) if info else ''}" for r in reps[:5])
    raise GPNumericalError(f"{what} is not positive definite even with jitter {max_jitter:g}: {details}")


_FLUSH_FOR_PROCESS = False


def flush_denormals_for_process() -> None:
    """Flush subnormal floats to zero in this thread from now on, and in every thread it starts
    later (threads inherit the floating-point mode): call it at the start of a worker process,
    before torch starts its thread pool, so the pool's threads flush too (see _flush_denormals)."""
    global _FLUSH_FOR_PROCESS
    _FLUSH_FOR_PROCESS = bool(torch.set_flush_denormal(True))


def _flush_denormals(method):
    """Run ``method`` with subnormal floats flushed to zero in the calling thread
    (torch.set_flush_denormal), then restore the default unless the process asked for flushing
    (flush_denormals_for_process). Kernel and inverse entries between far-apart points (a 1-D
    space of 10,000 points with long length-scales: exp(-sqrt5 r) near 1e-308) are subnormal,
    and x86 arithmetic on them is ~100x slower: the refit at 1,000 points took 1.0 s instead of
    0.15 s. Values below 2.2e-308 change no result of any tolerance here."""
    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        on = torch.set_flush_denormal(True)
        try:
            return method(*args, **kwargs)
        finally:
            if on and not _FLUSH_FOR_PROCESS:
                torch.set_flush_denormal(False)
    return wrapped


def _interior(value: float, lo: float, hi: float) -> float:
    """``value`` moved strictly inside (lo, hi), where the Interval transform is invertible."""
    return min(max(value, lo + 0.01 * (hi - lo)), hi - 0.01 * (hi - lo))


class BatchGP:
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

    def __init__(self, X, n_reps: int, capacity: int, mode: str = "variable",
                 rho_bounds=(0.02, 5.0), noise_bounds=(1e-4, 0.05), outputscale_bounds=(0.25, 1.0),
                 lengthscale=1.0, noise=0.05, outputscale=1.0,
                 prior_mean=None, fit_steps: int = 10, lr: float = 0.1, fit_tol: float = 0.0,
                 max_jitter: float = 1e-6, dtype=torch.float64, device="cpu"):
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
                raise ValueError(f"need 0 < rho_low < rho_high and 0 < noise_min < noise_max, got "
                                 f"rho {rho_bounds}, noise {noise_bounds}")
            olo, ohi = float(outputscale_bounds[0]), float(outputscale_bounds[1])
            if not 0 < olo < ohi:
                raise ValueError(f"need 0 < outputscale_min < outputscale_max, got {outputscale_bounds}")
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

    def set_prior_weight(self, w) -> None:
        """Multiply the prior mean by ``w`` (scalar or ``b``), e.g. to fade it out."""
        self.prior_weight = torch.as_tensor(w, **self.opts).expand(self.b).clone()

    def observe(self, points, y) -> None:
        """Add one observation per replicate: ``points`` (b,) point indices, ``y`` (b,) raw responses."""
        pts = torch.as_tensor(np.asarray(points), dtype=torch.long, device=self.X.device)
        yy = torch.as_tensor(np.asarray(y, dtype=np.float64), **self.opts)
        if pts.shape != (self.b,) or yy.shape != (self.b,):
            raise ValueError(f"observe expects ({self.b},) points and responses, got {tuple(pts.shape)}, {tuple(yy.shape)}")
        if not bool(torch.isfinite(yy).all()):
            raise ValueError(f"responses must be finite, got NaN/inf at replicates "
                             f"{torch.nonzero(~torch.isfinite(yy)).flatten().tolist()}")
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

    @_flush_denormals
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
            step = self.lr * (m / (1 - b1 ** k)) / (torch.sqrt(v / (1 - b2 ** k)) + eps)
            raw = torch.where(active[:, None], raw + step, raw)
            steps += active.cpu()
        self.last_fit_steps = steps
        self.raw_ls, self.raw_noise, self.raw_os = raw[:, :d].clone(), raw[:, d].clone(), raw[:, d + 1].clone()

    @_flush_denormals
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
            L, r = self._chol(data, self.lengthscale, self.noise, os_)
            Kc = self._cross(data, self.lengthscale)
            Kc.mul_(os_[:, None, None])
            A = torch.linalg.solve_triangular(L, Kc, upper=False)
            alpha = torch.linalg.solve_triangular(L, r[..., None], upper=False)
            mean = prior_all + torch.bmm(alpha.mT, A)[:, 0]
            var = torch.clamp(os_[:, None] - torch.linalg.vector_norm(A, dim=-2) ** 2, min=1e-12)
        return mean, var

    # --------------------------------------------------------------- internals
    def _grow(self, capacity: int) -> None:
        """Double the observation buffers (amortized O(1) per observation)."""
        def pad(t, dims):
            shape = list(t.shape)
            out = torch.zeros([capacity if i in dims else n for i, n in enumerate(shape)], dtype=t.dtype, device=t.device)
            out[tuple(slice(0, n) for n in shape)] = t
            return out
        if self.mode == "variable":
            self.slot_pt, self.cnt = pad(self.slot_pt, {1}), pad(self.cnt, {1})
            self.sum, self.sumsq = pad(self.sum, {1}), pad(self.sumsq, {1})
            if self.slot_bins is not None:
                grown = torch.full((self.b, self.P, capacity), self.lattice["n_bins"], dtype=torch.long,
                                   device=self.X.device)
                grown[:, :, :self.capacity] = self.slot_bins
                self.slot_bins = grown
        else:
            self.obs_pt, self.beta, self.gamma = pad(self.obs_pt, {1}), pad(self.beta, {1}), pad(self.gamma, {1})
            self.L, self.V = pad(self.L, {1, 2}), pad(self.V, {1})
        self.capacity = capacity


    def _lattice_init(self, max_bins: int = 65536) -> None:
        """Spaces on an integer grid (every space here: ``X`` = grid indices) have few distinct
        pairwise offsets: the kernel between two points depends only on ``|dx|`` per dimension.
        The refit then evaluates the kernel and its derivative once per offset (``b x bins``)
        and gathers them, and sums the gradient's ``U x U`` terms per offset (scatter-add),
        instead of exponentials and ``d``-way contractions over every pair at every Adam step.
        The result is the same algebra (tested against the direct path); other inputs keep it."""
        self.lattice = None
        X = self.X
        Xi = torch.round(X)
        if self.mode != "variable" or not torch.equal(X, Xi):
            return
        span = (Xi.max(0).values - Xi.min(0).values).long() + 1
        n_bins = int(torch.prod(span))
        if n_bins > max_bins:
            return
        stride = torch.ones(self.d, dtype=torch.long, device=X.device)
        for k in range(self.d - 2, -1, -1):
            stride[k] = stride[k + 1] * span[k + 1]
        offsets = torch.stack(torch.meshgrid(*[torch.arange(int(n), device=X.device) for n in span],
                                             indexing="ij"), -1).reshape(-1, self.d)
        Xi0 = (Xi - Xi.min(0).values).long()
        self.lattice = dict(Xi=Xi0, stride=stride, n_bins=n_bins,
                            D2=(offsets.to(X.dtype)) ** 2,  # bins x d: squared offset per dimension
                            span=[int(n) for n in span], box_index=(Xi0 * stride).sum(-1))
        # circular layout of every signed offset (-(span-1) .. span-1 per dimension) for the screened
        # argmax's FFT convolution (see screened): cell c holds offset c (c < span) or c - N
        # (length >= 2 span - 1, rounded up to a fast FFT length; cells between the two ends hold
        # offsets no pair of points has, and get the padding bin, kernel 0)
        from scipy.fft import next_fast_len

        span_t = torch.tensor(self.lattice["span"], device=X.device)
        N = [next_fast_len(2 * n - 1, real=True) for n in self.lattice["span"]]
        if int(np.prod(N)) <= self.SCREEN_MAX_FFT:
            cells = torch.stack(torch.meshgrid(*[torch.arange(n, device=X.device) for n in N], indexing="ij"),
                                -1).reshape(-1, self.d)
            absoff = torch.minimum(cells, torch.tensor(N, device=X.device) - cells)
            fft_bins = (absoff * stride).sum(-1)
            fft_bins[(absoff >= span_t).any(-1)] = n_bins
            self.lattice.update(fft_shape=N, fft_bins=fft_bins)

    # Cached offset bins of every point against every unique slot (``b x P x capacity``,
    # variable mode on a lattice): a slot's column is computed once, when its point is first
    # observed, so neither the refit (pairs of slots) nor the posterior (all points x slots)
    # recomputes distances. Point-major, so the bins of a few points against all slots (the
    # pairs of slots, the screened argmax's candidates) are whole contiguous rows.
    # Dropped (recomputed per call) above this many entries.
    MAX_CACHED_BINS = 2 ** 25

    def _bins_init(self) -> None:
        self.slot_bins = None
        self._pair_bins_cache = None  # ((n, U), bins): the refit and the next query share it
        if self.lattice is not None and self.b * self.capacity * self.P <= self.MAX_CACHED_BINS:
            self.slot_bins = torch.full((self.b, self.P, self.capacity), self.lattice["n_bins"], dtype=torch.long,
                                        device=self.X.device)

    def _bins_to_all(self, pts: torch.Tensor) -> torch.Tensor:
        """Offset bin of each point in ``pts`` (``k``) against every point: ``k x P``."""
        lat = self.lattice
        xi = lat["Xi"]
        return ((xi[pts].unsqueeze(-2) - xi.unsqueeze(0)).abs() * lat["stride"]).sum(-1)

    def _pair_bins(self, data) -> torch.Tensor:
        """Offset bin of every pair of unique slots (``b x U x U``); pairs with a padding slot
        get the extra bin ``n_bins``, whose kernel value and derivative are 0."""
        lat = self.lattice
        mask = data["mask"]
        U = mask.shape[1]
        cached = self._pair_bins_cache
        if cached is not None and cached[0] == (self.n, U):
            return cached[1]
        pts = self.slot_pt[:, :U]
        if self.slot_bins is not None:
            bins = self._slot_rows(pts)
        else:
            xi = lat["Xi"][pts]  # b x U x d
            bins = ((xi.unsqueeze(-2) - xi.unsqueeze(-3)).abs() * lat["stride"]).sum(-1)
        if bool((mask > 0).all()):  # no padding slot: every pair is real
            out = bins.contiguous()
        else:
            pad = (mask[:, :, None] * mask[:, None, :]) == 0
            out = torch.where(pad, torch.full_like(bins, lat["n_bins"]), bins)
        self._pair_bins_cache = ((self.n, U), out)
        return out

    def _slot_rows(self, pts: torch.Tensor) -> torch.Tensor:
        """Cached offset bins of points ``pts`` (``b x m``) against the unique slots: ``b x m x U``."""
        U = int(self.n_slots.max())
        if self.b == 1:
            return self.slot_bins[0].index_select(0, pts[0])[None, :, :U]
        return self.slot_bins[torch.arange(self.b, device=pts.device)[:, None], pts][:, :, :U]

    @staticmethod
    def _lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``table[q, idx[q, ...]]`` for a ``b x T`` table and ``b x ...`` bins (index_select
        for one replicate: about twice as fast as gather over a large index)."""
        if table.shape[0] == 1:
            return table[0].index_select(0, idx.reshape(-1)).reshape(idx.shape)
        return torch.gather(table, 1, idx.reshape(table.shape[0], -1)).reshape(idx.shape)

    def _kernel_bins(self, ls: torch.Tensor) -> torch.Tensor:
        """Matérn-5/2 (output scale 1) per lattice offset bin, plus a trailing 0 for padding: ``b x (bins+1)``."""
        r2 = (1.0 / (ls * ls)) @ self.lattice["D2"].T
        kb = matern52_of_r(torch.sqrt(torch.clamp(r2, min=1e-30)))  # finite gradient at offset 0 (autograd)
        return torch.cat([kb, torch.zeros_like(kb[:, :1])], 1)

    def _cross(self, data, ls) -> torch.Tensor:
        """Kernel (output scale 1) between the unique slots and every point, 0 on padding slots: ``b x U x P``."""
        U = data["mask"].shape[1]
        if self.slot_bins is not None:  # point-major cache: the transpose of a P x U lookup (a view)
            return self._lookup(self._kernel_bins(ls), self.slot_bins[:, :, :U]).mT
        return matern52(data["Xu"], self.X.expand(self.b, -1, -1), ls) * data["mask"][..., None]

    # ---------------------------------------------------------- screened argmax
    # Large spaces (online use, Fig. S8): the next query needs the argmax of mu + kappa * sigma,
    # not sigma everywhere. The full posterior costs O(U^2 P) for the variance (a U x P
    # triangular solve); the screened argmax gets the same argmax from
    #   1. the mean everywhere by one FFT convolution of Kn^-1 r placed on the lattice box with
    #      the kernel table over all signed offsets (O(P log P) instead of a U x P product);
    #   2. an upper bound on the variance everywhere: conditioning on fewer observations never
    #      lowers a GP's posterior variance, so the variance given only the nearest observed
    #      point (in length-scale units; scipy's exact Euclidean distance transform of the box,
    #      anisotropic sampling 1/lengthscale) bounds it: os - os^2 m(r)^2 / (os + s^2); at the
    #      points still open after the first exact round, the variance given the 4 nearest observed
    #      points (scipy's KD-tree) is a tighter bound of the same kind;
    #   3. the exact mean and variance (the same algebra as posterior()) at the few points of
    #      highest bound, then at every point whose bound is not below the best exact value by
    #      more than the FFT's rounding margin (repeated while that raises the best).
    # Every point left out is provably below the maximum, so argmax_random_ties over the result
    # (exact values, -inf at the rest) picks among exactly the same ties. Nothing in GPyTorch or
    # BoTorch screens an acquisition this way, hence by hand. (The 500th query of a 10,000-point
    # 3-D space evaluates ~100-250 points exactly instead of 10,000.)
    SCREEN_MIN_POINTS = 4096
    SCREEN_MAX_FFT = 2 ** 22
    SCREEN_MAX_CHUNK = 4096  # exact values per round at most (memory: b x U x this)

    @property
    def can_screen(self) -> bool:
        """Whether :meth:`screened` applies: variable mode, a large lattice space, data seen."""
        lat = self.lattice
        return (self.mode == "variable" and lat is not None and "fft_bins" in lat and self.slot_bins is not None
                and self.P >= self.SCREEN_MIN_POINTS and self.n > 0)

    SCREEN_MIN_WORK = 2 ** 20  # unique points x points below which the full posterior is as fast

    @property
    def prefer_screen(self) -> bool:
        """Whether :meth:`screened` applies and beats the full posterior (a large ``U x P``)."""
        return self.can_screen and int(self.n_slots.max()) * self.P >= self.SCREEN_MIN_WORK

    @_flush_denormals
    def screened(self, kappa: float, chunk: int = 64) -> torch.Tensor:
        """``mean + kappa * sd`` (kappa 0: the mean) exactly at every point that can hold its
        replicate's maximum, ``-inf`` at every other point: ``b x P`` (see the comment above)."""
        if not self.can_screen:
            raise RuntimeError("screened() needs variable mode on a lattice of >= "
                               f"{self.SCREEN_MIN_POINTS} points with at least one observation")
        from scipy.ndimage import distance_transform_edt

        lat, b, P, d = self.lattice, self.b, self.P, self.d
        with torch.no_grad():
            data = self._collapsed()
            mask = data["mask"]
            U = mask.shape[1]
            ls, os_, noise = self.lengthscale, self.outputscale, self.noise
            L, r = self._chol(data, ls, noise, os_)
            beta = torch.linalg.solve_triangular(L, r[..., None], upper=False)  # L^-1 r
            alpha = torch.linalg.solve_triangular(L.mT, beta, upper=True)[..., 0] * mask  # Kn^-1 r
            kb = self._kernel_bins(ls) * os_[:, None]  # b x (bins + 1), last = padding 0
            prior_all = self._prior_all()
            # 1. mean everywhere: circular convolution over the (2 span - 1)^d offset layout
            span, N = lat["span"], lat["fft_shape"]
            slots_box = lat["box_index"][self.slot_pt[:, :U]]
            box = torch.zeros(b, int(np.prod(span)), **self.opts).scatter_add_(1, slots_box, alpha)
            T = torch.gather(kb, 1, lat["fft_bins"].expand(b, -1)).reshape(b, *N)
            dims = tuple(range(1, d + 1))
            conv = torch.fft.irfftn(torch.fft.rfftn(box.reshape(b, *span), s=N, dim=dims)
                                    * torch.fft.rfftn(T, dim=dims), s=N, dim=dims)
            conv = conv[(slice(None),) + tuple(slice(0, n) for n in span)].reshape(b, -1)
            mean_fft = prior_all + conv[:, lat["box_index"]]
            # rounding of the FFT path, far above its actual error (~1e-16 x sum |terms| x log N)
            tol = 1e-9 * (1.0 + os_ * alpha.abs().sum(-1)) + 1e-9 * mean_fft.abs().amax(-1)
            ub = mean_fft
            if kappa > 0:
                # 2. variance bound from the nearest observed point, in length-scale units
                rmin = torch.empty(b, P, **self.opts)
                inv_ls = (1.0 / ls).cpu().numpy()
                for q in range(b):
                    free = np.ones(span, dtype=bool)
                    free.reshape(-1)[slots_box[q, :int(self.n_slots[q])].cpu().numpy()] = False
                    dist = distance_transform_edt(free, sampling=inv_ls[q].tolist())
                    rmin[q] = torch.as_tensor(dist.reshape(-1), **self.opts)[lat["box_index"]]
                m = matern52_of_r(rmin)
                s2 = noise * noise
                var_ub = os_[:, None] - (os_ * os_ / (os_ + s2))[:, None] * m * m
                ub = mean_fft + kappa * torch.sqrt(torch.clamp(var_ub, min=1e-12))
            # 3. exact values: first at the `chunk` points of highest bound, then at every point whose
            # bound still reaches the best exact value so far (minus the margin), until none is left
            # (one more round in practice: later rounds only when a round raises the best)
            vals = torch.full((b, P), -math.inf, **self.opts)
            open_ = torch.ones(b, P, dtype=torch.bool, device=self.X.device)
            refined = False
            cand = torch.topk(ub, min(int(chunk), P), dim=1).indices
            while True:
                A = torch.linalg.solve_triangular(L, self._lookup(kb, self._slot_rows(cand)).mT, upper=False)
                val = torch.gather(prior_all, 1, cand) + torch.bmm(beta.mT, A)[:, 0]
                if kappa > 0:
                    var = torch.clamp(os_[:, None] - torch.linalg.vector_norm(A, dim=-2) ** 2, min=1e-12)
                    val = val + kappa * torch.sqrt(var)
                # a replicate with fewer open points than the batch's largest count also gets some
                # closed ones: keep only the open ones, so its values never depend on the others
                keep = torch.gather(open_, 1, cand)
                vals.scatter_(1, cand, torch.where(keep, val, torch.gather(vals, 1, cand)))
                open_.scatter_(1, cand, False)
                best = vals.amax(1)
                open_ &= ub >= (best - tol)[:, None]
                m = int(open_.sum(1).max())
                if m == 0:
                    break
                if kappa > 0 and not refined:
                    # 2b. once, at the points still open: the tighter bound from the k nearest observed
                    # points (again a subset of the observations), then drop the points it closes
                    refined = True
                    for q in range(b):
                        idx = torch.nonzero(open_[q]).flatten()
                        if len(idx):
                            vk = self._knn_var_bound(q, idx, ls[q], noise[q], os_[q])
                            ub[q, idx] = torch.minimum(ub[q, idx], mean_fft[q, idx] + kappa * torch.sqrt(vk))
                    open_ &= ub >= (best - tol)[:, None]
                    m = int(open_.sum(1).max())
                    if m == 0:
                        break
                cand = torch.topk(torch.where(open_, ub, torch.full_like(ub, -math.inf)), min(m, self.SCREEN_MAX_CHUNK),
                                  dim=1).indices
        return vals

    SCREEN_KNN = 4  # observed points in the refined variance bound

    def _knn_var_bound(self, q: int, idx: torch.Tensor, ls, noise, os_) -> torch.Tensor:
        """An upper bound on replicate ``q``'s posterior variance at points ``idx``: the variance given
        only the ``SCREEN_KNN`` observed points nearest each (length-scale units; scipy's KD-tree),
        with their own noise ``s^2 / count``, plus a rounding margin that grows with the weights'
        size (ill-conditioned neighbour sets). Points whose small factor fails get ``os``."""
        from scipy.spatial import cKDTree

        nq = int(self.n_slots[q])
        k = min(self.SCREEN_KNN, nq)
        Xs = self.X / ls
        obs = Xs[self.slot_pt[q, :nq]]
        dist, nbr = cKDTree(obs.cpu().numpy()).query(Xs[idx].cpu().numpy(), k=k)
        dist = torch.as_tensor(np.asarray(dist, dtype=np.float64).reshape(len(idx), k), **self.opts)
        nbr = torch.as_tensor(np.asarray(nbr).reshape(len(idx), k), device=self.X.device)
        nb = obs[nbr]  # m x k x d
        Kkk = os_ * matern52_of_r(torch.cdist(nb, nb, compute_mode="donot_use_mm_for_euclid_dist"))
        Kkk.diagonal(dim1=-2, dim2=-1).add_(noise * noise / self.cnt[q, :nq][nbr])
        kx = os_ * matern52_of_r(dist)
        Lk, info = torch.linalg.cholesky_ex(Kkk)
        sol = torch.cholesky_solve(kx[..., None], Lk)[..., 0]
        var = os_ - (kx * sol).sum(-1) + 1e-9 * os_ * (1.0 + sol.abs().sum(-1))
        var = torch.where(info > 0, os_.expand_as(var), var)
        return torch.clamp(var, min=1e-12)

    def _scale(self) -> torch.Tensor:
        return torch.where(self.ymax > 0, self.ymax, torch.ones_like(self.ymax))

    def _prior_all(self) -> torch.Tensor:
        if self.prior is None:
            return torch.zeros(self.b, self.P, **self.opts)
        return self.prior_weight[:, None] * self.prior

    def _observe_collapsed(self, pts, yy):
        rows = torch.arange(self.b, device=pts.device)
        slot = self.slot_of[rows, pts]
        new = slot < 0
        slot = torch.where(new, self.n_slots, slot)
        self.slot_of[rows[new], pts[new]] = slot[new]
        self.slot_pt[rows, slot] = pts
        self.n_slots = self.n_slots + new.long()
        if self.slot_bins is not None and bool(new.any()):
            self.slot_bins[rows[new], :, slot[new]] = self._bins_to_all(pts[new])
        self.cnt[rows, slot] += 1
        self.sum[rows, slot] += yy
        self.sumsq[rows, slot] += yy * yy

    def _collapsed(self) -> dict:
        U = int(self.n_slots.max())
        mask = (torch.arange(U, device=self.X.device)[None, :] < self.n_slots[:, None]).to(self.X.dtype)
        pts = self.slot_pt[:, :U]
        cnt = torch.where(mask > 0, self.cnt[:, :U], torch.ones_like(mask))
        c = self._scale()[:, None]
        ybar = self.sum[:, :U] / cnt / c
        ss = torch.clamp(self.sumsq[:, :U] / (c * c) - cnt * ybar * ybar, min=0.0) * mask
        prior_u = torch.gather(self._prior_all(), 1, pts) if self.prior is not None else torch.zeros_like(ybar)
        # padding slots sit at distinct points 1e6 apart, far from everything: their covariance
        # with any other slot is exactly 0 in float64, so no masking is needed in the refit
        far = 1e6 * (1.0 + torch.arange(U, device=self.X.device, dtype=self.X.dtype))[None, :, None]
        Xu = torch.where(mask[..., None] > 0, self.X[pts], far.expand(self.b, U, self.d))
        return dict(Xu=Xu, mask=mask, cnt=cnt, r=(ybar - prior_u) * mask, ss=ss)

    def _chol(self, data, ls, noise, os_):
        """Cholesky factor of the noisy covariance of the unique slots and the centred responses.
        Every caller solves with the factor (torch.linalg.solve_triangular reads only the lower
        triangle): above INPLACE_MIN_U unique points it is LAPACK's in-place factor, whose strict
        upper triangle still holds the covariance."""
        mask, cnt = data["mask"], data["cnt"]

        def covariance():
            if self.lattice is not None:  # kernel per offset bin, gathered; padding pairs get 0
                bins = data["bin"] if "bin" in data else self._pair_bins(data)
                K = self._lookup(self._kernel_bins(ls) * os_[:, None], bins)
            else:
                Xu = data["Xu"]
                K = matern52(Xu, Xu, ls)
                K = os_[:, None, None] * K * (mask[:, :, None] * mask[:, None, :])
            K.diagonal(dim1=-2, dim2=-1).add_(mask * (noise * noise)[:, None] / cnt + (1.0 - mask))
            return K

        K = covariance()
        if self._in_place(K):
            if all(lapack.potrf_(K[q]) == 0 for q in range(self.b)):
                return K, data["r"]
            K = covariance()  # a factor needs jitter: the torch path below
        info = lambda r: (f"lengthscale={ls[r].detach().tolist()}, noise={float(noise[r].detach()):.3g}, "  # noqa: E731
                          f"outputscale={float(os_[r].detach()):.3g}")
        return safe_cholesky(K, self.max_jitter, "GP covariance", info), data["r"]

    def mll_and_grad(self, data, raw, with_mll: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Exact log marginal likelihood (``b``) and its gradient with respect to the packed raw
        parameters ``raw`` = [raw length-scales (d), raw noise std, raw output scale] (``b x (d+2)``).

        d mll / d theta = 1/2 tr((alpha alpha^T - Kn^-1) dKn/dtheta) + d corr / d theta, with the
        Matérn-5/2 derivative dk/d(r^2) = -5/6 (1 + sqrt5 r) exp(-sqrt5 r), and the chain rule
        through GPyTorch's Interval (sigmoid) transforms. ``with_mll=False`` skips the value (the
        refit only needs the gradient) and returns ``None`` for it.
        """
        d = self.d
        if "inv_cnt" not in data:  # terms fixed during a refit, computed once per refit
            mask, cnt = data["mask"], data["cnt"]
            data["inv_cnt"], data["pad_diag"] = mask / cnt, 1.0 - mask
            data["half_cm1"] = (mask * (-0.5 * (cnt - 1))).sum(-1)
            data["ss_sum"] = data["ss"].sum(-1)
        sig = torch.sigmoid(raw)
        val = self._raw_lo + self._raw_span * sig  # Interval.transform of each packed parameter
        ls, noise, os_ = val[:, :d], val[:, d], val[:, d + 1]
        mask, cnt = data["mask"], data["cnt"]
        b, U = mask.shape
        inv_ls2 = 1.0 / (ls * ls)
        if "bin" in data:  # integer grid: kernel per offset bin, gathered (see _lattice_init)
            D2 = self.lattice["D2"]
            r2 = inv_ls2 @ D2.T  # b x bins
        else:
            sqdiff = data["sqdiff"]
            r2 = torch.einsum("bijd,bd->bij", sqdiff, inv_ls2)
        r = torch.sqrt(torch.clamp(r2, min=1e-30))
        e = torch.exp(-SQRT5 * r)
        kb = (1.0 + SQRT5 * r + (5.0 / 3.0) * r2) * e  # padding slots: exactly 0 off the diagonal
        s2 = noise * noise
        if "bin" in data:
            kb_bins = torch.cat([kb, torch.zeros_like(kb[:, :1])], 1)
        else:
            kb = kb - torch.diag_embed(1.0 - mask)  # ... and 0 on it

        def noisy_covariance():
            if "bin" in data:
                Kn = self._lookup(kb_bins * os_[:, None], data["bin"])  # padding pairs, diagonal included: 0
            else:
                Kn = os_[:, None, None] * kb
            Kn.diagonal(dim1=-2, dim2=-1).add_(data["inv_cnt"] * s2[:, None] + data["pad_diag"])
            return Kn

        Kn = noisy_covariance()
        rv = data["r"]
        dcorr_ds2 = data["half_cm1"] / s2 + data["ss_sum"] / (2 * s2 * s2)
        Wb = None
        if "bin" in data and self._in_place(Kn):
            Wb, dW, alpha, half_logdet = self._lower_triangle_w(data, Kn, rv)
            if Wb is None:  # a factor needs jitter: the torch path below, on a fresh copy
                Kn = noisy_covariance()
        if Wb is None:
            info = lambda q: f"lengthscale={ls[q].tolist()}, noise={float(noise[q]):.3g}, outputscale={float(os_[q]):.3g}"  # noqa: E731
            L = safe_cholesky(Kn, self.max_jitter, "GP covariance", info)
            if U <= 64:  # small batched factors: a triangular inverse and one bmm beat LAPACK's potri here
                Linv = torch.linalg.solve_triangular(L, torch.eye(U, **self.opts).expand(b, U, U), upper=False)
                Kinv = Linv.mT @ Linv
            else:
                Kinv = torch.cholesky_inverse(L)
            alpha = (Kinv @ rv[..., None])[..., 0]
            half_logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1) if with_mll else None
            W = Kinv.baddbmm_(alpha[:, :, None], alpha[:, None, :], beta=-1.0)  # alpha alpha^T - Kn^-1, in place
            dW = torch.diagonal(W, dim1=-2, dim2=-1)
            if "bin" in data:  # sum W over the pairs of each offset bin once; the kernel terms are then per bin
                Wb = torch.zeros(b, kb_bins.shape[1], **self.opts).scatter_add_(1, data["bin"].reshape(b, -1),
                                                                              W.reshape(b, -1))
        g_s2 = 0.5 * (dW * data["inv_cnt"]).sum(-1) + dcorr_ds2
        if "bin" in data:
            g_os = 0.5 * (Wb * kb_bins).sum(-1)
            dk_dr2 = (-5.0 / 6.0) * (1.0 + SQRT5 * r) * e * os_[:, None]  # b x bins
            g_ls = -((Wb[:, :-1] * dk_dr2) @ D2) / (ls * ls * ls)
        else:
            g_os = 0.5 * (W * kb).sum((-2, -1))
            dk_dr2 = (-5.0 / 6.0) * (1.0 + SQRT5 * r) * e * os_[:, None, None]  # 0 wherever a padding slot is
            g_ls = -torch.einsum("bij,bijd->bd", W * dk_dr2, sqdiff) / (ls * ls * ls)
        grad = torch.cat([g_ls, (g_s2 * 2 * noise)[:, None], g_os[:, None]], dim=1) * self._raw_span * (sig * (1 - sig))
        mll = self._mll_value(data, (rv * alpha).sum(-1), half_logdet, s2) if with_mll else None
        return mll, grad

    # Unique points from which the refit's gradient factors ``Kn`` in place with LAPACK (see
    # neuro_opt/gp/lapack.py: same routines, without torch's copies); smaller factors batch better
    # through torch.
    INPLACE_MIN_U = 256

    def _in_place(self, K: torch.Tensor) -> bool:
        """Whether the ``b x U x U`` covariance ``K`` is factored in place with LAPACK."""
        return K.shape[-1] >= self.INPLACE_MIN_U and not K.requires_grad and K.device.type == "cpu" \
            and K.dtype == torch.float64 and K.is_contiguous() and lapack.available()
    DISCARD_BINS = 64  # bins the unused triangle's pairs are spread over (see _lower_triangle_w)

    def _lower_triangle_w(self, data, Kn, rv):
        """The refit's ``Wb`` (``alpha alpha^T - Kn^-1`` summed over the pairs of each offset bin,
        ``b x (bins+1)``) and the diagonal of that matrix (``b x U``), from ``Kn``'s lower triangle
        factored and inverted in place. ``(None, None)`` when a factor is not positive definite.

        Only the lower triangle holds ``Kn^-1``; the strict upper one keeps ``Kn``. Its pairs go to
        DISCARD_BINS discard bins (by column: one shared discard bin would serialize the scatter on one
        address), and by symmetry every off-diagonal pair of a bin counts twice:
        ``Wb = 2 * (lower-triangle sums) - (diagonal sums)``. Also returns ``alpha = Kn^-1 r`` and the
        sum of the log of the factor's diagonal (half the log-determinant), for the MLL's value."""
        b, U = rv.shape
        nb = self.lattice["n_bins"]
        if "bin_lower" not in data:
            upper = torch.ones(U, U, dtype=torch.bool, device=Kn.device).triu_(1)
            discard = nb + 1 + torch.arange(U, device=Kn.device) % self.DISCARD_BINS
            data["bin_lower"] = torch.where(upper, discard.expand(U, U), data["bin"]).reshape(b, -1)
            data["bin_diag"] = torch.diagonal(data["bin"], dim1=-2, dim2=-1).contiguous()
        alpha = rv.clone()
        half_logdet = torch.empty(b, **self.opts)
        for q in range(b):
            if lapack.potrf_(Kn[q]) != 0:
                return None, None, None, None
            half_logdet[q] = torch.log(torch.diagonal(Kn[q])).sum()
            lapack.potrs_(Kn[q], alpha[q])  # Kn^-1 r
            lapack.potri_(Kn[q])
        W = Kn.baddbmm_(alpha[:, :, None], alpha[:, None, :], beta=-1.0)  # lower triangle: alpha alpha^T - Kn^-1
        dW = torch.diagonal(W, dim1=-2, dim2=-1)
        S = torch.zeros(b, nb + 1 + self.DISCARD_BINS, **self.opts).scatter_add_(1, data["bin_lower"], W.reshape(b, -1))[:, :nb + 1]
        return 2.0 * S - torch.zeros_like(S).scatter_add_(1, data["bin_diag"], dW), dW, alpha, half_logdet

    def _mll(self, data, ls, noise, os_) -> torch.Tensor:
        """Exact log marginal likelihood of all observations (not just the means), ``b``."""
        L, r = self._chol(data, ls, noise, os_)
        a = torch.linalg.solve_triangular(L, r[..., None], upper=False)[..., 0]
        return self._mll_value(data, (a * a).sum(-1), torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1),
                               noise * noise)

    @staticmethod
    def _mll_value(data, quad, half_logdet, s2) -> torch.Tensor:
        """The log marginal likelihood (``b``) from ``r^T Kn^-1 r`` (``quad``), half the log-determinant
        of ``Kn`` and the noise variance ``s2``: the Gaussian of the point means, plus the within-point
        scatter of repeated queries (p(y_1..y_c | f) = N(ybar | f, s2/c) x the scatter factor)."""
        mask, cnt = data["mask"], data["cnt"]
        corr = mask * (-0.5 * (cnt - 1) * torch.log(2 * math.pi * s2[:, None]) - 0.5 * torch.log(cnt))
        return -0.5 * quad - half_logdet - 0.5 * mask.sum(-1) * math.log(2 * math.pi) + corr.sum(-1) \
            - data["ss"].sum(-1) / (2 * s2)

    def _append_fixed(self, pts, yy):
        n, b = self.n, self.b
        rows = torch.arange(b, device=pts.device)
        ls = self.ls_fixed
        kx = self.os_fixed * matern52(self.X[pts][:, None, :], self.X.expand(b, -1, -1), ls)[:, 0, :]  # b x P
        s2 = self.noise_fixed ** 2
        pm = self.prior[rows, pts] if self.prior is not None else torch.zeros(b, **self.opts)
        if n == 0:
            l = torch.zeros(b, 0, **self.opts)
            d2 = torch.full((b,), self.os_fixed + s2, **self.opts)
        else:
            knn = torch.gather(kx, 1, self.obs_pt[:, :n])  # b x n
            Ln = self.L[:, :n, :n]
            l = torch.linalg.solve_triangular(Ln, knn[..., None], upper=False)[..., 0]
            d2 = self.os_fixed + s2 - (l * l).sum(-1)
        jitter = 0.0
        while bool((d2 <= 1e-14).any()):
            jitter = 1e-10 if jitter == 0 else jitter * 10
            if jitter > self.max_jitter:
                r = int(torch.nonzero(d2 <= 1e-14)[0])
                raise GPNumericalError(
                    f"GP covariance is not positive definite even with jitter {self.max_jitter:g}: replicate {r}: "
                    f"lengthscale={ls[r].tolist()}, noise={self.noise_fixed:.3g}")
            d2 = torch.where(d2 <= 1e-14, d2 + jitter, d2)
        d = torch.sqrt(d2)
        self.obs_pt[:, n] = pts
        self.L[:, n, :n] = l
        self.L[:, n, n] = d
        if n == 0:
            vrow = kx / d[:, None]
            bn, gn = yy / d, pm / d
        else:
            vrow = (kx - torch.bmm(l[:, None, :], self.V[:, :n, :])[:, 0, :]) / d[:, None]
            bn = (yy - (l * self.beta[:, :n]).sum(-1)) / d
            gn = (pm - (l * self.gamma[:, :n]).sum(-1)) / d
        self.V[:, n] = vrow
        self.beta[:, n], self.gamma[:, n] = bn, gn
        self.My += vrow * bn[:, None]
        self.Mm += vrow * gn[:, None]
        self.var_fixed -= vrow * vrow
