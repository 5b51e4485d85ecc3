"""The engine's kernel on integer-grid spaces: kernel values looked up by pairwise offset."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from neuro_opt.gp.kernels import matern52, matern52_of_r

if TYPE_CHECKING:
    from neuro_opt.gp.state import EngineState as _Engine
else:
    _Engine = object


class LatticeKernel(_Engine):
    """Part of :class:`neuro_opt.gp.engine.BatchGP` (a mixin: it uses the engine's buffers and parameters)."""

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
        offsets = torch.stack(
            torch.meshgrid(*[torch.arange(int(n), device=X.device) for n in span], indexing="ij"), -1
        ).reshape(-1, self.d)
        Xi0 = (Xi - Xi.min(0).values).long()
        self.lattice = dict(
            Xi=Xi0,
            stride=stride,
            n_bins=n_bins,
            D2=(offsets.to(X.dtype)) ** 2,  # bins x d: squared offset per dimension
            span=[int(n) for n in span],
            box_index=(Xi0 * stride).sum(-1),
        )
        # circular layout of every signed offset (-(span-1) .. span-1 per dimension) for the screened
        # argmax's FFT convolution (see screened): cell c holds offset c (c < span) or c - N
        # (length >= 2 span - 1, rounded up to a fast FFT length; cells between the two ends hold
        # offsets no pair of points has, and get the padding bin, kernel 0)
        from scipy.fft import next_fast_len

        span_t = torch.tensor(self.lattice["span"], device=X.device)
        N = [next_fast_len(2 * n - 1, real=True) for n in self.lattice["span"]]
        if int(np.prod(N)) <= self.SCREEN_MAX_FFT:
            cells = torch.stack(
                torch.meshgrid(*[torch.arange(n, device=X.device) for n in N], indexing="ij"), -1
            ).reshape(-1, self.d)
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
    MAX_CACHED_BINS = 2**25

    def _bins_init(self) -> None:
        self.slot_bins = None
        # ((n, U), bins): the refit and the next query share it
        self._pair_bins_cache: tuple[tuple[int, int], torch.Tensor] | None = None
        if self.lattice is not None and self.b * self.capacity * self.P <= self.MAX_CACHED_BINS:
            self.slot_bins = torch.full(
                (self.b, self.P, self.capacity), self.lattice["n_bins"], dtype=torch.long, device=self.X.device
            )

    def _bins_to_all(self, pts: torch.Tensor) -> torch.Tensor:
        """Offset bin of each point in ``pts`` (``k``) against every point: ``k x P``."""
        lat = self.lattice
        assert lat is not None  # called only on a lattice (slot_bins is set)
        xi = lat["Xi"]
        return ((xi[pts].unsqueeze(-2) - xi.unsqueeze(0)).abs() * lat["stride"]).sum(-1)

    def _pair_bins(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        """Offset bin of every pair of unique slots (``b x U x U``); pairs with a padding slot
        get the extra bin ``n_bins``, whose kernel value and derivative are 0."""
        lat = self.lattice
        assert lat is not None  # called only on a lattice
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
        assert self.slot_bins is not None  # called only with the cache
        if self.b == 1:
            return self.slot_bins[0].index_select(0, pts[0])[None, :, :U]  # whole rows: index_select's fast path
        return self.slot_bins[:, :, :U][torch.arange(self.b, device=pts.device)[:, None], pts]  # copies U of each row

    @staticmethod
    def _lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``table[q, idx[q, ...]]`` for a ``b x T`` table and ``b x ...`` bins (index_select
        for one replicate: about twice as fast as gather over a large index)."""
        if table.shape[0] == 1:
            return table[0].index_select(0, idx.reshape(-1)).reshape(idx.shape)
        return torch.gather(table, 1, idx.reshape(table.shape[0], -1)).reshape(idx.shape)

    def _kernel_bins(self, ls: torch.Tensor) -> torch.Tensor:
        """Matérn-5/2 (output scale 1) per lattice offset bin, plus a trailing 0 for padding: ``b x (bins+1)``."""
        assert self.lattice is not None  # called only on a lattice
        r2 = (1.0 / (ls * ls)) @ self.lattice["D2"].T
        kb = matern52_of_r(torch.sqrt(torch.clamp(r2, min=1e-30)))  # finite gradient at offset 0 (autograd)
        return torch.cat([kb, torch.zeros_like(kb[:, :1])], 1)

    def _cross(self, data: dict[str, torch.Tensor], ls: torch.Tensor) -> torch.Tensor:
        """Kernel (output scale 1) between the unique slots and every point, 0 on padding slots: ``b x U x P``."""
        U = data["mask"].shape[1]
        if self.slot_bins is not None:  # point-major cache: the transpose of a P x U lookup (a view)
            return self._lookup(self._kernel_bins(ls), self.slot_bins[:, :, :U]).mT
        return matern52(data["Xu"], self.X.expand(self.b, -1, -1), ls) * data["mask"][..., None]
