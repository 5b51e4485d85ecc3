"""The Matérn-5/2 kernel (output scale 1): the one kernel every GP here uses."""

from __future__ import annotations

import math

import torch

SQRT5 = math.sqrt(5.0)


def matern52(x1: torch.Tensor, x2: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """Matérn nu=5/2 covariance with output scale 1.

    Args:
        x1: ``b x n x d``; x2: ``b x m x d``; lengthscale: ``b x d``.
    Returns:
        ``b x n x m``.
    """
    ls = lengthscale.unsqueeze(-2)
    return matern52_of_r(torch.cdist(x1 / ls, x2 / ls, compute_mode="donot_use_mm_for_euclid_dist"))


def matern52_of_r(r: torch.Tensor, r2: torch.Tensor | None = None, e: torch.Tensor | None = None) -> torch.Tensor:
    """Matérn nu=5/2 (output scale 1) of scaled distances ``r``.

    ``r2`` (their squares) and ``e`` (``exp(-sqrt(5) r)``), when the caller has them already
    (the likelihood gradient reuses ``e``), are used instead of being recomputed."""
    e = torch.exp(-SQRT5 * r) if e is None else e
    return (1.0 + SQRT5 * r + (5.0 / 3.0) * (r * r if r2 is None else r2)) * e
