"""Ask/tell optimizers over discrete search spaces, batched over replicates.

``make(name, space, n_reps, seed, prior=None, **hyperparameters)`` builds one:
``gpbo`` (variable-rho unless ``mode="fixed"``), ``gpbo_fixed_rho``,
``extensive``, ``greedy`` (as the papers' companion code runs it, the default benchmark) and
``greedy_line`` (the STAR Methods' line search; the same as ``greedy`` in 2-D); ``gpbo_botorch``:
the same variable-rho GP-BO as a plain BoTorch loop, one fitted ``SingleTaskGP`` per replicate per
query (the engine's reference).
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable, cast

import numpy as np

from neuro_opt.acquisition import argmax_random_ties
from neuro_opt.algorithms.base import Optimizer
from neuro_opt.algorithms.botorch_reference import BotorchGPBO
from neuro_opt.algorithms.extensive import ExtensiveSearch
from neuro_opt.algorithms.gpbo import GPBO
from neuro_opt.algorithms.greedy import GreedyLineSearch, GreedySearch
from neuro_opt.space import SearchSpace

_REGISTRY: dict[str, Callable[..., Optimizer]] = {
    "gpbo": GPBO,
    "gpbo_fixed_rho": lambda *a, **kw: GPBO(*a, **{"mode": "fixed", **kw}),
    "extensive": ExtensiveSearch,
    "greedy": GreedySearch,
    "greedy_line": GreedyLineSearch,
    "gpbo_botorch": BotorchGPBO,
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def make(
    name: str,
    space: SearchSpace,
    n_reps: int = 1,
    seed: int | np.random.SeedSequence | np.random.Generator = 0,
    prior: np.ndarray | None = None,
    **hyperparameters: Any,
) -> Optimizer:
    """Build optimizer ``name`` for ``space`` with ``n_reps`` replicates."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(available())}") from None
    check_hyperparameters(name, hyperparameters)
    try:
        return cls(space, n_reps=n_reps, seed=seed, prior=prior, **hyperparameters)
    except TypeError as exc:
        raise ValueError(f"algorithm {name!r}: bad hyperparameters {sorted(hyperparameters)}: {exc}") from None


_COMMON = ("self", "space", "n_reps", "seed", "prior")
_NUMBERS = {"float": "a number", "int": "an integer"}


def _class_of(name: str) -> type[Optimizer]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(available())}")
    # every entry but gpbo_fixed_rho (a lambda) is an Optimizer class
    return GPBO if name == "gpbo_fixed_rho" else cast(type[Optimizer], _REGISTRY[name])


def batch_draws(name: str) -> bool:
    """Whether optimizer ``name`` draws every random number for the whole batch at once, so that the
    replicates of several problems can share one batch (:func:`neuro_opt.simulate.simulate_batch`)."""
    return bool(_class_of(name).batch_draws)


def parameters(name: str) -> dict[str, inspect.Parameter] | None:
    """The hyperparameters optimizer ``name`` takes, read from its constructor's signature
    (None: it takes any keyword). The one description of them: :func:`check_hyperparameters` and the
    sweep configs' typed schema (``sweeps.config``) both read it."""
    target = _class_of(name)
    params = {k: p for k, p in inspect.signature(target.__init__).parameters.items() if k not in _COMMON}
    return None if any(p.kind == p.VAR_KEYWORD for p in params.values()) else params


def check_hyperparameters(name: str, hyperparameters: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the key, the value and what is expected for a hyperparameter that
    optimizer ``name`` does not take, or a number of the wrong type (read from its signature)."""
    params = parameters(name)
    if params is None:
        return
    for key, value in hyperparameters.items():
        if key not in params:
            raise ValueError(
                f"algorithm {name!r}: unknown hyperparameter {key!r}; it takes {', '.join(params) or 'none'}"
            )
        ann = str(params[key].annotation).replace(" ", "")
        base, nullable = ann.split("|")[0], ann.endswith("|None")
        if base not in _NUMBERS or (value is None and nullable):
            continue
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not number or (base == "int" and not float(value).is_integer()):
            raise ValueError(
                f"algorithm {name!r}: {key}={value!r}: expected {_NUMBERS[base]}{' or null' if nullable else ''}"
            )


__all__ = [
    "Optimizer",
    "GPBO",
    "ExtensiveSearch",
    "GreedySearch",
    "GreedyLineSearch",
    "BotorchGPBO",
    "make",
    "available",
    "batch_draws",
    "argmax_random_ties",
    "check_hyperparameters",
    "parameters",
]

# hierarchical GP-BO (seed 003): the flat baseline, GP-BO with a product space x time kernel
# (one shared spatial length-scale) over a whole pattern space; the hierarchical search itself
# spans several spaces and lives in neuro_opt.algorithms.hierarchical (make_method, run_patterns)
from neuro_opt.algorithms.product_gpbo import ProductGPBO  # noqa: E402

_REGISTRY["gpbo_product"] = ProductGPBO
