"""Grid expansion: an experiment's ``grid:`` crossed into cells.

A cell is a plain, hashable description of one unit of work: its grid
coordinates (``coords``, the columns it adds to every result row) and the
fully resolved config it runs with (``payload``). Its key is a stable hash of
the payload; its random stream derives from (global seed, ``seed_key``), where ``seed_key`` is
the key unless the kind hashes less (the TBFM kind: the cell's simulated session, see
``sweeps.kinds.tbfm``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sweeps import config
from sweeps.schema import ConfigError, as_dict

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = config.GROUPS  # grid keys whose values name config-group options


@dataclass(frozen=True)
class Cell:
    key: str
    coords: dict
    payload: dict
    seed_key: str = ""  # the hash the random stream derives from; "" = key

    def seed_sequence(self, seed: int) -> np.random.SeedSequence:
        return np.random.SeedSequence([int(seed), int((self.seed_key or self.key)[:15], 16)])


def stable_hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def load_group_option(group: str, name: str) -> DictConfig:
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise ConfigError(f"grid.{group}: no option {name!r} in conf/{group}/; available: {', '.join(options)}")
    option = OmegaConf.load(path)
    if not isinstance(option, DictConfig):
        raise ConfigError(f"conf/{group}/{name}.yaml: expected a mapping of keys to values")
    return option


def _cli_keys(overrides: list[str]) -> list[tuple[str, str]]:
    out = []
    for o in overrides:
        k, _, v = o.lstrip("+~").partition("=")
        out.append((k, v))
    return out


def apply_scale(cfg: DictConfig, overrides: list[str]) -> None:
    """Apply ``scales[cfg.scale]`` (dotted key -> value) except keys set on the command line."""
    scales = cfg.get("scales") or {}
    if cfg.scale not in ("default", "paper") and cfg.scale not in scales:
        raise ConfigError(
            f"scale={cfg.scale!r}: expected default or paper{' or ' + ', '.join(scales) if scales else ''}"
        )
    preset = scales.get(cfg.scale) or {}
    cli = [k for k, _ in _cli_keys(overrides)]
    for key, value in preset.items():
        if any(c == key or c.startswith(key + ".") or key.startswith(c + ".") for c in cli):
            continue
        if key.startswith("grid.") and key[5:] in cfg.grid:  # a dotted grid key (grid: {algorithm.kappa: [...]})
            cfg.grid[key[5:]] = value
            continue
        if key.startswith("dataset.") and OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            print(
                f"note: scale={cfg.scale} sets {key}, which dataset {cfg.dataset.name!r} does not take; left out",
                file=sys.stderr,
            )
            continue
        OmegaConf.update(cfg, key, value, merge=False, force_add=False)


def _flatten_grid(grid: dict, prefix: str = "") -> dict:
    """Nested grid mappings (``grid: {params: {n_train: [...]}}``) become dotted keys
    (``params.n_train``), so ``grid.params.n_train=[...]`` overrides them from the command line."""
    out = {}
    for key, values in grid.items():
        if isinstance(values, dict):
            out.update(_flatten_grid(values, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = values
    return out


def grid_axes(cfg: DictConfig) -> dict[str, list]:
    """The grid as ``key -> list of values``, validated."""
    grid = _flatten_grid(as_dict(cfg.grid, "grid"))
    axes = {}
    for key, values in grid.items():
        if key == "muscle" and values == "all":
            axes[key] = values  # expanded per dataset in expand()
            continue
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} must be a non-empty list of values, got {values!r}")
        if len(set(json.dumps(v, sort_keys=True) for v in values)) != len(values):
            raise ConfigError(f"grid.{key} has repeated values: {values}")
        axes[key] = values
    return axes


def expand(cfg: DictConfig, overrides: list[str], problem_keys) -> list[tuple[dict, DictConfig]]:
    """Cross the grid into ``(coords, cell config)`` pairs.

    Group keys (``algorithm``, ``dataset``) load ``conf/<group>/<value>.yaml``;
    command-line overrides ``algorithm.X=...`` still apply to the options that
    have ``X``. ``muscle: all`` expands to every problem of the dataset
    (``problem_keys(cell_cfg)`` lists them; None for kinds without problems).
    """
    axes = grid_axes(cfg)
    if axes.get("muscle") == "all":
        axes.pop("muscle")
        cfg.muscle = "all"
    cli = _cli_keys(overrides)
    combos = [dict(zip(axes, vals)) for vals in itertools.product(*axes.values())] if axes else [{}]
    out = []
    seen = set()
    applied: set[str] = set()  # command-line keys inside a grid group that found an option taking them
    for coords in combos:
        c = cfg.copy()
        # group options first, so that a key inside one (algorithm.kappa) finds its option
        for key in sorted(coords, key=lambda k: k not in GROUPS):
            value = coords[key]
            group = key.split(".", 1)[0]
            if (
                group in GROUPS
                and group in coords
                and key != group
                and OmegaConf.select(c, key, default="__missing__") == "__missing__"
            ):
                # grid.algorithm.kappa with grid.algorithm [gpbo, extensive]: kappa applies to the
                # options that take it; the others run once, with a null coordinate
                coords = {**coords, key: None}
                continue
            if key in GROUPS:
                opt = load_group_option(key, str(value))
                for k, v in cli:
                    if k.startswith(key + ".") and OmegaConf.select(opt, k[len(key) + 1 :]) is not None:
                        OmegaConf.update(opt, k[len(key) + 1 :], OmegaConf.select(cfg, k), merge=False)
                        applied.add(k)
                c[key] = opt
            elif key == "muscle":
                continue
            else:
                if OmegaConf.select(c, key, default="__missing__") == "__missing__" and not key.startswith("params."):
                    raise ConfigError(
                        f"grid key {key!r} is not a config key; grid keys are config keys "
                        f"such as noise, algorithm, algorithm.kappa, muscle"
                    )
                OmegaConf.update(c, key, value, merge=False, force_add=key.startswith("params."))
        ident = json.dumps(coords, sort_keys=True, default=str)
        if ident in seen:
            continue
        seen.add(ident)
        config.check_options(c)  # a grid option, or a command-line key applied to one, typed before any loading
        muscles = coords.get("muscle", c.muscle)
        expands = problem_keys is not None and ("muscle" in axes or muscles != "all" or "muscle" in cfg.report.pool)
        keys = problem_keys(c) if expands else None  # None: the experiment has no dataset problems
        if keys is not None:
            wanted = keys if muscles == "all" else ([muscles] if isinstance(muscles, str) else list(muscles))
            unknown = [m for m in wanted if m not in keys]
            if unknown:
                raise ConfigError(
                    f"muscle {unknown[0]!r} is not in dataset {c.dataset.name!r}; it has: "
                    f"{', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"
                )
            for m in wanted:
                cc = c.copy()
                cc.muscle = m
                out.append(({**coords, "muscle": m}, cc))
        else:
            out.append((coords, c))
    dropped = [
        k
        for k, _ in cli
        if k.split(".", 1)[0] in GROUPS
        and k.split(".", 1)[0] in axes
        and "." in k
        and k not in applied
        and not k.startswith("grid.")
    ]
    if dropped:
        group = dropped[0].split(".", 1)[0]
        raise ConfigError(
            f"{dropped[0]}: no {group} of the grid ({', '.join(map(str, axes[group]))}) takes "
            f"{dropped[0].split('.', 1)[1]!r}; nothing would use it (check its spelling)"
        )
    return out


def make_cell(coords: dict, cell_cfg: DictConfig, payload_keys: tuple[str, ...], seed_key=None) -> Cell:
    """A cell of ``payload_keys``; ``seed_key(payload) -> str``, when the kind has one, narrows its seed."""
    payload = {
        k: OmegaConf.to_container(cell_cfg[k], resolve=True) if OmegaConf.is_config(cell_cfg[k]) else cell_cfg[k]
        for k in payload_keys
    }
    payload["coords"] = coords
    return Cell(
        key=stable_hash(payload), coords=coords, payload=payload, seed_key=seed_key(payload) if seed_key else ""
    )
