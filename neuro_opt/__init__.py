"""neuro-opt: the science library.

Gaussian-process Bayesian optimization of stimulation parameters over discrete
search spaces, benchmark searches, metrics and datasets. Pure library: it never
imports ray, mlflow, hydra or optuna, so it runs from a notebook with plain
arguments.
"""

import os
import sys

from neuro_opt.threads import openmp_defaults

# Idle OpenMP threads spin only briefly before they sleep (neuro_opt.threads.OPENMP_ENV). libgomp reads
# this once, when torch loads it: set before torch only, and it has no effect once libgomp is loaded.
if "torch" not in sys.modules:
    openmp_defaults(os.environ)

from neuro_opt.space import SearchSpace  # noqa: E402 - after the environment libgomp reads

__all__ = ["SearchSpace"]
__version__ = "0.1.0"
