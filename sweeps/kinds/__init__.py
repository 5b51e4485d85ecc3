"""Experiment kinds: which :mod:`sweeps.experiment` implementation ``kind`` names.

``kind: NAME`` is ``sweeps.kinds.NAME``'s ``KIND`` unless ``KINDS`` maps NAME elsewhere;
``kind: package.module:Name`` is that module's ``Name`` (a class is instantiated), so an
experiment outside this package needs no entry here.
"""

from __future__ import annotations

import importlib

from sweeps.experiment import DriveExperiment, Experiment
from sweeps.schema import ConfigError

#: built-in kinds whose module is not ``sweeps.kinds.<name>``
KINDS = {"online": "sweeps.online", "calibration": "sweeps.kinds.calibrate"}

_cache: dict[str, Experiment | DriveExperiment] = {}


def get(name: str) -> Experiment | DriveExperiment:
    """The experiment ``kind`` names (one instance per process)."""
    if name not in _cache:
        _cache[name] = _load(name)
    return _cache[name]


def _load(name: str) -> Experiment | DriveExperiment:
    module_name, _, attr = name.partition(":") if ":" in name else (KINDS.get(name, f"{__name__}.{name}"), "", "KIND")
    try:
        module = importlib.import_module(module_name)
        obj = getattr(module, attr)
    except (ImportError, AttributeError, ValueError) as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name and not module_name.startswith(exc.name):
            raise  # the kind's module exists but one of its own imports is missing
        raise ConfigError(
            f"kind={name!r} is not a known experiment kind ({exc}); known: {', '.join(known())}, "
            f"or package.module:ExperimentClass"
        ) from None
    experiment = obj() if isinstance(obj, type) else obj
    if not isinstance(experiment, (Experiment, DriveExperiment)):
        raise ConfigError(
            f"kind={name!r}: {type(experiment).__name__} implements neither sweeps.experiment."
            f"Experiment nor DriveExperiment"
        )
    return experiment


def known() -> list[str]:
    """The built-in kinds (modules of this package with a ``KIND``, and the ``KINDS`` aliases)."""
    import pkgutil

    return sorted({m.name for m in pkgutil.iter_modules(__path__)} - {"calibrate"} | set(KINDS))
