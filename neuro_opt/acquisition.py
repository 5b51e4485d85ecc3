"""The acquisition every GP-BO here uses: the upper confidence bound, as an object.

The papers' next query is the argmax of ``mu + kappa * sigma`` over the search space, ties
broken at random (Cell Reports Medicine STAR Methods; kappa 3 by default). :class:`UCB` holds
``kappa`` (checked once) and computes that value for numpy arrays and torch tensors alike;
the screened argmax of large spaces (:meth:`neuro_opt.gp.engine.BatchGP.screened`) bounds the
same value from above and computes it exactly where the bound can win.
"""

from __future__ import annotations

import numpy as np
import torch


def argmax_random_ties(values: np.ndarray, rng: np.random.Generator, rtol: float = 1e-12) -> np.ndarray:
    """Row-wise argmax of ``b x P`` values, ties broken uniformly at random. Returns ``b``."""
    values = np.asarray(values, dtype=np.float64)
    top = values.max(axis=1, keepdims=True)
    ties = values >= top - rtol * np.maximum(np.abs(top), 1.0)
    keys = np.where(ties, rng.random(values.shape), -1.0)
    return keys.argmax(axis=1)


class UCB:
    """Upper confidence bound ``mean + kappa * sqrt(var)``.

    Args:
        kappa: the exploration weight, a number >= 0 (0: the posterior mean).
    """

    def __init__(self, kappa: float):
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float, np.number)) or not kappa >= 0:
            raise ValueError(f"kappa must be >= 0, got {kappa!r}")
        self.kappa = float(kappa)

    def __repr__(self) -> str:
        return f"UCB(kappa={self.kappa:g})"

    def __call__(self, mean, var):
        """``mean``, ``var``: arrays or tensors of one shape (``b x P``); returns the UCB, same shape."""
        sqrt = torch.sqrt if isinstance(var, torch.Tensor) else np.sqrt
        return mean + self.kappa * sqrt(var)

    def argmax(self, mean: np.ndarray, var: np.ndarray, rng: np.random.Generator, what: str = "GP-BO") -> np.ndarray:
        """The next point of each of ``b`` replicates (``b x P`` mean and variance); ``b`` indices.

        Raises FloatingPointError when the UCB is not finite everywhere (a corrupt GP state)."""
        return argmax_finite(self(mean, var), rng, what)


def argmax_finite(values: np.ndarray, rng: np.random.Generator, what: str = "GP-BO") -> np.ndarray:
    """:func:`argmax_random_ties` of acquisition values that must all be finite."""
    if not np.all(np.isfinite(values)):
        raise FloatingPointError(f"{what} acquisition has NaN/inf values; the GP state is corrupt")
    return argmax_random_ties(values, rng)
