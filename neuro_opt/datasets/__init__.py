"""Datasets: ground truth and response sampling.

``load(name, **kwargs)`` builds a registered dataset from plain arguments; the
sweep configs (``conf/dataset/*.yaml``) pass their keys straight through.
"""

from __future__ import annotations

from typing import Callable

from neuro_opt.datasets.base import Dataset, Problem, sample_responses
from neuro_opt.datasets.synthetic import array_space, synthetic_cortical

_REGISTRY: dict[str, Callable[..., Dataset]] = {
    "synthetic_nhp": lambda **kw: synthetic_cortical(kind="nhp", name="synthetic_nhp", **kw),
    "synthetic_rat": lambda **kw: synthetic_cortical(kind="rat", name="synthetic_rat", **kw),
}


def register(name: str, builder: Callable[..., Dataset]) -> None:
    """Register a dataset builder under ``name`` (loaders and generators call this)."""
    _REGISTRY[name] = builder


def available() -> list[str]:
    return sorted(_REGISTRY)


def load(name: str, **kwargs) -> Dataset:
    """Build the dataset ``name`` with keyword arguments from its config."""
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}") from None
    try:
        return builder(**kwargs)
    except TypeError as exc:
        raise ValueError(f"dataset {name!r}: bad arguments {sorted(kwargs)}: {exc}") from None


__all__ = ["Dataset", "Problem", "sample_responses", "load", "register", "available", "array_space",
           "synthetic_cortical"]
