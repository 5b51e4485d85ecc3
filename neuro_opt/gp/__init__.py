"""Surrogate models: a batched exact GP engine over discrete spaces."""

from neuro_opt.gp.engine import BatchGP, GPNumericalError, matern52

__all__ = ["BatchGP", "GPNumericalError", "matern52"]
