"""Surrogate models: the batched exact GP engine over discrete spaces, its kernel and numerics."""

from neuro_opt.gp.engine import BatchGP
from neuro_opt.gp.kernels import matern52
from neuro_opt.gp.linalg import GPNumericalError

__all__ = ["BatchGP", "GPNumericalError", "matern52"]
