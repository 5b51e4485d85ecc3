"""Temporal basis function model (TBFM).

For a trial with runway ``r`` (``R x C``) and stimulation descriptor ``d``
(``H x 3``), the forecast of channel ``c`` at step ``t`` is::

    y[t, c] = r[-1, c] + std[c] * sum_b w[b, c] * basis[b, t]

* ``basis = G(d)`` (``B x H``): an MLP of the flattened descriptor (the basis
  generator); it depends on the stimulation only, never on the trial's state.
* ``w = W z + b`` (``B x C``): an affine map (the weight estimator) of the
  z-scored runway of all channels, ``z = (r - mean) / std`` flattened to ``R*C``.
  ``rank=k`` factors ``W = U V`` (still affine; fewer operations per forecast).
* ``state_agnostic=True`` gives the sham-runway baseline: the estimator sees a
  constant (zero) runway, so the weights are the same for every trial and the
  forecast is the last value plus a state-agnostic response.

Training (:func:`fit_tbfm`) minimizes ``mean((y - target)^2 / std^2) + lam * ||W||_F^2``
(z units) with early stopping on validation R2, by either

* ``method="adamw"``: joint minibatch AdamW on generator and estimator, or
* ``method="alternating"`` (default): for fixed bases the penalized weights have
  a closed form (ridge regression, solved exactly through two eigendecompositions
  since the design is shared by all channels); alternate that with AdamW steps on
  the basis generator against the exact quadratic loss in the bases (sufficient
  statistics ``B x B`` and ``B x H``, so these steps cost no pass over the data).
  Requires a single stimulation descriptor in the training set (one inter-pulse
  interval per session, as in the paper).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from neuro_opt.tbfm.base import ForecastModel
from neuro_opt.tbfm.data import STIM_DIM, TrialSet, zscore_stats
from neuro_opt.tbfm.training import EarlyStopper, FitResult, over_budget, validation_r2


class BasisGenerator(nn.Module):
    """MLP from a stimulation descriptor to temporal bases.

    ``forward(stim)``: ``K x H x S`` descriptors -> ``K x B x H`` bases.

    Args:
        horizon: H. n_bases: B. stim_dim: S (3).
        hidden: width of the hidden layers. depth: number of hidden layers (>= 1).
    """

    def __init__(self, horizon: int, n_bases: int, stim_dim: int = STIM_DIM, hidden: int = 16, depth: int = 2):
        super().__init__()
        if n_bases < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"n_bases, hidden and depth must be >= 1, got {n_bases}, {hidden}, {depth}")
        self.horizon, self.n_bases = horizon, n_bases
        layers: list[nn.Module] = [nn.Linear(horizon * stim_dim, hidden), nn.Tanh()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.Tanh()]
        layers.append(nn.Linear(hidden, n_bases * horizon))
        self.net = nn.Sequential(*layers)

    def forward(self, stim: torch.Tensor) -> torch.Tensor:
        return self.net(stim.flatten(1)).view(stim.shape[0], self.n_bases, self.horizon)

    @torch.no_grad()
    def normalize_(self, stim: torch.Tensor) -> torch.Tensor:
        """Rescale the output layer so each basis has unit RMS over time for descriptor ``stim`` (``1 x H x S``).

        Exact (the output layer is linear per basis); returns the ``B`` factors applied, so the caller
        can divide the weights by them and leave the forecasts unchanged.
        """
        rms = self(stim)[0].pow(2).mean(1).sqrt().clamp_min(1e-8)  # B
        out = self.net[-1]
        out.weight.view(self.n_bases, self.horizon, -1).div_(rms[:, None, None])
        out.bias.view(self.n_bases, self.horizon).div_(rms[:, None])
        return 1.0 / rms


class WeightEstimator(nn.Module):
    """Affine map from the z-scored runway to basis weights.

    ``forward(z)``: ``N x R x C`` -> ``N x B x C``.

    Full rank: ``weight`` is ``B x C x (R*C)`` and ``bias`` ``B x C``. With
    ``rank=k``: ``U`` (``(B*C) x k``) and ``V`` (``k x (R*C)``), ``W = U V``.
    """

    def __init__(self, n_channels: int, runway: int, n_bases: int, rank: int | None = None):
        super().__init__()
        self.n_channels, self.runway, self.n_bases, self.rank = n_channels, runway, n_bases, rank
        d = runway * n_channels
        self.bias = nn.Parameter(torch.zeros(n_bases, n_channels))
        if rank is None:
            self.weight = nn.Parameter(torch.zeros(n_bases, n_channels, d))
        else:
            if rank < 1:
                raise ValueError(f"rank must be >= 1 or None, got {rank}")
            self.U = nn.Parameter(torch.zeros(n_bases * n_channels, rank))
            self.V = nn.Parameter(torch.randn(rank, d) / np.sqrt(d))

    def matrix(self) -> torch.Tensor:
        """The full weight map ``(B*C) x (R*C)``."""
        if self.rank is None:
            return self.weight.reshape(self.n_bases * self.n_channels, -1)
        return self.U @ self.V

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        zf = z.reshape(z.shape[0], -1)
        if self.rank is None:
            w = zf @ self.weight.reshape(self.n_bases * self.n_channels, -1).T
        else:
            w = (zf @ self.V.T) @ self.U.T
        return (w + self.bias.reshape(1, -1)).view(z.shape[0], self.n_bases, self.n_channels)

    def penalty(self) -> torch.Tensor:
        """Squared Frobenius norm of the weight map (the bias is not penalized)."""
        if self.rank is None:
            return (self.weight**2).sum()
        return torch.trace((self.U.T @ self.U) @ (self.V @ self.V.T))


class TBFM(ForecastModel):
    """Temporal basis function model.

    ``model(runway, stim, stim_index)``: runway ``N x R x C`` (raw units),
    descriptors ``K x H x 3`` (or ``H x 3``) -> forecast ``N x H x C`` (raw units).

    Args:
        n_channels: C. runway: R (20). horizon: H (164).
        n_bases: B (12 to 15 in the paper).
        hidden, depth: basis generator MLP width and hidden layers.
        rank: None for the full affine weight map, or k for a rank-k factorization.
        state_agnostic: sham runway (the weights ignore the trial's state).
        device: where it trains and forecasts (``"cpu"`` default, ``"cuda"``, ...; see
            :func:`~neuro_opt.tbfm.base.resolve_device`); :func:`fit_tbfm` trains it there.
    """

    def __init__(
        self,
        n_channels: int,
        runway: int = 20,
        horizon: int = 164,
        n_bases: int = 12,
        *,
        hidden: int = 16,
        depth: int = 2,
        rank: int | None = None,
        state_agnostic: bool = False,
        stim_dim: int = STIM_DIM,
        device: str | torch.device = "cpu",
    ):
        super().__init__(n_channels, runway, horizon, stim_dim, device)
        self.n_bases = n_bases
        self.state_agnostic = bool(state_agnostic)
        self.generator = self._make_generator(horizon, n_bases, stim_dim, hidden, depth)
        self.estimator = WeightEstimator(n_channels, runway, n_bases, rank)
        self.float().to(self.device)

    def _make_generator(self, horizon, n_bases, stim_dim, hidden, depth) -> nn.Module:
        return BasisGenerator(horizon, n_bases, stim_dim, hidden, depth)

    def zscore(self, runway: torch.Tensor) -> torch.Tensor:
        """The estimator's input ``N x R x C``: the z-scored runway, or zeros for the sham model."""
        if self.state_agnostic:
            return torch.zeros_like(runway)
        return (runway - self.mean) / self.std

    def bases(self, stim: torch.Tensor) -> torch.Tensor:
        """Bases ``K x B x H`` for descriptors ``K x H x 3``."""
        return self.generator(stim)

    def _forward(self, runway, stim, stim_index):
        w = self.estimator(self.zscore(runway))  # N x B x C
        bases = self.bases(stim)  # K x B x H
        if bases.shape[0] == 1:
            delta = torch.einsum("nbc,bh->nhc", w, bases[0])
        else:
            delta = torch.einsum("nbc,nbh->nhc", w, bases[stim_index])
        return runway[:, -1:, :] + delta * self.std

    def penalty(self) -> torch.Tensor:
        return self.estimator.penalty()


def fit_tbfm(
    model: TBFM,
    train: TrialSet,
    val: TrialSet,
    *,
    method: str = "alternating",
    lam: float = 1e-2,
    lr: float | None = None,
    weight_decay: float = 1e-4,
    max_iters: int | None = None,
    patience: int | None = None,
    batch_size: int = 256,
    inner_steps: int = 50,
    seed: int = 0,
    max_seconds: float | None = None,
    trainable: list | None = None,
    set_normalizer: bool = True,
    verbose: bool = False,
) -> FitResult:
    """Train a TBFM with early stopping on validation R2; the best model is restored in place.

    Trains on the model's device (``model.device``: the data are moved there).

    Args:
        model: the model (its normalizer is set from ``train`` unless ``set_normalizer=False``).
        train, val: time-ordered trial sets (see :func:`~neuro_opt.tbfm.data.time_ordered_split`).
        method: ``"alternating"`` (closed-form ridge weights + AdamW on the bases) or ``"adamw"``.
        lam: Frobenius penalty on the weight map (loss in z units, mean over trials, time, channels).
            The alternating method fixes the bases' scale (unit RMS) so ``lam`` has a fixed meaning;
            in joint AdamW training the scale floats and 1e-4 did slightly better on the simulator.
        lr: AdamW learning rate (default 1e-2 alternating, 2e-3 adamw).
        weight_decay: AdamW weight decay on the basis generator.
        max_iters: alternations (default 60) or epochs (default 300).
        patience: iterations without validation improvement before stopping (default 8 / 20).
        batch_size: minibatch size (adamw).
        inner_steps: AdamW steps on the basis generator per alternation.
        seed: minibatch order.
        max_seconds: stop after this much training time (CPU seconds of this process, see :func:`over_budget`).
        trainable: generator parameters to update (default all; FSAM passes the newest sub-network).
    """
    model.check_trials(train)
    model.check_trials(val)
    if set_normalizer:
        model.set_normalizer(*zscore_stats(train))
    if method == "alternating":
        if model.device.type == "mps":  # its small solves run in float64
            raise ValueError("method='alternating' needs float64, which the mps device lacks; use method='adamw'")
        return _fit_alternating(
            model,
            train,
            val,
            lam=lam,
            lr=1e-2 if lr is None else lr,
            weight_decay=weight_decay,
            max_iters=60 if max_iters is None else max_iters,
            patience=8 if patience is None else patience,
            inner_steps=inner_steps,
            max_seconds=max_seconds,
            trainable=trainable,
            verbose=verbose,
        )
    if method == "adamw":
        return _fit_adamw(
            model,
            train,
            val,
            lam=lam,
            lr=2e-3 if lr is None else lr,
            weight_decay=weight_decay,
            max_iters=300 if max_iters is None else max_iters,
            patience=20 if patience is None else patience,
            batch_size=batch_size,
            seed=seed,
            max_seconds=max_seconds,
            trainable=trainable,
            verbose=verbose,
        )
    raise ValueError(f"unknown method {method!r}; expected 'alternating' or 'adamw'")


def _fit_adamw(
    model, train, val, *, lam, lr, weight_decay, max_iters, patience, batch_size, seed, max_seconds, trainable, verbose
) -> FitResult:
    t0, c0 = time.perf_counter(), time.process_time()
    runway, target, stim, idx = model.inputs(train)
    gen_params = list(model.generator.parameters()) if trainable is None else list(trainable)
    opt = torch.optim.AdamW(
        [
            {"params": gen_params, "weight_decay": weight_decay},
            {"params": list(model.estimator.parameters()), "weight_decay": 0.0},
        ],
        lr=lr,
    )
    g = torch.Generator().manual_seed(seed)
    stopper = EarlyStopper(model, patience)
    history = []
    n = train.n_trials
    it = 0
    for it in range(1, max_iters + 1):
        model.train()
        perm = torch.randperm(n, generator=g).to(runway.device)  # drawn on the CPU: the same order on any device
        tot = 0.0
        for i in range(0, n, batch_size):
            b = perm[i : i + batch_size]
            pred = model(runway[b], stim, idx[b])
            mse = (((pred - target[b]) / model.std) ** 2).mean()
            loss = mse + lam * model.penalty()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(mse.detach()) * len(b)
        score = validation_r2(model, val)
        history.append((it, tot / n, score))
        if verbose:
            print(f"epoch {it}: train mse {tot / n:.4f} val r2 {score:.4f}")
        if stopper.update(it, score) or over_budget(c0, max_seconds):
            break
    stopper.restore()
    return FitResult(
        "adamw", time.perf_counter() - t0, it, stopper.best_iter, stopper.best, history, time.process_time() - c0
    )


def _fit_alternating(
    model, train, val, *, lam, lr, weight_decay, max_iters, patience, inner_steps, max_seconds, trainable, verbose
) -> FitResult:
    t0, c0 = time.perf_counter(), time.process_time()
    runway, target, stim, idx = model.inputs(train)
    if stim.shape[0] != 1:
        raise ValueError(
            f"method='alternating' needs one stimulation descriptor in the training set, found "
            f"{stim.shape[0]} (mixed inter-pulse intervals); use method='adamw'"
        )
    N, H, C = target.shape
    B = model.n_bases
    est = model.estimator
    dt = torch.float64
    with torch.no_grad():
        # big arrays stay float32 (N x H x C can be hundreds of MB); small solves run in float64
        z = model.zscore(runway).reshape(N, -1)  # N x RC, float32
        D = (target - runway[:, -1:, :]) / model.std  # N x H x C residual to explain, z units, float32
        zbar, Dbar = z.mean(0, dtype=dt), D.mean(0, dtype=dt)
        Zc = z.to(dt) - zbar
        g_eig, Q = torch.linalg.eigh(Zc.T @ Zc)
        g_eig = g_eig.clamp_min(0.0)
        d_sq = float(torch.linalg.vector_norm(D.reshape(-1), dtype=dt) ** 2)
    lam_ = lam * N * H * C
    gen_params = list(model.generator.parameters()) if trainable is None else list(trainable)
    opt = torch.optim.AdamW(gen_params, lr=lr, weight_decay=weight_decay)
    stopper = EarlyStopper(model, patience)
    history = []
    it = 0
    for it in range(1, max_iters + 1):
        # ---- weights: exact ridge solution for the current bases ----
        with torch.no_grad():
            if hasattr(model.generator, "normalize_"):
                model.generator.normalize_(stim)  # fix the scale gauge: lam acts on weights of unit-RMS bases
            Bm = model.bases(stim)[0].to(dt)  # B x H
            M = Bm @ Bm.T
            m_eig, P = torch.linalg.eigh(M)
            m_eig = m_eig.clamp_min(0.0)
            E = torch.einsum("nhc,bh->ncb", D, Bm.float()).to(dt) - (Bm @ Dbar).T  # centred D projected on bases
            X = (E.reshape(N, C * B).T @ Zc).reshape(C, B, -1)
            Xt = torch.einsum("bi,cbj->cij", P, X) @ Q
            Wt = Xt / (m_eig[None, :, None] * g_eig[None, None, :] + lam_)
            W = torch.einsum("bi,cij->cbj", P, Wt) @ Q.T  # C x B x RC
            if est.rank is not None:
                W = reduced_rank(W, g_eig, Q, est.rank)
            bias = (torch.linalg.pinv(M) @ Bm @ Dbar).T - torch.einsum("cbj,j->cb", W, zbar)  # C x B
            set_weights(est, W.permute(1, 0, 2), bias.T)
            # ---- sufficient statistics for the bases ----
            A = est(z.view(N, model.runway, C))  # N x B x C, float32
            S_aa32 = torch.einsum("nbc,ndc->bd", A.to(dt), A.to(dt)).float()
            S_ad32 = torch.einsum("nbc,nhc->bh", A, D)
        # ---- bases: AdamW steps on the exact quadratic loss ----
        model.train()
        loss_val = float("nan")
        for _ in range(inner_steps):
            Bm_ = model.bases(stim)[0]
            # relative SSE (scale ~1 keeps Adam's moments well away from subnormal floats)
            loss = (torch.sum((S_aa32 @ Bm_) * Bm_) - 2.0 * torch.sum(S_ad32 * Bm_)) / d_sq + 1.0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_val = float(loss.detach()) * d_sq / (N * H * C)
        score = validation_r2(model, val)
        history.append((it, loss_val, score))
        if verbose:
            print(f"alternation {it}: train mse {loss_val:.4f} val r2 {score:.4f}")
        if stopper.update(it, score) or over_budget(c0, max_seconds):
            break
    stopper.restore()  # the exact state that was scored (weights solved, then the bases' inner steps)
    return FitResult(
        "alternating", time.perf_counter() - t0, it, stopper.best_iter, stopper.best, history, time.process_time() - c0
    )


def reduced_rank(W: torch.Tensor, g: torch.Tensor, Q: torch.Tensor, k: int) -> torch.Tensor:
    """Best rank-``k`` approximation of ``W`` (``C x B x RC``) in the metric of the runway covariance."""
    C, B, d = W.shape
    s = g.clamp_min(g.max() * 1e-10).sqrt()
    Y = (W.reshape(C * B, d) @ Q) * s  # fitted-value coordinates
    U, S, Vh = torch.linalg.svd(Y, full_matrices=False)
    k = min(k, S.shape[0])
    Yk = (U[:, :k] * S[:k]) @ Vh[:k]
    return ((Yk / s) @ Q.T).reshape(C, B, d)


def set_weights(est: WeightEstimator, W: torch.Tensor, bias: torch.Tensor) -> None:
    """Load ``W`` (``B x C x RC``) and ``bias`` (``B x C``) into an estimator (factorizing if rank-limited)."""
    est.bias.copy_(bias.to(est.bias.dtype))
    if est.rank is None:
        est.weight.copy_(W.to(est.weight.dtype))
        return
    Wf = W.reshape(-1, W.shape[-1])
    U, S, Vh = torch.linalg.svd(Wf, full_matrices=False)
    k = est.rank
    r = min(k, S.shape[0])
    u = torch.zeros_like(est.U, dtype=Wf.dtype)
    v = torch.zeros_like(est.V, dtype=Wf.dtype)
    u[:, :r] = U[:, :r] * S[:r].sqrt()
    v[:r] = S[:r].sqrt()[:, None] * Vh[:r]
    est.U.copy_(u.to(est.U.dtype))
    est.V.copy_(v.to(est.V.dtype))
