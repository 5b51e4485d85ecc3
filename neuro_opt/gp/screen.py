"""The screened UCB argmax of large spaces: exact UCB only where an upper bound could win."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from neuro_opt.gp.kernels import matern52_of_r
from neuro_opt.gp.linalg import flush_denormals

if TYPE_CHECKING:
    from neuro_opt.gp.state import EngineState as _Engine
else:
    _Engine = object


class ScreenedArgmax(_Engine):
    """Part of :class:`neuro_opt.gp.engine.BatchGP` (a mixin: it uses the engine's buffers and parameters)."""

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
    SCREEN_MAX_FFT = 2**22
    SCREEN_MAX_CHUNK = 4096  # exact values per round at most (memory: b x U x this)

    @property
    def can_screen(self) -> bool:
        """Whether :meth:`screened` applies: variable mode, a large lattice space, data seen."""
        lat = self.lattice
        return (
            self.mode == "variable"
            and lat is not None
            and "fft_bins" in lat
            and self.slot_bins is not None
            and self.P >= self.SCREEN_MIN_POINTS
            and self.n > 0
        )

    SCREEN_MIN_WORK = 2**20  # unique points x points below which the full posterior is as fast

    @property
    def prefer_screen(self) -> bool:
        """Whether :meth:`screened` applies and beats the full posterior (a large ``U x P``)."""
        return self.can_screen and int(self.n_slots.max()) * self.P >= self.SCREEN_MIN_WORK

    @flush_denormals
    def screened(self, kappa: float, chunk: int = 64) -> torch.Tensor:
        """``mean + kappa * sd`` (kappa 0: the mean) exactly at every point that can hold its
        replicate's maximum, ``-inf`` at every other point: ``b x P`` (see the comment above)."""
        if not self.can_screen:
            raise RuntimeError(
                "screened() needs variable mode on a lattice of >= "
                f"{self.SCREEN_MIN_POINTS} points with at least one observation"
            )
        from scipy.ndimage import distance_transform_edt

        lat, b, P, d = self.lattice, self.b, self.P, self.d
        assert lat is not None  # can_screen
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
            conv = torch.fft.irfftn(
                torch.fft.rfftn(box.reshape(b, *span), s=N, dim=dims) * torch.fft.rfftn(T, dim=dims), s=N, dim=dims
            )
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
                    free.reshape(-1)[slots_box[q, : int(self.n_slots[q])].cpu().numpy()] = False
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
                cand = torch.topk(
                    torch.where(open_, ub, torch.full_like(ub, -math.inf)), min(m, self.SCREEN_MAX_CHUNK), dim=1
                ).indices
        return vals

    SCREEN_KNN = 4  # observed points in the refined variance bound

    def _knn_var_bound(
        self, q: int, idx: torch.Tensor, ls: torch.Tensor, noise: torch.Tensor, os_: torch.Tensor
    ) -> torch.Tensor:
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
