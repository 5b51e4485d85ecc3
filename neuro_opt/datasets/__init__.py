"""Datasets: ground truth and response sampling.

``load(name, **kwargs)`` builds a registered dataset from plain arguments; the
sweep configs (``conf/dataset/*.yaml``) pass their keys straight through.

Registered names:

- recordings (``path`` required): ``neuromosaics_nhp``, ``neuromosaics_rat``
  (Dataset 1 ``.mat``), ``neuromosaics_spinal`` (Dataset 2 pickles),
  ``rat_5d`` (5-D cortical ``.mat``), ``lab_table`` (Parquet/CSV trials);
- generators: ``synthetic_nhp``, ``synthetic_rat``, ``synthetic_spinal``,
  ``gamma_smoothness`` (Fig. S5), ``prior_quality`` (Fig. S7), ``spinal4d``
  (Fig. 7), ``synthetic_cortical5d`` (Fig. 8), ``frequency_augmented`` (STAR
  Protocols), ``nonstationary`` (drift, plasticity, electrode loss).
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, cast

from neuro_opt.datasets.base import Dataset, Problem, sample_responses
from neuro_opt.datasets.describe import describe
from neuro_opt.datasets.five_d import load_rat5d, synthetic_cortical5d
from neuro_opt.datasets.frequency import augment_frequency, frequency_augmented
from neuro_opt.datasets.gamma import gamma_smoothness, prior_quality
from neuro_opt.datasets.neuromosaics import load_neuromosaics_cortical, load_neuromosaics_spinal
from neuro_opt.datasets.nonstationary import NonStationaryProblem, nonstationary
from neuro_opt.datasets.spinal import spinal_locomotion4d, synthetic_spinal
from neuro_opt.datasets.synthetic import array_space, synthetic_cortical
from neuro_opt.datasets.tabular import load_table, to_trials

_REGISTRY: dict[str, Callable[..., Dataset]] = {
    "synthetic_nhp": partial(synthetic_cortical, kind="nhp", name="synthetic_nhp"),
    "synthetic_rat": partial(synthetic_cortical, kind="rat", name="synthetic_rat"),
    "neuromosaics_nhp": partial(load_neuromosaics_cortical, species="nhp", name="neuromosaics_nhp"),
    "neuromosaics_rat": partial(load_neuromosaics_cortical, species="rat", name="neuromosaics_rat"),
    "neuromosaics_spinal": partial(load_neuromosaics_spinal, name="neuromosaics_spinal"),
    "rat_5d": partial(load_rat5d, name="rat_5d"),
    "lab_table": partial(load_table, name="lab_table"),
    "synthetic_spinal": partial(synthetic_spinal, name="synthetic_spinal"),
    "gamma_smoothness": partial(gamma_smoothness, name="gamma_smoothness"),
    "prior_quality": partial(prior_quality, name="prior_quality"),
    "spinal4d": partial(spinal_locomotion4d, name="spinal4d"),
    "synthetic_cortical5d": partial(synthetic_cortical5d, name="synthetic_cortical5d"),
    "frequency_augmented": partial(frequency_augmented, name="frequency_augmented"),
    "nonstationary": nonstationary,
}
# keys fixed by the registry entry, not settable from a config
_FIXED = {"name", "kind", "species"}


def register(name: str, builder: Callable[..., Dataset]) -> None:
    """Register a dataset builder under ``name`` (loaders and generators call this)."""
    _REGISTRY[name] = builder


def available() -> list[str]:
    return sorted(_REGISTRY)


def parameters(name: str) -> dict[str, inspect.Parameter] | None:
    """The keyword arguments dataset ``name`` accepts, read from its builder's signature (None: any)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    builder = _REGISTRY[name]
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    fixed = _FIXED if isinstance(builder, partial) else set()
    return {
        n: p
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and not (n in fixed and n in cast(partial[Dataset], builder).keywords)  # fixed is empty unless a partial
    }


def accepted_keys(name: str) -> list[str] | None:
    """The keyword arguments dataset ``name`` accepts (None: any)."""
    params = parameters(name)
    return None if params is None else list(params)


def load(name: str, **kwargs: Any) -> Dataset:
    """Build the dataset ``name`` with keyword arguments from its config.

    Raises:
        ValueError: unknown dataset, or a key the dataset does not accept
            (the message names the key and lists the accepted ones).
    """
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}") from None
    keys = accepted_keys(name)
    if keys is not None:
        unknown = [k for k in kwargs if k not in keys]
        if unknown:
            raise ValueError(f"dataset {name!r}: unknown key(s) {unknown}; accepted keys: {keys}")
        return builder(**kwargs)
    try:
        return builder(**kwargs)
    except TypeError as exc:
        raise ValueError(f"dataset {name!r}: bad arguments {sorted(kwargs)}: {exc}") from None


__all__ = [
    "Dataset",
    "Problem",
    "NonStationaryProblem",
    "sample_responses",
    "load",
    "register",
    "available",
    "accepted_keys",
    "parameters",
    "describe",
    "array_space",
    "synthetic_cortical",
    "synthetic_spinal",
    "spinal_locomotion4d",
    "gamma_smoothness",
    "prior_quality",
    "synthetic_cortical5d",
    "load_rat5d",
    "load_neuromosaics_cortical",
    "load_neuromosaics_spinal",
    "load_table",
    "to_trials",
    "augment_frequency",
    "frequency_augmented",
    "nonstationary",
]

# hierarchical GP-BO (seed 003): the synthetic two-electrode dataset (pairs of channels x delays)
from neuro_opt.datasets.two_electrode import TwoElectrodeProblem, pattern_space, two_electrode  # noqa: E402, F401

register("two_electrode", partial(two_electrode, name="two_electrode"))
