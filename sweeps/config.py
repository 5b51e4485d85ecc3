"""Typed config groups: the schema of every ``algorithm`` and ``dataset`` option.

The root config is typed by :class:`sweeps.schema.Config`; its ``algorithm`` and ``dataset``
groups hold a different set of keys per option, so each option gets its own dataclass, registered
in Hydra's ConfigStore as ``schema/<group>/<name>``. The dataclasses are made from the signature of
the code the option configures (the optimizer's constructor, the dataset's builder), so the config
cannot drift from the code. Fields default to ``MISSING`` ("not set: the code's default applies"):
validation never adds keys, so a cell's payload, and the seed derived from it, is what the YAML
and the command line say.

:func:`check` runs on every composed config (and on every cell's config of a grid) before anything
is loaded or started: an unknown key, a value of the wrong type or an unknown option stops the
launch with one line naming the key, the value and what is expected. Ranges are checked by the code
itself (an optimizer or dataset refuses out-of-range values when the experiment validates its cells).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeps.schema import Config, ConfigError, as_dict

#: config group -> what its options configure
GROUPS = ("algorithm", "dataset")

_SCALARS = {"float": float, "int": int, "str": str, "bool": bool}
_LISTS = {"Sequence[float]": List[float], "Sequence[str]": List[str], "Sequence[int]": List[int]}
_EXPECTED = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}


def _field_type(annotation: Any) -> Any:
    """An OmegaConf field type for a signature annotation (``Any`` where OmegaConf has none, e.g. a union)."""
    text = str(annotation).replace(" ", "") if annotation is not inspect.Parameter.empty else ""
    base, nullable = (text[:-5], True) if text.endswith("|None") else (text, False)
    typ = _SCALARS.get(base) or _LISTS.get(base)
    if typ is None:
        return Any
    return Optional[typ] if nullable else typ


def _parameters(group: str, name: str) -> dict[str, inspect.Parameter] | None:
    if group == "algorithm":
        from neuro_opt import algorithms

        return algorithms.parameters(name)
    from neuro_opt import datasets

    return datasets.parameters(name)


def _available(group: str) -> list[str]:
    from neuro_opt import algorithms, datasets

    return (algorithms if group == "algorithm" else datasets).available()


@functools.lru_cache(maxsize=None)
def option_schema(group: str, name: str) -> type | None:
    """The dataclass typing option ``name`` of ``group`` (None: the code takes any keyword).

    Raises:
        ConfigError: ``name`` is not an option of ``group``.
    """
    try:
        params = _parameters(group, name)
    except ValueError:
        raise ConfigError(
            f"{group}.name={name!r}: not a known {group}; available: {', '.join(_available(group))}"
        ) from None
    if params is None:
        return None
    fields = [("name", str, dataclasses.field(default=MISSING))]
    fields += [
        (key, _field_type(p.annotation), dataclasses.field(default=MISSING))
        for key, p in params.items()
        if key != "name"
    ]
    return dataclasses.make_dataclass(f"{group}_{name}", fields)


def register() -> None:
    """Register every option's schema in Hydra's ConfigStore (``schema/algorithm/gpbo``, ...)."""
    store = ConfigStore.instance()
    for group in GROUPS:
        for name in _available(group):
            schema = option_schema(group, name)
            if schema is not None:
                store.store(group=f"schema/{group}", name=name, node=schema)


def check_option(group: str, option: Any) -> None:
    """Validate one option of ``group`` (a config node or dict) against its schema.

    Raises:
        ConfigError: one line naming ``group.key``, the value and what is expected.
    """
    values = as_dict(option, group)
    name = values.get("name")
    if not isinstance(name, str):
        raise ConfigError(
            f"{group}.name={name!r}: every {group} option names its {group} (one of {', '.join(_available(group))})"
        )
    schema = option_schema(group, name)
    if schema is None:
        return
    node = OmegaConf.structured(schema)
    known = [f.name for f in dataclasses.fields(schema) if f.name != "name"]
    for key, value in values.items():
        if key not in known and key != "name":
            what = "hyperparameter" if group == "algorithm" else "key"
            raise ConfigError(
                f"{group}.{key}: unknown {what} {key!r}; it takes {', '.join(known) or 'none'} ({group} {name!r})"
            )
        try:
            setattr(node, key, value)
        except OmegaConfBaseException:
            typ = next(f.type for f in dataclasses.fields(schema) if f.name == key)
            annotation = (_parameters(group, name) or {})[key].annotation
            raise ConfigError(
                f"{group}.{key}={value!r}: expected {_describe(typ)} ({group} {name!r} takes {key}: {annotation})"
            ) from None


def _describe(typ: Any) -> str:
    args = getattr(typ, "__args__", ())
    if args and type(None) in args:
        return f"{_describe(args[0])} or null"
    if getattr(typ, "__origin__", None) in (list, List):
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s" if args else "a list"
    return _EXPECTED.get(typ, str(typ))


def _check_keys(node: DictConfig, schema: type, where: str) -> None:
    """Keys the typed schema does not know (Hydra's ``+key=value`` adds them even to a typed group)."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    known = set(fields) | ({"hydra"} if not where else set())
    unknown = sorted(set(map(str, node.keys())) - known)
    if unknown:
        what = f"{where.rstrip('.')} keys" if where else "top-level keys"
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; {what} are: "
            f"{', '.join(sorted(known - {'hydra'}))}"
        )
    for name, f in fields.items():
        if dataclasses.is_dataclass(f.default_factory) and isinstance(node.get(name), DictConfig):
            _check_keys(node[name], f.default_factory, f"{where}{name}.")


def check_keys(cfg: DictConfig) -> None:
    """Refuse keys the root schema does not know, at the top level and in its typed groups (Hydra's
    ``+key=value`` adds them even there). Raises :class:`ConfigError` naming the first one."""
    _check_keys(cfg, Config, "")


def check(cfg: DictConfig) -> None:
    """Validate a composed config: :func:`check_keys`, then :func:`check_options`. Raises
    :class:`ConfigError` naming the first bad key."""
    check_keys(cfg)
    check_options(cfg)


def check_options(cfg: DictConfig) -> None:
    """Validate the ``algorithm`` and ``dataset`` options of a config (a grid checks each cell's,
    :func:`sweeps.grid.expand`, once the launch's keys have been checked)."""
    for group in GROUPS:
        if OmegaConf.is_missing(cfg, group) or cfg[group] is None:
            continue
        check_option(group, cfg[group])


register()
