"""neuro-opt: the science library.

Gaussian-process Bayesian optimization of stimulation parameters over discrete
search spaces, benchmark searches, metrics and datasets. Pure library: it never
imports ray, mlflow, hydra or optuna, so it runs from a notebook with plain
arguments.
"""

from neuro_opt.space import SearchSpace

__all__ = ["SearchSpace"]
__version__ = "0.1.0"
