"""Numerics shared by the GPs: a Cholesky with bounded jitter, and flushing subnormal floats."""

from __future__ import annotations

import functools

import torch


class GPNumericalError(RuntimeError):
    """A covariance matrix stayed non-positive-definite after the maximum jitter."""


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
    before torch starts its thread pool, so the pool's threads flush too (see flush_denormals)."""
    global _FLUSH_FOR_PROCESS
    _FLUSH_FOR_PROCESS = bool(torch.set_flush_denormal(True))


def flush_denormals(method):
    """Run ``method`` with subnormal floats flushed to zero in the calling thread
    (torch.set_flush_denormal), then restore the default unless the process asked for flushing
    (flush_denormals_for_process). Kernel and inverse entries between far-apart points (a 1-D
    space of 10,000 points with long length-scales: exp(-sqrt5 r) near 1e-308) are subnormal,
    and x86 arithmetic on them is about a hundred times slower. Values below 2.2e-308 change no
    result of any tolerance here."""

    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        on = torch.set_flush_denormal(True)
        try:
            return method(*args, **kwargs)
        finally:
            if on and not _FLUSH_FOR_PROCESS:
                torch.set_flush_denormal(False)

    return wrapped
