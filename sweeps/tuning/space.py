"""The tuning search space and objective: which hyperparameters, in which ranges, scored how."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from sweeps.schema import ConfigError

if TYPE_CHECKING:
    pass

ROOT = Path(__file__).resolve().parents[2]
HP_NAMES = ("kappa", "n_random", "rho_low", "rho_high", "noise_min", "noise_max", "outputscale_low", "outputscale_high")
RATIOS = {
    "rho_ratio": ("rho_low", "rho_high"),
    "noise_ratio": ("noise_min", "noise_max"),
    "outputscale_ratio": ("outputscale_low", "outputscale_high"),
}
INT_HPS = ("n_random", "fit_steps")
NOT_SEARCHABLE = ("name", "mode", "device", "capacity")
TERMS = (
    "exploration_final",
    "exploitation_final",
    "exploration_auc",
    "exploitation_auc",
    "exploration_at",
    "exploitation_at",
)
OBJECTIVES = TERMS + ("mix",)
RESPONSE_MODES = ("gaussian", "repetition_valid", "repetition_all")
COMMON_PARAMS = ("parallel", "heldout", "heldout_reps", "batch_problems", "objective", "published")
TUNE_PARAMS = COMMON_PARAMS + ("n_trials", "space", "start", "sampler", "pruner", "confirm")


# =============================================================================================
# objective
# =============================================================================================
@dataclass(frozen=True)
class Objective:
    """What a trial maximizes, computed per simulated run from its curves.

    ``name``: one of ``TERMS`` (``*_final``: value at the last query; ``*_auc``: mean over
    queries; ``*_at``: value at 1-based query ``query``) or ``mix`` (``sum weights[t] * t``
    over terms ``t``; ``weights`` is read by ``mix`` only).
    """

    name: str = "exploration_final"
    query: int | None = None
    weights: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, d, n_queries: int) -> "Objective":
        if isinstance(d, str):
            d = {"name": d}
        if not isinstance(d, dict):
            raise ConfigError(f"params.objective must be a name or a mapping {{name, query, weights}}, got {d!r}")
        unknown = sorted(set(d) - {"name", "query", "weights"})
        if unknown:
            raise ConfigError(f"params.objective: unknown key(s) {unknown}; expected name, query, weights")
        name, query, weights = d.get("name", "exploration_final"), d.get("query"), dict(d.get("weights") or {})
        if name not in OBJECTIVES:
            raise ConfigError(
                f"params.objective.name={name!r} is not a known objective; expected one of {', '.join(OBJECTIVES)}"
            )
        if name == "mix":
            if not weights:
                raise ConfigError(
                    "params.objective.name=mix needs params.objective.weights, e.g. "
                    "{exploration_final: 0.5, exploitation_auc: 0.5}"
                )
            bad = sorted(set(weights) - set(TERMS))
            if bad:
                raise ConfigError(f"params.objective.weights: unknown term(s) {bad}; terms are {', '.join(TERMS)}")
            for k, w in weights.items():
                if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
                    raise ConfigError(f"params.objective.weights.{k}={w!r}: weights must be numbers >= 0")
            if sum(weights.values()) <= 0:
                raise ConfigError("params.objective.weights: at least one weight must be > 0")
        else:
            weights = {}  # read by mix only: the default objective is a mix, a single term drops its weights
        terms = list(weights) if name == "mix" else [name]
        needs_query = any(t.endswith("_at") for t in terms)
        if needs_query:
            if not isinstance(query, int) or isinstance(query, bool) or not 1 <= query <= n_queries:
                raise ConfigError(
                    f"params.objective.query={query!r}: objective {name!r} needs the 1-based query "
                    f"k at which performance is read, between 1 and n_queries={n_queries}"
                )
        elif query is not None:
            raise ConfigError(
                f"params.objective.query={query!r} is only read by the *_at objectives (name is {name!r})"
            )
        return cls(name=name, query=query, weights=weights)

    def term(self, term: str, curves: dict) -> np.ndarray:
        metric, how = term.split("_", 1)
        c = np.asarray(curves[metric], dtype=np.float64)
        if how == "final":
            return c[:, -1]
        if how == "auc":
            return c.mean(axis=1)
        assert self.query is not None  # from_config requires a query for the *_at terms
        return c[:, self.query - 1]

    def per_run(self, curves: dict) -> np.ndarray:
        """``curves``: ``{"exploration": reps x queries, "exploitation": reps x queries}`` -> ``reps``."""
        if self.name == "mix":
            return sum(w * self.term(t, curves) for t, w in self.weights.items())
        return self.term(self.name, curves)

    def to_dict(self) -> dict:
        return {"name": self.name, "query": self.query, "weights": dict(self.weights)}

    def describe(self) -> str:
        if self.name == "mix":
            return " + ".join(f"{w:g} x {t}" for t, w in self.weights.items())
        return self.name if self.query is None else f"{self.name}(query {self.query})"


# =============================================================================================
# search space
# =============================================================================================
@dataclass(frozen=True)
class Range:
    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    int: bool = False
    choices: tuple | None = None

    def bounds(self) -> tuple[float, float]:
        """``(low, high)`` of a numeric range (one without ``choices``)."""
        assert self.low is not None and self.high is not None  # SearchSpec._range sets both when no choices
        return self.low, self.high

    def contains(self, v: object) -> bool:
        if self.choices is not None:
            return v in self.choices
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return False
        if self.int and float(v) != int(v):
            return False
        low, high = self.bounds()
        return low * (1 - 1e-9) <= v <= high * (1 + 1e-9)

    def describe(self) -> dict:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "int": self.int}


def _sig(x: float) -> float:
    """A derived bound rounded to 12 significant digits (5.0 / 250.0 gives 0.02, not 0.0199...)."""
    return float(f"{x:.12g}")


class SearchSpec:
    """``params.space`` validated against the base algorithm; turns trial parameters into hyperparameters."""

    def __init__(self, space: object, base: dict, n_queries: int) -> None:
        if not isinstance(space, dict) or not space:
            raise ConfigError(
                "params.space must map hyperparameters to ranges, e.g. kappa: {low: 0.5, high: 20.0, log: true}"
            )
        self.base = dict(base)
        searchable = [k for k in base if k not in NOT_SEARCHABLE] + list(RATIOS)
        self.ranges: dict[str, Range] = {}
        for name, spec in space.items():
            if name not in searchable:
                raise ConfigError(
                    f"params.space.{name}: not a hyperparameter of algorithm {base.get('name')!r}; "
                    f"searchable: {', '.join(searchable)}"
                )
            self.ranges[name] = self._range(name, spec)
        for ratio, (lo, hi) in RATIOS.items():
            where = "params.space"
            if lo in self.ranges and hi in self.ranges:
                raise ConfigError(
                    f"{where}: {lo} and {hi} are both searched, which can give {lo} >= {hi}; search "
                    f"{hi} and {ratio} ({lo} = {hi} / {ratio}) instead"
                )
            if ratio in self.ranges:
                r = self.ranges[ratio]
                if hi not in self.ranges:
                    raise ConfigError(f"{where}.{ratio} needs {hi} in params.space too ({lo} = {hi} / {ratio})")
                if lo in self.ranges:
                    raise ConfigError(f"{where}: {lo} is derived from {hi} / {ratio}; drop {where}.{lo}")
                if r.choices is not None and any(c <= 1 for c in r.choices) or r.choices is None and r.bounds()[0] <= 1:
                    raise ConfigError(f"{where}.{ratio} must be > 1 ({hi} / {lo}), got {r.describe()}")
            elif hi in self.ranges and lo in base:
                if self._min(hi) <= base[lo]:
                    raise ConfigError(
                        f"{where}.{hi} goes down to {self._min(hi)}, not above the fixed "
                        f"algorithm.{lo}={base[lo]}; raise its low bound or search {ratio}"
                    )
            elif lo in self.ranges and hi in base:
                if self._max(lo) >= base[hi]:
                    raise ConfigError(
                        f"{where}.{lo} goes up to {self._max(lo)}, not below the fixed "
                        f"algorithm.{hi}={base[hi]}; lower its high bound"
                    )
        if "n_random" in self.ranges and self._max("n_random") > n_queries:
            raise ConfigError(
                f"params.space.n_random goes up to {self._max('n_random')}, more than n_queries={n_queries}"
            )

    @staticmethod
    def _range(name: str, spec: object) -> Range:
        where = f"params.space.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be {{low, high[, log, int]}} or {{choices: [...]}}, got {spec!r}")
        unknown = sorted(set(spec) - {"low", "high", "log", "int", "choices"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; expected low, high, log, int or choices")
        if "choices" in spec:
            ch = spec["choices"]
            if set(spec) != {"choices"} or not isinstance(ch, list) or not ch:
                raise ConfigError(f"{where}.choices must be a non-empty list, alone (no low/high)")
            if len({json.dumps(c) for c in ch}) != len(ch):
                raise ConfigError(f"{where}.choices has repeated values: {ch}")
            if not all(isinstance(c, (int, float, str, bool)) or c is None for c in ch):
                raise ConfigError(f"{where}.choices must hold numbers or strings, got {ch}")
            return Range(name, choices=tuple(ch))
        lo, hi = spec.get("low"), spec.get("high")
        for k, v in (("low", lo), ("high", hi)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"{where}.{k} must be a finite number, got {v!r}")
        lo, hi = cast(float, lo), cast(float, hi)  # the loop just checked both are finite numbers
        if lo >= hi:
            raise ConfigError(f"{where}: low={lo} >= high={hi}; a range needs low < high")
        log, is_int = spec.get("log", False), spec.get("int", name in INT_HPS)
        if not isinstance(log, bool) or not isinstance(is_int, bool):
            raise ConfigError(f"{where}: log and int must be true or false")
        if log and lo <= 0:
            raise ConfigError(f"{where}: log scale needs low > 0, got low={lo}")
        if is_int and (float(lo) != int(lo) or float(hi) != int(hi)):
            raise ConfigError(f"{where}: an integer range needs integer bounds, got low={lo}, high={hi}")
        if is_int:
            lo, hi = int(lo), int(hi)
        else:
            lo, hi = float(lo), float(hi)
        return Range(name, lo, hi, log, is_int)

    def _min(self, name):
        r = self.ranges[name]
        return min(r.choices) if r.choices is not None else r.low

    def _max(self, name):
        r = self.ranges[name]
        return max(r.choices) if r.choices is not None else r.high

    # ---- trials
    def suggest(self, trial) -> dict:
        out = {}
        for name, r in self.ranges.items():
            if r.choices is not None:
                out[name] = trial.suggest_categorical(name, list(r.choices))
            elif r.int:
                out[name] = trial.suggest_int(name, r.low, r.high, log=r.log)
            else:
                out[name] = trial.suggest_float(name, r.low, r.high, log=r.log)
        return out

    def resolve(self, sampled: dict) -> dict:
        """Trial parameters -> the full algorithm config (``name`` and every hyperparameter)."""
        alg = dict(self.base)
        for k, v in sampled.items():
            if k not in RATIOS:
                alg[k] = int(v) if (k in self.ranges and self.ranges[k].int) else v
        for ratio, (lo, hi) in RATIOS.items():
            if ratio in sampled:
                alg[lo] = _sig(alg[hi] / sampled[ratio])
        return alg

    def to_sampled(self, hp: dict, where: str) -> dict:
        """Hyperparameters (e.g. the published defaults) -> trial parameters, for ``enqueue_trial``."""
        out = {}
        for k, v in hp.items():
            if k == "name":
                continue
            if k in self.ranges:
                out[k] = v
            elif any(k == RATIOS[r][0] for r in self.ranges if r in RATIOS):
                continue  # a derived lower bound: set through its ratio below
            elif k not in self.base:
                raise ConfigError(f"{where}: {k!r} is not a hyperparameter of algorithm {self.base.get('name')!r}")
            elif v != self.base[k]:
                raise ConfigError(
                    f"{where}.{k}={v!r}: {k} is not searched (fixed at algorithm.{k}="
                    f"{self.base[k]!r}); add it to params.space or drop it here"
                )
        for ratio, (lo, hi) in RATIOS.items():
            if ratio in self.ranges and lo in hp:
                top = hp.get(hi, self.base.get(hi))
                if not hp[lo] < top:
                    raise ConfigError(f"{where}: {lo}={hp[lo]} must be below {hi}={top}")
                out[ratio] = _sig(top / hp[lo])
        for k, v in out.items():
            if not self.ranges[k].contains(v):
                raise ConfigError(f"{where}: {k}={v} is outside params.space.{k} {self.ranges[k].describe()}")
        return out

    def describe(self) -> dict:
        return {k: r.describe() for k, r in self.ranges.items()}
