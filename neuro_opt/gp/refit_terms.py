"""The refit's gradient terms and the posterior for a batch of small covariances on a lattice, in
one compiled call each.

``_refit_terms.c`` (built by setup.py, loaded here with ctypes) does, per replicate, what the
engine's torch path does with a batched Cholesky, a triangular inverse, a product and a
scatter-add: it factors ``Kn``, solves for ``alpha = Kn^-1 r`` and sums ``alpha alpha^T - Kn^-1``
over the pairs of each offset bin (:func:`terms`); or it factors ``Kn`` and solves for the
posterior's sums at every point (:func:`posterior_sums`). :func:`available` is False where the extension was not built
(no C compiler at install time); the engine then keeps its torch path.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os

import torch

_LIB = None
LANES, CHUNK = 8, 128  # as in _refit_terms.c: replicates per pass, points per posterior solve


def _lib():
    global _LIB
    if _LIB is None:
        _LIB = False
        here = os.path.dirname(__file__)
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(here, "_refit_terms" + suffix)
            if os.path.exists(path):
                try:
                    lib = ctypes.CDLL(path)
                    lib.refit_terms.restype = None
                    lib.refit_terms.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 11
                    lib.posterior_terms.restype = None
                    lib.posterior_terms.argtypes = [ctypes.c_int64] * 5 + [ctypes.c_void_p] * 10
                    _LIB = lib
                except OSError:
                    pass
                break
    return _LIB


def available() -> bool:
    """Whether the compiled routine can run in this process."""
    return bool(_lib())


def terms(
    n_slots: torch.Tensor, bins: torch.Tensor, table: torch.Tensor, diag: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The refit's terms for ``b`` replicates padded to ``U`` unique points, on ``T`` offset bins.

    Args:
        n_slots: ``b`` unique points of each replicate (the first ``n`` of its ``U`` slots).
        bins: ``b x U x U`` offset bin of every pair; pairs with a padding slot: bin ``T - 1``.
        table: ``b x T`` covariance per bin (output scale included; 0 in bin ``T - 1``).
        diag: ``b x U`` added to the diagonal (noise variance / count; 1 at padding slots).
        r: ``b x U`` centred responses (0 at padding slots).

    Returns:
        ``Wb`` (``b x T``: ``alpha alpha^T - Kn^-1`` summed over the pairs of each bin, both
        orders), its diagonal ``dW`` (``b x U``), ``alpha = Kn^-1 r`` (``b x U``) and half the
        log-determinant of ``Kn`` (``b``); ``None`` when a replicate's ``Kn`` is not positive
        definite (the caller adds jitter on its own path).
    """
    lib, args = _inputs(n_slots, bins, table, diag, r)
    b, U = r.shape
    T = table.shape[1]
    f64 = dict(dtype=torch.float64)
    Wb, dW, alpha = torch.empty(b, T, **f64), torch.empty(b, U, **f64), torch.empty(b, U, **f64)
    half_logdet, status = torch.empty(b, **f64), torch.empty(b, dtype=torch.int64)
    work = torch.empty(LANES * (2 * U * U + U), **f64)  # each lane's factor, inverse and alpha
    ptrs = [ctypes.c_void_p(t.data_ptr()) for t in (*args, Wb, dW, alpha, half_logdet, status, work)]
    lib.refit_terms(b, U, T, *ptrs)
    if bool((status != 0).any()):
        return None
    return Wb, dW, alpha, half_logdet


def posterior_sums(
    n_slots: torch.Tensor,
    bins: torch.Tensor,
    table: torch.Tensor,
    diag: torch.Tensor,
    r: torch.Tensor,
    cross: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The posterior's sums at all ``P`` points, from the same ``Kn = L L^T`` as :func:`terms`.

    Args:
        n_slots, bins, table, diag, r: as :func:`terms`.
        cross: ``b x P x U`` offset bin of every point and slot (the padding bin at padding
            slots); a view whose last dimension is contiguous will do (e.g. the first ``U`` of a
            larger capacity).

    Returns:
        ``yv`` and ``vv`` (``b x P`` each): with ``v = L^-1 k_p`` (``k_p`` the covariance of point
        ``p`` with the slots) and ``y = L^-1 r``, ``y . v`` (the posterior mean minus the prior)
        and ``v . v`` (the output scale minus the posterior variance); ``None`` when a
        replicate's ``Kn`` is not positive definite.
    """
    lib, args = _inputs(n_slots, bins, table, diag, r)
    b, U = r.shape
    T, P = table.shape[1], cross.shape[1]
    if cross.dtype != torch.int64 or cross.shape[::2] != (b, U) or cross.stride(2) != 1:
        raise ValueError(f"cross: need int64 b x P x {U} with a contiguous last dimension, got {tuple(cross.shape)}")
    if cross.stride(0) != P * cross.stride(1):
        cross = cross.contiguous()
    f64 = dict(dtype=torch.float64)
    yv, vv, status = torch.empty(b, P, **f64), torch.empty(b, P, **f64), torch.empty(b, dtype=torch.int64)
    work = torch.empty(LANES * (U * U + U + U * CHUNK), **f64)  # each lane's factor, y and solves
    ptrs = [ctypes.c_void_p(t.data_ptr()) for t in (*args, cross, yv, vv, status, work)]
    lib.posterior_terms(b, U, T, P, cross.stride(1), *ptrs)
    if bool((status != 0).any()):
        return None
    return yv, vv


def _inputs(n_slots, bins, table, diag, r):
    lib = _lib()
    if not lib:
        raise RuntimeError("the compiled refit routine (neuro_opt/gp/_refit_terms.c) was not built")
    args = [t.contiguous() for t in (n_slots.to(torch.int64), bins.to(torch.int64), table, diag, r)]
    for t in args[2:]:
        if t.dtype != torch.float64 or t.device.type != "cpu":
            raise ValueError(f"need float64 CPU tensors, got {t.dtype} on {t.device}")
    return lib, args
