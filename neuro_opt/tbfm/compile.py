"""Compilation: a trained TBFM reduced to a linear model per stimulation descriptor.

The bases depend on the stimulation descriptor only, so for a small discrete
set of descriptors they can be computed once and stored; the MLP is dropped.
The z-scoring and the output scaling are folded into the weight map::

    w     = A x + a                        (A: (B*C) x (R*C), x: the raw runway flattened)
    y[c]  = x_last[c] + basis_d^T w[:, c]  (basis_d: B x H, one per descriptor)

with ``A[(b, c), (r, c')] = std[c] * W[(b, c), (r, c')] / std[c']`` and
``a[(b, c)] = std[c] * (bias[b, c] - sum_j W[(b, c), j] mean[c'(j)] / std[c'(j)])``.
A rank-k model keeps its factors (``A = U V``). The state-agnostic (sham
runway) model compiles to ``A = 0``. Everything runs in numpy float32 with no
autograd, which is what closed-loop inference needs; the folding is done in
float64, so compiled and uncompiled forecasts agree to float32 rounding.

:meth:`CompiledTBFM.stream` gives the same forecast sample by sample (:class:`StreamingForecast`):
the weight map splits into one block per runway position, ``A x = sum_r A_r x_r``, so the blocks of
the samples already in hand are summed while the runway is still arriving and the forecast after the
last sample costs one ``(B*C) x C`` block (a twentieth of the map) and the bases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, cast

import numpy as np
import torch

from neuro_opt.tbfm.data import LEAD_MS, stim_descriptor
from neuro_opt.tbfm.model import TBFM


@dataclass
class CompiledTBFM:
    """A compiled TBFM: numpy only, one set of bases per descriptor key.

    Attributes:
        n_channels, runway, horizon, n_bases: C, R, H, B.
        A: ``(B*C) x (R*C)`` float32 weight map on the raw runway (None if
            rank-limited or state-agnostic).
        U, V: ``(B*C) x k`` and ``k x (R*C)`` factors when rank-limited.
        a: ``B*C`` offset.
        bases: key -> ``H x B`` float32 (transposed bases, ready to multiply).
    """

    n_channels: int
    runway: int
    horizon: int
    n_bases: int
    A: np.ndarray | None
    U: np.ndarray | None
    V: np.ndarray | None
    a: np.ndarray
    bases: dict

    def weights(self, x: np.ndarray) -> np.ndarray:
        """Basis weights ``N x C x B`` for raw runways ``N x R x C``."""
        xf = x.reshape(x.shape[0], -1)
        if self.A is not None:
            w = xf @ self.A.T + self.a
        elif self.U is not None:
            w = (xf @ cast(np.ndarray, self.V).T) @ self.U.T + self.a  # V comes with U (compile_tbfm)
        else:
            w = np.broadcast_to(self.a, (x.shape[0], self.a.size))
        return w.reshape(x.shape[0], self.n_bases, self.n_channels).transpose(0, 2, 1)

    def predict(self, runway: np.ndarray, key) -> np.ndarray:
        """Forecast ``N x H x C`` (or ``H x C`` for a single ``R x C`` runway) for descriptor ``key``.

        Args:
            runway: raw runway ``N x R x C`` or ``R x C`` (float32 preferred).
            key: a descriptor key given to :func:`compile_tbfm` (the inter-pulse interval).
        """
        x = np.asarray(runway)
        single = x.ndim == 2
        if single:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (self.runway, self.n_channels):
            raise ValueError(
                f"runway must be R x C or N x R x C with R={self.runway}, C={self.n_channels}; "
                f"got shape {np.shape(runway)}"
            )
        if not np.isfinite(x).all():
            raise ValueError("runway contains NaN or inf")
        try:
            bt = self.bases[key]
        except KeyError:
            raise KeyError(f"no compiled bases for descriptor {key!r}; compiled: {sorted(self.bases)}") from None
        w = self.weights(x)  # N x C x B
        y = x[:, -1, None, :] + np.matmul(bt, w.transpose(0, 2, 1))  # N x H x C
        return y[0] if single else y

    def predict_one(self, runway: np.ndarray, key) -> np.ndarray:
        """Fast path for one ``R x C`` float32 runway (no checks beyond NaN): ``H x C``.

        This is the closed-loop call: two matrix-vector products and one small matrix product.
        """
        if np.isnan(runway).any():
            raise ValueError("runway contains NaN")
        xf = runway.reshape(-1)
        if self.A is not None:
            w = self.A @ xf + self.a
        elif self.U is not None:
            w = self.U @ (self.V @ xf) + self.a
        else:
            w = self.a
        return runway[-1] + self.bases[key] @ w.reshape(self.n_bases, self.n_channels)

    def stream(self, key) -> "StreamingForecast":
        """A :class:`StreamingForecast` for descriptor ``key``: feed samples as they arrive."""
        if key not in self.bases:
            raise KeyError(f"no compiled bases for descriptor {key!r}; compiled: {sorted(self.bases)}")
        return StreamingForecast(self, key)


class StreamingForecast:
    """The compiled forecast computed as the runway arrives, one ``C``-sample per millisecond.

    A closed loop waits only for what depends on the last sample: :meth:`push` adds that sample's
    block of the weight map to a partial sum the earlier samples already built, and returns the
    forecast over the last ``R`` samples (equal to ``predict_one`` of that runway up to float32
    summation order). :meth:`advance`, called after the forecast has gone out and before the next
    sample, adds the sample's share to the partial sums of the next ``R - 1`` forecasts: the rest of
    the map, once per sample, off the critical path. A rank-limited model streams its ``V`` factor
    the same way; the state-agnostic model has nothing to stream.

    Written by hand: neither numpy nor torch splits a product over inputs that arrive over time;
    the ring of partial sums below is that split.
    """

    def __init__(self, compiled: CompiledTBFM, key: Hashable) -> None:
        c = compiled
        self.compiled, self.key = c, key
        self.R, self.C = c.runway, c.n_channels
        self.bases = c.bases[key]
        M = c.A if c.A is not None else c.V  # the map on the runway: (out) x (R*C), columns (r, c')
        if M is None:
            self.acc = None
        else:
            # blocks[k] = the map's block for runway position R-1-k: blocks[0] is the last sample's
            blocks = M.reshape(M.shape[0], self.R, self.C).transpose(1, 0, 2)[::-1]
            self.last = np.ascontiguousarray(blocks[0])
            self.rest = np.ascontiguousarray(blocks[1:]).reshape(-1, self.C)  # (R-1)*out x C
            self.acc = np.zeros((self.R, M.shape[0]), np.float32)  # partial sums of the next R forecasts
        self.head = 0  # acc[head]: the forecast due at the next pushed sample
        self.n = 0  # samples pushed
        self._x: np.ndarray | None = None

    def push(self, sample: np.ndarray) -> np.ndarray | None:
        """Add the newest ``C`` sample; the ``H x C`` forecast over the last ``R`` samples (None before ``R``)."""
        x = np.array(sample, dtype=np.float32).reshape(-1)  # a copy: the caller may reuse its buffer
        if x.size != self.C:
            raise ValueError(f"a sample is one value per channel ({self.C}); got shape {np.shape(sample)}")
        if np.isnan(x).any():  # rejected before any state changes: the stream is as it was
            raise ValueError(f"sample {self.n} contains NaN")
        if self._x is not None:
            self.advance()
        self._x = x
        self.n += 1
        if self.n < self.R:
            return None
        c = self.compiled
        if self.acc is None:
            w = c.a
        elif c.A is not None:
            w = self.acc[self.head] + self.last @ x + c.a
        else:
            w = c.U @ (self.acc[self.head] + self.last @ x) + c.a
        return x + self.bases @ w.reshape(c.n_bases, self.C)

    def advance(self) -> None:
        """The newest sample's share of the next ``R - 1`` forecasts (off the critical path; :meth:`push`
        calls it first if the caller did not)."""
        x, self._x = self._x, None
        if x is None or self.acc is None:
            return
        contrib = (self.rest @ x).reshape(self.R - 1, -1)  # k-th row: the forecast k samples ahead
        self.acc[self.head] = 0.0  # free: becomes the forecast R samples ahead
        idx = (self.head + np.arange(1, self.R)) % self.R
        self.acc[idx] += contrib
        self.head = (self.head + 1) % self.R


def _np(t: torch.Tensor) -> np.ndarray:
    """A tensor on any device as a float64 numpy array on the CPU (moved first: some devices have no float64)."""
    return t.detach().cpu().double().numpy()


def compile_tbfm(
    model: TBFM, ipis=(10, 30, 100), *, lead: int = LEAD_MS, descriptors: dict | None = None
) -> CompiledTBFM:
    """Compile a trained TBFM for a discrete set of stimulation descriptors.

    The model may live on any device: the bases are computed there and everything is brought to the
    CPU, where the compiled (numpy) forecast runs.

    Args:
        model: a trained :class:`~neuro_opt.tbfm.model.TBFM` (any subclass whose
            ``bases(stim)`` maps ``K x H x 3`` to ``K x B x H``, e.g. the FSAM model).
        ipis: inter-pulse intervals to compile (key = the interval; 0 = sham, no pulse).
        lead: pulse-1 onset in the forecast (ms), as in training.
        descriptors: alternatively ``{key: H x 3 descriptor}``.
    """
    if descriptors is None:
        descriptors = {int(i): stim_descriptor(int(i), model.horizon, lead) for i in ipis}
    if not descriptors:
        raise ValueError("nothing to compile: give at least one inter-pulse interval or descriptor")
    C, R, B = model.n_channels, model.runway, model.n_bases
    with torch.no_grad():
        bases = {}
        for k, d in descriptors.items():
            d = torch.as_tensor(np.asarray(d, dtype=np.float32), device=model.device)
            if d.shape != (model.horizon, model.stim_dim):
                raise ValueError(f"descriptor {k!r} must be {model.horizon} x {model.stim_dim}, got {tuple(d.shape)}")
            bases[k] = np.ascontiguousarray(_np(model.bases(d[None])[0]).T.astype(np.float32))  # H x B
        mean, std = _np(model.mean), _np(model.std)
        est = model.estimator
        bias = _np(est.bias)  # B x C
        in_scale = np.tile(1.0 / std, R)  # R*C: 1/std[c'] for flattened (r, c')
        in_shift = np.tile(mean / std, R)
        out_scale = np.tile(std, B)  # B*C: std[c] for flattened (b, c)
        A = U = V = None
        if model.state_agnostic:
            a = out_scale * bias.reshape(-1)
        elif est.rank is None:
            W = _np(est.weight).reshape(B * C, R * C)
            a = out_scale * (bias.reshape(-1) - W @ in_shift)
            A = np.ascontiguousarray((out_scale[:, None] * W * in_scale[None, :]).astype(np.float32))
        else:
            Uw, Vw = _np(est.U), _np(est.V)
            a = out_scale * (bias.reshape(-1) - Uw @ (Vw @ in_shift))
            U = np.ascontiguousarray((out_scale[:, None] * Uw).astype(np.float32))
            V = np.ascontiguousarray((Vw * in_scale[None, :]).astype(np.float32))
    return CompiledTBFM(
        n_channels=C, runway=R, horizon=model.horizon, n_bases=B, A=A, U=U, V=V, a=a.astype(np.float32), bases=bases
    )
