"""The exact marginal likelihood of collapsed observations, and its gradient, batched over replicates."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from neuro_opt.gp import lapack, refit_terms
from neuro_opt.gp.kernels import SQRT5, matern52, matern52_of_r
from neuro_opt.gp.linalg import safe_cholesky

if TYPE_CHECKING:
    from neuro_opt.gp.state import EngineState as _Engine
else:
    _Engine = object


class MarginalLikelihood(_Engine):
    """Part of :class:`neuro_opt.gp.engine.BatchGP` (a mixin: it uses the engine's buffers and parameters)."""

    def _observe_collapsed(self, pts: torch.Tensor, yy: torch.Tensor) -> None:
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

    def _collapsed(self) -> dict[str, torch.Tensor]:
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
        return dict(Xu=Xu, mask=mask, cnt=cnt, r=(ybar - prior_u) * mask, ss=ss, n_slots=self.n_slots.clone())

    def _chol(
        self, data: dict[str, torch.Tensor], ls: torch.Tensor, noise: torch.Tensor, os_: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cholesky factor of the noisy covariance of the unique slots and the centred responses.
        Every caller solves with the factor (torch.linalg.solve_triangular reads only the lower
        triangle): above INPLACE_MIN_U unique points it is LAPACK's in-place factor, whose strict
        upper triangle still holds the covariance."""
        mask = data["mask"]

        def covariance() -> torch.Tensor:
            if self.lattice is not None:  # kernel per offset bin, gathered; padding pairs get 0
                bins = data["bin"] if "bin" in data else self._pair_bins(data)
                K = self._lookup(self._kernel_bins(ls) * os_[:, None], bins)
            else:
                Xu = data["Xu"]
                K = matern52(Xu, Xu, ls)
                K = os_[:, None, None] * K * (mask[:, :, None] * mask[:, None, :])
            K.diagonal(dim1=-2, dim2=-1).add_(self._noise_diagonal(data, noise))
            return K

        K = covariance()
        if self._in_place(K):
            if all(lapack.potrf_(K[q]) == 0 for q in range(self.b)):
                return K, data["r"]
            K = covariance()  # a factor needs jitter: the torch path below

        def info(r: int) -> str:
            return (
                f"lengthscale={ls[r].detach().tolist()}, noise={float(noise[r].detach()):.3g}, "
                f"outputscale={float(os_[r].detach()):.3g}"
            )

        return safe_cholesky(K, self.max_jitter, "GP covariance", info), data["r"]

    @staticmethod
    def _noise_diagonal(data: dict[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        """What the noise adds to the covariance's diagonal: ``noise^2 / count`` at each unique slot, 1
        at padding slots (``b x U``)."""
        mask = data["mask"]
        return mask * (noise * noise)[:, None] / data["cnt"] + (1.0 - mask)

    def mll_and_grad(
        self, data: dict[str, torch.Tensor], raw: torch.Tensor, with_mll: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
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
            assert self.lattice is not None  # data["bin"] is made only on a lattice
            D2 = self.lattice["D2"]
            r2 = inv_ls2 @ D2.T  # b x bins
        else:
            sqdiff = data["sqdiff"]
            r2 = torch.einsum("bijd,bd->bij", sqdiff, inv_ls2)
        r = torch.sqrt(torch.clamp(r2, min=1e-30))
        e = torch.exp(-SQRT5 * r)
        kb = matern52_of_r(r, r2, e)  # padding slots: exactly 0 off the diagonal
        s2 = noise * noise
        if "bin" in data:
            kb_bins = torch.cat([kb, torch.zeros_like(kb[:, :1])], 1)
        else:
            kb = kb - torch.diag_embed(1.0 - mask)  # ... and 0 on it

        diag = data["inv_cnt"] * s2[:, None] + data["pad_diag"]

        def noisy_covariance() -> torch.Tensor:
            if "bin" in data:
                Kn = self._lookup(kb_bins * os_[:, None], data["bin"])  # padding pairs, diagonal included: 0
            else:
                Kn = os_[:, None, None] * kb
            Kn.diagonal(dim1=-2, dim2=-1).add_(diag)
            return Kn

        rv = data["r"]
        dcorr_ds2 = data["half_cm1"] / s2 + data["ss_sum"] / (2 * s2 * s2)
        Wb = None
        if "bin" in data and self._compiled(b, U, rv):
            out = refit_terms.terms(data["n_slots"], data["bin"], kb_bins * os_[:, None], diag, rv)
            if out is not None:  # else a factor needs jitter: the torch paths below
                Wb, dW, alpha, half_logdet = out
        if Wb is None:
            Kn = noisy_covariance()
            if "bin" in data and self._in_place(Kn):
                Wb, dW, alpha, half_logdet = self._lower_triangle_w(data, Kn, rv)
                if Wb is None:  # a factor needs jitter: the torch path below, on a fresh copy
                    Kn = noisy_covariance()
        if Wb is None:

            def info(q: int) -> str:
                return f"lengthscale={ls[q].tolist()}, noise={float(noise[q]):.3g}, outputscale={float(os_[q]):.3g}"

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
                Wb = torch.zeros(b, kb_bins.shape[1], **self.opts).scatter_add_(
                    1, data["bin"].reshape(b, -1), W.reshape(b, -1)
                )
        g_s2 = 0.5 * (dW * data["inv_cnt"]).sum(-1) + dcorr_ds2
        if "bin" in data:
            assert Wb is not None  # set by either path above when data has "bin"
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

    # The compiled routine (neuro_opt/gp/refit_terms.py) takes the refit's gradient on a lattice for
    # batches of at least COMPILED_MIN_B replicates of at most COMPILED_MAX_U unique points. It runs
    # 8 replicates per pass in SIMD lanes, so a smaller batch (online use: one replicate) would pay for
    # idle lanes; it keeps the torch path.
    COMPILED_MIN_B, COMPILED_MAX_U = 8, 128

    def _compiled(self, b: int, U: int, like: torch.Tensor) -> bool:
        """Whether the refit's gradient on a lattice (``b`` replicates, ``U`` unique points) runs compiled."""
        return (
            b >= self.COMPILED_MIN_B
            and U <= self.COMPILED_MAX_U
            and like.device.type == "cpu"
            and like.dtype == torch.float64
            and not like.requires_grad
            and refit_terms.available()
        )

    # Unique points from which the refit's gradient factors ``Kn`` in place with LAPACK (see
    # neuro_opt/gp/lapack.py: same routines, without torch's copies); smaller factors batch better
    # through torch.
    INPLACE_MIN_U = 256

    def _in_place(self, K: torch.Tensor) -> bool:
        """Whether the ``b x U x U`` covariance ``K`` is factored in place with LAPACK."""
        return (
            K.shape[-1] >= self.INPLACE_MIN_U
            and not K.requires_grad
            and K.device.type == "cpu"
            and K.dtype == torch.float64
            and K.is_contiguous()
            and lapack.available()
        )

    DISCARD_BINS = 64  # bins the unused triangle's pairs are spread over (see _lower_triangle_w)

    def _lower_triangle_w(
        self, data: dict[str, torch.Tensor], Kn: torch.Tensor, rv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | tuple[None, None, None, None]:
        """The refit's ``Wb`` (``alpha alpha^T - Kn^-1`` summed over the pairs of each offset bin,
        ``b x (bins+1)``) and the diagonal of that matrix (``b x U``), from ``Kn``'s lower triangle
        factored and inverted in place. ``(None, None)`` when a factor is not positive definite.

        Only the lower triangle holds ``Kn^-1``; the strict upper one keeps ``Kn``. Its pairs go to
        DISCARD_BINS discard bins (by column: one shared discard bin would serialize the scatter on one
        address), and by symmetry every off-diagonal pair of a bin counts twice:
        ``Wb = 2 * (lower-triangle sums) - (diagonal sums)``. Also returns ``alpha = Kn^-1 r`` and the
        sum of the log of the factor's diagonal (half the log-determinant), for the MLL's value."""
        b, U = rv.shape
        assert self.lattice is not None  # called only with data["bin"], made only on a lattice
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
        S = torch.zeros(b, nb + 1 + self.DISCARD_BINS, **self.opts)
        S = S.scatter_add_(1, data["bin_lower"], W.reshape(b, -1))[:, : nb + 1]
        return 2.0 * S - torch.zeros_like(S).scatter_add_(1, data["bin_diag"], dW), dW, alpha, half_logdet

    def _mll(
        self, data: dict[str, torch.Tensor], ls: torch.Tensor, noise: torch.Tensor, os_: torch.Tensor
    ) -> torch.Tensor:
        """Exact log marginal likelihood of all observations (not just the means), ``b``."""
        L, r = self._chol(data, ls, noise, os_)
        a = torch.linalg.solve_triangular(L, r[..., None], upper=False)[..., 0]
        return self._mll_value(
            data, (a * a).sum(-1), torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1), noise * noise
        )

    @staticmethod
    def _mll_value(
        data: dict[str, torch.Tensor], quad: torch.Tensor, half_logdet: torch.Tensor, s2: torch.Tensor
    ) -> torch.Tensor:
        """The log marginal likelihood (``b``) from ``r^T Kn^-1 r`` (``quad``), half the log-determinant
        of ``Kn`` and the noise variance ``s2``: the Gaussian of the point means, plus the within-point
        scatter of repeated queries (p(y_1..y_c | f) = N(ybar | f, s2/c) x the scatter factor)."""
        mask, cnt = data["mask"], data["cnt"]
        corr = mask * (-0.5 * (cnt - 1) * torch.log(2 * math.pi * s2[:, None]) - 0.5 * torch.log(cnt))
        return (
            -0.5 * quad
            - half_logdet
            - 0.5 * mask.sum(-1) * math.log(2 * math.pi)
            + corr.sum(-1)
            - data["ss"].sum(-1) / (2 * s2)
        )
