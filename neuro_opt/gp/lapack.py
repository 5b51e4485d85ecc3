"""LAPACK's Cholesky routines called in place, for the refit's inner loop on large factors.

Why by hand: the refit needs, at every Adam step, the Cholesky factor of ``Kn`` and the
inverse ``Kn^-1`` (its gradient is a sum of ``Kn^-1`` over the pairs of each lattice offset).
``torch.linalg.cholesky_ex`` and ``torch.cholesky_inverse`` run LAPACK's ``potrf`` and
``potri`` but wrap them in copies: a column-major clone in, the other triangle zeroed, and the
inverse symmetrized into a full matrix. At 500 unique points those copies cost as much as a
third of the factorization itself, ten times per query. The routines here call the same
LAPACK (the MKL that torch's CPU build links and exports) directly on the caller's buffer and
leave the other triangle alone; the refit only reads one triangle. scipy.linalg.lapack has
the same routines but links OpenBLAS, about 1.5-2x slower here at these sizes.

Only CPU float64 C-contiguous ``n x n`` matrices; :func:`available` is False (and callers
keep the torch path) where torch's library does not export the symbols.

Layout: a C-contiguous symmetric matrix is, to Fortran LAPACK, its own transpose; asking for
``uplo='U'`` factors and inverts in what is, in C order, the lower triangle.
"""

from __future__ import annotations

import ctypes
import os

import torch

_LIB = None


def _lib():
    global _LIB
    if _LIB is None:
        try:
            lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
            fns = tuple(getattr(lib, name) for name in ("DPOTRF", "DPOTRS", "DPOTRI"))
            for f in fns:
                f.restype = None
            _LIB = fns
        except (OSError, AttributeError):
            _LIB = False
    return _LIB


def available() -> bool:
    """Whether the in-place routines can run in this process."""
    return bool(_lib())


def _args(A: torch.Tensor):
    if (
        A.dtype != torch.float64
        or A.device.type != "cpu"
        or not A.is_contiguous()
        or A.ndim != 2
        or A.shape[0] != A.shape[1]
    ):
        raise ValueError(
            f"need a C-contiguous square float64 CPU matrix, got {tuple(A.shape)} {A.dtype} "
            f"{A.device}, contiguous={A.is_contiguous()}"
        )
    n = ctypes.c_int(A.shape[0])
    return ctypes.byref(ctypes.c_char(b"U")), ctypes.byref(n), ctypes.c_void_p(A.data_ptr()), ctypes.byref(n)


def potrf_(A: torch.Tensor) -> int:
    """Cholesky ``A = L L^T`` in place: ``L`` in the lower triangle (C order), the strict upper
    triangle untouched. Returns LAPACK's info (0: success; k > 0: the leading k x k block is
    not positive definite)."""
    uplo, n, a, lda = _args(A)
    info = ctypes.c_int(0)
    _lib()[0](uplo, n, a, lda, ctypes.byref(info))
    return info.value


def potrs_(L: torch.Tensor, B: torch.Tensor) -> None:
    """Solve ``A X = B`` in place in ``B`` (a contiguous vector of length n) from :func:`potrf_`'s factor."""
    uplo, n, a, lda = _args(L)
    if B.dtype != torch.float64 or not B.is_contiguous() or B.numel() != L.shape[0]:
        raise ValueError(f"need a contiguous float64 vector of {L.shape[0]}, got {tuple(B.shape)} {B.dtype}")
    info = ctypes.c_int(0)
    _lib()[1](uplo, n, ctypes.byref(ctypes.c_int(1)), a, lda, ctypes.c_void_p(B.data_ptr()), n, ctypes.byref(info))


def potri_(L: torch.Tensor) -> int:
    """``A^-1`` in place from :func:`potrf_`'s factor, in the lower triangle (C order); the
    strict upper triangle untouched. Returns LAPACK's info."""
    uplo, n, a, lda = _args(L)
    info = ctypes.c_int(0)
    _lib()[2](uplo, n, a, lda, ctypes.byref(info))
    return info.value
