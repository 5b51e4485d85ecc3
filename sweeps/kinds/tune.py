"""``python -m sweeps.launch +exp=tune_gpbo``: an Optuna study of GP-BO hyperparameters, trials on Ray.

The published way to calibrate GP-BO (STAR Protocols steps 10-12 and 57-61) is a hand loop
over value lists, one hyperparameter at a time (``+exp=kappa_calibration``,
:mod:`sweeps.kinds.calibrate`). This kind runs the same calibration as an Optuna study:

* The search space is ``params.space``: ``{hyperparameter: {low, high, log, int} | {choices}}``
  over the keys of the ``algorithm`` config (anything not searched stays at its value
  there). The bound pairs are searched as their upper bound and a ratio, so that
  ``rho_low < rho_high`` and ``noise_min < noise_max`` hold in every trial:
  ``rho_low = rho_high / rho_ratio`` and ``noise_min = noise_max / noise_ratio`` (ratios > 1).
* A trial is scored by simulated GP-BO runs on the dataset's *training* subjects: every
  training problem (``subject/muscle``) x ``n_reps`` replicates, one batched
  :func:`neuro_opt.simulate.simulate` call per problem. The objective
  (``params.objective``) is computed per run and averaged.
* Trials run in parallel as Ray tasks (Optuna ask/tell, driven here): ``params.parallel``
  trials are in flight; each trial's problems are split into batches of
  ``params.batch_problems``; after each batch the running objective is reported to Optuna
  and the pruner may stop the trial.
* Seeds: each run's generator derives with numpy ``SeedSequence`` from (global ``seed``, a
  stable hash of the run's content: dataset, problem, replicates, queries, noise). The hash
  leaves the hyperparameters out on purpose: every trial meets the same random first
  queries and response draws (common random numbers), so trials differ only by their
  hyperparameters, and a trial's score does not depend on the number of workers.
* The study lives in an Optuna RDB storage (``study.storage``; default: ``optuna.db`` in the
  run folder, and a named study is looked up in the experiment's other run folders). A
  launch with an existing ``study.name`` adds ``params.n_trials`` trials to it (it must have
  been created with the same dataset, split, replicates, objective and space); the published
  defaults and ``params.start`` points are enqueued when the study is created.
* The choice (``params.confirm``): the best trial's training score is biased upward (it won
  on those very runs), so the ``top_k`` best trials and the published defaults are re-scored
  on fresh replicates of the training problems (a seed stream no trial saw). The best of the
  trials whose gain over the published defaults there, paired by problem, is at least ``z``
  standard errors across problems is chosen; if none is, the published defaults stay the
  choice (a gain on some maps that does not hold across problems does not transfer to new
  subjects).
* The choice and the published defaults (``params.published``) are then re-scored on the
  held-out subjects, on the same runs (same seeds).

``summary.json`` holds one group per method (``params.method``: ``optuna`` and
``published_defaults``) with ``heldout_objective``, ``train_objective``, ``confirm_objective``
and ``simulated_runs`` (runs spent on training subjects to choose the values: trials and
confirmation; 0 for the published defaults) as ``[value, sem]``, and the chosen values under
``params``; ``study.confirmation`` lists the candidates and ``study.selected`` the winner.
MLflow gets a parent run for the launch, a nested run per trial, the figures (optimization
history, parameter importances, slice plots, held-out curves) and the trials table
(``results/trials.parquet``). ``python -m sweeps.promote`` turns the result into an online
config.

The helpers here (config preparation, the Ray scorer, held-out comparison, reporting) are
shared with :mod:`sweeps.kinds.calibrate`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuro_opt import metrics
from sweeps.schema import ConfigError
from sweeps.store import write_summary

ROOT = Path(__file__).resolve().parents[2]
HP_NAMES = ("kappa", "n_random", "rho_low", "rho_high", "noise_min", "noise_max")
RATIOS = {"rho_ratio": ("rho_low", "rho_high"), "noise_ratio": ("noise_min", "noise_max")}
INT_HPS = ("n_random", "fit_steps")
NOT_SEARCHABLE = ("name", "mode", "device", "capacity")
TERMS = ("exploration_final", "exploitation_final", "exploration_auc", "exploitation_auc",
         "exploration_at", "exploitation_at")
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
    over terms ``t``).
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
            raise ConfigError(f"params.objective.name={name!r} is not a known objective; expected one of "
                              f"{', '.join(OBJECTIVES)}")
        if name == "mix":
            if not weights:
                raise ConfigError("params.objective.name=mix needs params.objective.weights, e.g. "
                                  "{exploration_final: 0.5, exploitation_auc: 0.5}")
            bad = sorted(set(weights) - set(TERMS))
            if bad:
                raise ConfigError(f"params.objective.weights: unknown term(s) {bad}; terms are {', '.join(TERMS)}")
            for k, w in weights.items():
                if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
                    raise ConfigError(f"params.objective.weights.{k}={w!r}: weights must be numbers >= 0")
            if sum(weights.values()) <= 0:
                raise ConfigError("params.objective.weights: at least one weight must be > 0")
        elif weights:
            raise ConfigError(f"params.objective.weights is only read by objective.name=mix (name is {name!r})")
        terms = list(weights) if name == "mix" else [name]
        needs_query = any(t.endswith("_at") for t in terms)
        if needs_query:
            if not isinstance(query, int) or isinstance(query, bool) or not 1 <= query <= n_queries:
                raise ConfigError(f"params.objective.query={query!r}: objective {name!r} needs the 1-based query "
                                  f"k at which performance is read, between 1 and n_queries={n_queries}")
        elif query is not None:
            raise ConfigError(f"params.objective.query={query!r} is only read by the *_at objectives "
                              f"(name is {name!r})")
        return cls(name=name, query=query, weights=weights)

    def term(self, term: str, curves: dict) -> np.ndarray:
        metric, how = term.split("_", 1)
        c = np.asarray(curves[metric], dtype=np.float64)
        if how == "final":
            return c[:, -1]
        if how == "auc":
            return c.mean(axis=1)
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

    def contains(self, v) -> bool:
        if self.choices is not None:
            return v in self.choices
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return False
        if self.int and float(v) != int(v):
            return False
        return self.low * (1 - 1e-9) <= v <= self.high * (1 + 1e-9)

    def describe(self) -> dict:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "int": self.int}


def _sig(x: float) -> float:
    """A derived bound rounded to 12 significant digits (5.0 / 250.0 gives 0.02, not 0.0199...)."""
    return float(f"{x:.12g}")


class SearchSpec:
    """``params.space`` validated against the base algorithm; turns trial parameters into hyperparameters."""

    def __init__(self, space: dict, base: dict, n_queries: int):
        if not isinstance(space, dict) or not space:
            raise ConfigError("params.space must map hyperparameters to ranges, e.g. "
                              "kappa: {low: 0.5, high: 20.0, log: true}")
        self.base = dict(base)
        searchable = [k for k in base if k not in NOT_SEARCHABLE] + list(RATIOS)
        self.ranges: dict[str, Range] = {}
        for name, spec in space.items():
            if name not in searchable:
                raise ConfigError(f"params.space.{name}: not a hyperparameter of algorithm {base.get('name')!r}; "
                                  f"searchable: {', '.join(searchable)}")
            self.ranges[name] = self._range(name, spec)
        for ratio, (lo, hi) in RATIOS.items():
            where = "params.space"
            if lo in self.ranges and hi in self.ranges:
                raise ConfigError(f"{where}: {lo} and {hi} are both searched, which can give {lo} >= {hi}; search "
                                  f"{hi} and {ratio} ({lo} = {hi} / {ratio}) instead")
            if ratio in self.ranges:
                r = self.ranges[ratio]
                if hi not in self.ranges:
                    raise ConfigError(f"{where}.{ratio} needs {hi} in params.space too ({lo} = {hi} / {ratio})")
                if lo in self.ranges:
                    raise ConfigError(f"{where}: {lo} is derived from {hi} / {ratio}; drop {where}.{lo}")
                if r.choices is not None and any(c <= 1 for c in r.choices) or r.choices is None and r.low <= 1:
                    raise ConfigError(f"{where}.{ratio} must be > 1 ({hi} / {lo}), got {r.describe()}")
            elif hi in self.ranges and lo in base:
                if self._min(hi) <= base[lo]:
                    raise ConfigError(f"{where}.{hi} goes down to {self._min(hi)}, not above the fixed "
                                      f"algorithm.{lo}={base[lo]}; raise its low bound or search {ratio}")
            elif lo in self.ranges and hi in base:
                if self._max(lo) >= base[hi]:
                    raise ConfigError(f"{where}.{lo} goes up to {self._max(lo)}, not below the fixed "
                                      f"algorithm.{hi}={base[hi]}; lower its high bound")
        if "n_random" in self.ranges and self._max("n_random") > n_queries:
            raise ConfigError(f"params.space.n_random goes up to {self._max('n_random')}, more than "
                              f"n_queries={n_queries}")

    @staticmethod
    def _range(name: str, spec) -> Range:
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
                raise ConfigError(f"{where}.{k}={v!r}: {k} is not searched (fixed at algorithm.{k}="
                                  f"{self.base[k]!r}); add it to params.space or drop it here")
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


# =============================================================================================
# setup: everything validated before any work
# =============================================================================================
@dataclass
class Setup:
    experiment: str
    seed: int
    dataset_cfg: dict
    dataset: object
    train: list
    heldout: list
    batches: list  # training problem keys per pruning step
    run: dict  # n_reps, n_queries, noise, response_mode, use_prior
    heldout_reps: int
    objective: Objective
    base: dict  # the algorithm config (name + hyperparameters)
    published: dict  # the published defaults as a full algorithm config
    params: dict
    space_dims: dict  # the dataset's search space, {dimension: [values]} (first training problem)
    git: str = ""

    @property
    def train_subjects(self) -> list:
        return list(dict.fromkeys(k.split("/", 1)[0] for k in self.train))

    @property
    def heldout_subjects(self) -> list:
        return list(dict.fromkeys(k.split("/", 1)[0] for k in self.heldout))

    def train_runs(self) -> int:
        return len(self.train) * self.run["n_reps"]

    def settings(self) -> dict:
        """What a study's scores depend on: a resumed study must match it."""
        return {"dataset": self.dataset_cfg, "train": self.train, "heldout": self.heldout,
                "batches": self.batches, "run": self.run, "seed": self.seed, "objective": self.objective.to_dict(),
                "base_algorithm": self.base}


def check_params(params: dict, allowed: tuple, kind: str) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"params: unknown key(s) {unknown} for kind={kind}; known: {', '.join(allowed)}")


def _int_param(params: dict, key: str, minimum: int, default=None) -> int:
    v = params.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ConfigError(f"params.{key}={v!r}: expected an integer >= {minimum}")
    return v


def prepare(cfg, overrides: list, kind: str, allowed: tuple) -> Setup:
    """Validate the composed config and load the dataset; raises ConfigError before any work."""
    from omegaconf import OmegaConf

    from sweeps import grid
    from sweeps.kinds.optimization import KIND as OPT

    grid.apply_scale(cfg, overrides)
    if OmegaConf.to_container(cfg.grid, resolve=True):
        raise ConfigError(f"kind={kind} takes no grid: (got grid keys {list(cfg.grid)}); it searches params.space")
    params = OmegaConf.to_container(cfg.params, resolve=True) or {}
    check_params(params, allowed, kind)
    ds_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
    dataset = OPT.dataset(ds_cfg)

    # ---- split by subject
    subjects = dataset.subjects
    held = params.get("heldout", 1)
    if isinstance(held, int) and not isinstance(held, bool):
        if not 1 <= held < len(subjects):
            raise ConfigError(f"params.heldout={held}: dataset {ds_cfg.get('name')!r} has {len(subjects)} subject(s) "
                              f"({', '.join(subjects)}); hold out between 1 and {len(subjects) - 1} "
                              f"(more subjects: dataset.n_subjects=N for the generators)")
        held_subjects = subjects[-held:]
    elif isinstance(held, list) and held:
        unknown = [s for s in held if s not in subjects]
        if unknown:
            raise ConfigError(f"params.heldout: subject(s) {unknown} not in dataset {ds_cfg.get('name')!r}; "
                              f"it has {', '.join(subjects)}")
        if len(set(held)) == len(subjects):
            raise ConfigError("params.heldout holds out every subject; at least one must be left for training")
        held_subjects = list(held)
    else:
        raise ConfigError(f"params.heldout={held!r}: expected a number of subjects (the last N) or a list of "
                          f"subject names")
    train = [p.key for p in dataset if p.subject not in held_subjects]
    heldout = [p.key for p in dataset if p.subject in held_subjects]

    # ---- runs
    if cfg.n_reps < 1:
        raise ConfigError(f"n_reps={cfg.n_reps}: must be >= 1")
    min_p = min(dataset[k].space.n_points for k in train + heldout)
    n_q = cfg.n_queries
    if n_q is not None and not 1 <= n_q <= min_p:
        raise ConfigError(f"n_queries={n_q}: must be between 1 and the size of the smallest search space "
                          f"({min_p} points)")
    if cfg.response_mode not in RESPONSE_MODES:
        raise ConfigError(f"response_mode={cfg.response_mode!r}: expected one of {', '.join(RESPONSE_MODES)}")
    if not (math.isfinite(cfg.noise) and cfg.noise >= 0):
        raise ConfigError(f"noise={cfg.noise!r}: a noise level is a std as a fraction of the maximum response, >= 0")
    if cfg.response_mode != "gaussian":
        missing = [k for k in train + heldout if dataset[k].repetitions is None]
        if missing:
            raise ConfigError(f"response_mode={cfg.response_mode}: problem {missing[0]!r} has no recorded "
                              f"repetitions; use response_mode=gaussian")
    if cfg.use_prior:
        missing = [k for k in train + heldout if dataset[k].prior is None]
        if missing:
            raise ConfigError(f"use_prior=true but problem {missing[0]!r} has no prior map")
    run = {"n_reps": int(cfg.n_reps), "n_queries": None if n_q is None else int(n_q), "noise": float(cfg.noise),
           "response_mode": str(cfg.response_mode), "use_prior": bool(cfg.use_prior)}
    heldout_reps = _int_param(params, "heldout_reps", 1, cfg.n_reps)
    bp = _int_param(params, "batch_problems", 1, len(train))
    batches = [train[i:i + bp] for i in range(0, len(train), bp)]
    if params.get("parallel") is not None:
        _int_param(params, "parallel", 1)

    # ---- algorithm
    base = OmegaConf.to_container(cfg.algorithm, resolve=True)
    if not str(base.get("name", "")).startswith("gpbo"):
        raise ConfigError(f"algorithm={base.get('name')!r}: kind={kind} calibrates GP-BO (algorithm=gpbo)")
    pub = params.get("published", {})
    if not isinstance(pub, dict):
        raise ConfigError(f"params.published must be a mapping of hyperparameters, got {pub!r}")
    unknown = sorted(set(pub) - set(base))
    if unknown:
        raise ConfigError(f"params.published: {unknown} are not hyperparameters of algorithm {base['name']!r}")
    published = {**base, **pub}
    space0 = dataset[train[0]].space
    for label, alg in (("algorithm", base), ("params.published", published)):
        check_algorithm(alg, space0, label, n_q or min_p)

    objective = Objective.from_config(params.get("objective", "exploration_final"), n_q or min_p)
    space_dims = {d.name: [v.item() if hasattr(v, "item") else v for v in d.values] for d in space0.dims}
    return Setup(experiment=cfg.experiment, seed=int(cfg.seed), dataset_cfg=ds_cfg, dataset=dataset, train=train,
                 heldout=heldout, batches=batches, run=run, heldout_reps=heldout_reps, objective=objective,
                 base=base, published=published, params=params, space_dims=space_dims, git=git_version())


def check_algorithm(alg: dict, space, where: str, n_queries: int) -> None:
    from neuro_opt import algorithms

    a = dict(alg)
    name = a.pop("name")
    if "n_random" in a and a["n_random"] > n_queries:
        raise ConfigError(f"{where}.n_random={a['n_random']} is more than n_queries={n_queries}")
    for lo, hi in RATIOS.values():
        if lo in a and hi in a and not a[lo] < a[hi]:
            raise ConfigError(f"{where}: {lo}={a[lo]} must be below {hi}={a[hi]}")
    try:
        algorithms.make(name, space, n_reps=1, seed=0, **a)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def git_version() -> str:
    """The commit the code runs from (read-only git), with ``-dirty`` when tracked files changed."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("-dirty" if dirty else "")


# =============================================================================================
# scoring on Ray
# =============================================================================================
def _simulate_batch(algorithm: dict, run: dict, seeds: list, *problems) -> list:
    """Ray task body: one batched ``simulate`` call per problem; returns the curves only."""
    import torch

    from neuro_opt.simulate import curves, simulate

    try:
        import ray
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
    except Exception:  # noqa: BLE001 - outside a Ray worker: keep torch's default
        pass
    alg = dict(algorithm)
    name = alg.pop("name")
    out = []
    for problem, ss in zip(problems, seeds):
        trace = simulate(problem, name, n_reps=run["n_reps"], n_queries=run["n_queries"], seed=ss,
                         noise=run["noise"], response_mode=run["response_mode"], use_prior=run["use_prior"],
                         hyperparameters=alg)
        out.append({"key": problem.key, "exploration": curves(trace, "exploration"),
                    "exploitation": curves(trace, "exploitation")})
    return out


class Scorer:
    """Submits simulated runs of a hyperparameter set on some problems as Ray tasks.

    Every problem goes to the object store once. A run's seed derives from (global seed,
    stable hash of dataset, problem, replicates, queries, noise, response mode, prior), not
    from the hyperparameters: common random numbers across trials and methods.


    Roles: ``train`` (the runs every trial is scored on), ``heldout`` (the held-out subjects,
    ``heldout_reps`` replicates) and ``confirm`` (the training problems again with
    ``confirm_reps`` replicates from a fresh seed stream: runs no trial was selected on).
    """

    def __init__(self, setup: Setup, cpus_per_task: float, max_retries: int, confirm_reps: int | None = None):
        import ray

        self.setup, self.confirm_reps = setup, confirm_reps or setup.run["n_reps"]
        self.refs = {k: ray.put(setup.dataset[k]) for k in setup.train + setup.heldout}
        self.task = ray.remote(_simulate_batch).options(num_cpus=cpus_per_task, max_retries=max_retries)

    def run_settings(self, role: str) -> dict:
        run = dict(self.setup.run)
        if role == "heldout":
            run["n_reps"] = self.setup.heldout_reps
        elif role == "confirm":
            run["n_reps"] = self.confirm_reps
        return run

    def seed(self, key: str, role: str) -> np.random.SeedSequence:
        from sweeps.grid import stable_hash

        content = {"dataset": self.setup.dataset_cfg, "problem": key, **self.run_settings(role)}
        if role == "confirm":
            content["stage"] = "confirm"
        h = stable_hash(content)
        return np.random.SeedSequence([self.setup.seed, int(h[:15], 16)])

    def submit(self, alg: dict, keys: list, role: str = "train"):
        return self.task.remote(alg, self.run_settings(role), [self.seed(k, role) for k in keys],
                                *[self.refs[k] for k in keys])

    def submit_all(self, algs: dict, role: str) -> dict:
        """``{label: alg}`` -> ``{label: [refs]}`` covering every problem of ``role``."""
        keys = self.setup.heldout if role == "heldout" else self.setup.train
        bp = max(len(b) for b in self.setup.batches)
        return {label: [self.submit(alg, keys[i:i + bp], role) for i in range(0, len(keys), bp)]
                for label, alg in algs.items()}

    @staticmethod
    def collect(refs: dict) -> dict:
        """``{label: [refs]}`` -> ``{label: {problem key: curves}}`` (blocking)."""
        import ray

        return {label: {r["key"]: r for batch in ray.get(rs) for r in batch} for label, rs in refs.items()}

    def evaluate(self, algs: dict, role: str) -> dict:
        """``submit_all`` then ``collect``: every setting of ``algs`` in parallel."""
        return self.collect(self.submit_all(algs, role))


def runs_of(objective: Objective, results: dict, keys: list) -> np.ndarray:
    """Per-run objective values over ``keys`` (problem order, then replicate)."""
    return np.concatenate([objective.per_run(results[k]) for k in keys])


def per_problem(objective: Objective, results: dict, keys: list) -> np.ndarray:
    """Mean objective per problem over its replicates: ``len(keys)`` values (the unit that transfers to new
    subjects; runs of one problem share its map)."""
    return np.array([objective.per_run(results[k]).mean() for k in keys])


mean_sem = metrics.value_sem  # [mean, sem] of a list of per-run values


# =============================================================================================
# held-out comparison and reporting (shared with the calibration kind)
# =============================================================================================
def chosen_params(alg: dict, extra_keys=()) -> dict:
    keys = [k for k in HP_NAMES if k in alg] + [k for k in extra_keys if k in alg and k not in HP_NAMES]
    return {k: alg[k] for k in keys}


def heldout_groups(setup: Setup, res: dict, methods: dict, train_values: dict, simulated: dict,
                   extra_keys=()) -> tuple[list, dict]:
    """Summary groups of ``{method: alg}`` from their held-out results ``res`` (``Scorer.evaluate(methods,
    "heldout")``: the same runs, seeds included, for every method). Returns ``(groups, comparison)``:
    the paired difference of the first method and ``published_defaults`` over held-out runs and by problem."""
    groups = []
    per_run = {}
    for method, alg in methods.items():
        vals = runs_of(setup.objective, res[method], setup.heldout)
        per_run[method] = vals
        expl = np.concatenate([res[method][k]["exploration"][:, -1] for k in setup.heldout])
        expt = np.concatenate([res[method][k]["exploitation"][:, -1] for k in setup.heldout])
        groups.append({
            "params": {"method": method, **chosen_params(alg, extra_keys)},
            "n": int(vals.size),
            "metrics": {"heldout_objective": mean_sem(vals), "train_objective": train_values[method],
                        "simulated_runs": [float(simulated[method]), 0.0],
                        "heldout_exploration_final": mean_sem(expl), "heldout_exploitation_final": mean_sem(expt)},
        })
    comparison = {}
    names = list(methods)
    if "published_defaults" in per_run and len(names) > 1:
        other = [n for n in names if n != "published_defaults"][0]
        d = per_run[other] - per_run["published_defaults"]
        by_problem = [float(np.mean(setup.objective.per_run(res[other][k]))
                            - np.mean(setup.objective.per_run(res["published_defaults"][k]))) for k in setup.heldout]
        comparison = {"a": other, "b": "published_defaults", "heldout_objective_difference": mean_sem(d),
                      "heldout_objective_difference_by_problem": mean_sem(by_problem),
                      "heldout_problems_a_at_least_b": int(sum(x >= 0 for x in by_problem)),
                      "heldout_problems": len(by_problem)}
    return groups, comparison


def heldout_figure(setup: Setup, res: dict, path: Path) -> Path:
    from sweeps.plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, (method, by_key) in enumerate(res.items()):
        for ax, name in zip(axes, ("exploration", "exploitation")):
            runs = np.concatenate([by_key[k][name] for k in setup.heldout])
            m, s = mean_sem_rows(runs)
            q = np.arange(1, m.size + 1)
            ax.plot(q, 100 * m, color=f"C{i}", label=method)
            ax.fill_between(q, 100 * (m - s), 100 * (m + s), color=f"C{i}", alpha=0.25, lw=0)
            ax.set_xlabel("query")
            ax.set_ylabel(f"{name} (% of max)")
            ax.set_ylim(0, 105)
    axes[0].set_title(f"held-out subjects {', '.join(setup.heldout_subjects)}", fontsize=9)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mean_sem_rows(a: np.ndarray):
    return metrics.mean_sem(a, axis=0)


def log_chosen(tracker, run_id: str, method: str, alg: dict, setup: Setup, group: dict, published_group: dict,
               search: dict, extra: dict | None = None) -> None:
    """What ``sweeps.promote`` reads from a run: ``chosen.*`` params and held-out metrics."""
    import mlflow

    prov = {
        "chosen.method": method,
        "chosen.algorithm": json.dumps(alg, sort_keys=True),
        "chosen.n_queries": json.dumps(setup.run["n_queries"]),
        "chosen.dataset": json.dumps(setup.dataset_cfg, sort_keys=True),
        "chosen.dataset_space": json.dumps(setup.space_dims),
        "chosen.train_subjects": json.dumps(setup.train_subjects),
        "chosen.heldout_subjects": json.dumps(setup.heldout_subjects),
        "chosen.objective": json.dumps(setup.objective.to_dict(), sort_keys=True),
        "chosen.search": json.dumps(search, sort_keys=True),
        "chosen.code_version": setup.git,
        **{f"chosen.{k}": json.dumps(v) for k, v in (extra or {}).items()},
        **{f"chosen.hp.{k}": str(v) for k, v in chosen_params(alg).items()},
    }
    items = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in prov.items()]
    for i in range(0, len(items), 100):
        tracker.client.log_batch(run_id, params=items[i:i + 100])
    m = group["metrics"]
    tracker.metrics(run_id, {
        "heldout_objective": m["heldout_objective"][0], "heldout_objective_sem": m["heldout_objective"][1],
        "train_objective": m["train_objective"][0], "simulated_runs": m["simulated_runs"][0],
        "published_heldout_objective": published_group["metrics"]["heldout_objective"][0],
        "published_train_objective": published_group["metrics"]["train_objective"][0],
    })


def finish(cfg, setup: Setup, run_dir: Path, t0: float, tracker, parent: str, summary: dict) -> Path:
    """Write summary.json, log it with figures/results/config to the parent run, print the last two lines."""
    summary = {"experiment": cfg.experiment, "run_dir": str(run_dir), "mlflow_run_id": parent,
               "wall_s": round(time.time() - t0, 2), **summary}
    path = run_dir / "summary.json"
    write_summary(path, summary)
    tracker.metrics(parent, {"wall_s": summary["wall_s"]})
    tracker.log_run_folder(parent, run_dir, path)
    tracker.end(parent, "FINISHED")
    print(tracker.ui_hint(cfg.tracking.experiment_name or cfg.experiment, parent))
    print(path)
    return path


def dataset_block(setup: Setup) -> dict:
    return {"config": setup.dataset_cfg, "train_subjects": setup.train_subjects,
            "heldout_subjects": setup.heldout_subjects, "train_problems": len(setup.train),
            "heldout_problems": len(setup.heldout), "n_reps": setup.run["n_reps"],
            "heldout_reps": setup.heldout_reps, "n_queries": setup.run["n_queries"],
            "objective": setup.objective.to_dict()}


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o)}")


def parallel_slots(setup: Setup, cfg) -> int:
    import ray

    if setup.params.get("parallel") is not None:
        return int(setup.params["parallel"])
    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, int(cpus // max(cfg.cluster.cpus_per_cell, 1e-9)))


# =============================================================================================
# the Optuna study
# =============================================================================================
def _sqlite_studies(path: Path) -> list[str]:
    import sqlite3

    if not path.is_file():
        return []
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return [r[0] for r in con.execute("SELECT study_name FROM studies")]
        finally:
            con.close()
    except sqlite3.Error:
        return []


def _sampler(spec, seed: int):
    import optuna

    spec = dict(spec or {"name": "tpe"})
    name = spec.pop("name", "tpe")
    try:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=spec.pop("multivariate", True), **spec)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed, **spec)
        if name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, **spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"params.sampler: {exc}") from None
    raise ConfigError(f"params.sampler.name={name!r}: expected tpe, random or qmc")


def _pruner(spec):
    import optuna

    spec = dict(spec or {"name": "median"})
    name = spec.pop("name", "median")
    try:
        if name == "median":
            return optuna.pruners.MedianPruner(**spec)
        if name == "percentile":
            return optuna.pruners.PercentilePruner(**spec)
        if name in ("none", None):
            return optuna.pruners.NopPruner()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"params.pruner: {exc}") from None
    raise ConfigError(f"params.pruner.name={name!r}: expected median, percentile or none")


def confirm_spec(params: dict, n_reps: int) -> dict:
    """``params.confirm``: re-score the ``top_k`` best trials and the published defaults on ``reps``
    fresh replicates of the training problems; the best trial replaces the published defaults only
    if its gain over them there, paired by problem, is at least ``z`` standard errors across problems
    (``keep_published: false``:
    the best of the trials whatever; ``top_k: 0``: the best trial as is, unconfirmed)."""
    c = params.get("confirm", {}) or {}
    keys = ("top_k", "reps", "z", "keep_published")
    if not isinstance(c, dict):
        raise ConfigError(f"params.confirm must be a mapping {{{', '.join(keys)}}}, got {c!r}")
    unknown = sorted(set(c) - set(keys))
    if unknown:
        raise ConfigError(f"params.confirm: unknown key(s) {unknown}; expected {', '.join(keys)}")
    out = {"top_k": c.get("top_k", 5), "reps": c.get("reps", 2 * n_reps), "z": c.get("z", 1.645),
           "keep_published": c.get("keep_published", True)}
    z = out["z"]
    if not isinstance(z, (int, float)) or isinstance(z, bool) or not math.isfinite(z) or z < 0:
        raise ConfigError(f"params.confirm.z={z!r}: expected a number >= 0 (standard errors of the paired gain)")
    for k, lo in (("top_k", 0), ("reps", 1)):
        v = out[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ConfigError(f"params.confirm.{k}={v!r}: expected an integer >= {lo}")
    if not isinstance(out["keep_published"], bool):
        raise ConfigError(f"params.confirm.keep_published={out['keep_published']!r}: expected true or false")
    return out


def _starts(setup: Setup, spec: SearchSpec) -> list[dict]:
    starts = setup.params.get("start", [])
    if not isinstance(starts, list):
        raise ConfigError(f"params.start must be a list of points (mappings of hyperparameters, or 'published'), "
                          f"got {starts!r}")
    out = []
    for i, s in enumerate(starts):
        where = f"params.start[{i}]"
        if s == "published":
            s = {k: v for k, v in setup.published.items() if k != "name"}
        if not isinstance(s, dict) or not s:
            raise ConfigError(f"{where}: expected a mapping of hyperparameters or 'published', got {s!r}")
        out.append(spec.to_sampled(s, where))
    return out


def open_study(cfg, setup: Setup, spec: SearchSpec, run_dir: Path, sampler, pruner):
    """Load or create the study; a resumed study must have the same settings. Returns (study, storage, created)."""
    import optuna

    name, storage = cfg.study.name, cfg.study.storage
    note = None
    if storage is None:
        db = run_dir / "optuna.db"
        if name and name not in _sqlite_studies(db):
            for other in sorted(run_dir.parent.glob("*/optuna.db")):
                if other != db and name in _sqlite_studies(other):
                    db, note = other, f"study {name!r} found in {other}; adding trials to it"
        if name is None:
            names = _sqlite_studies(db)
            if len(names) > 1:
                raise ConfigError(f"{db} holds studies {names}; choose one with study.name=NAME")
            name = names[0] if names else None
        storage = f"sqlite:///{db}"
    name = name or f"{cfg.experiment}-{run_dir.name}"
    beat = int(cfg.study.heartbeat_s)
    if beat < 1:
        raise ConfigError(f"study.heartbeat_s={cfg.study.heartbeat_s}: expected a whole number of seconds >= 1")
    # heartbeats with ask/tell (not Study.optimize) are what this driver means to use: no warning per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    try:
        # a trial records a heartbeat while it runs; one whose launch was killed stops beating and is failed
        # (fail_stale_trials) when the study is opened again, instead of staying RUNNING for ever
        rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=beat, grace_period=2 * beat)
        existing = optuna.study.get_all_study_names(rdb)
    except Exception as exc:  # noqa: BLE001 - an unreachable or malformed storage URL
        raise ConfigError(f"study.storage={storage!r}: cannot open the Optuna storage: {exc}") from None
    settings = json.loads(json.dumps(setup.settings(), default=_json_default))
    if name in existing:
        study = optuna.load_study(study_name=name, storage=rdb, sampler=sampler, pruner=pruner)
        running = sum(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
        optuna.storages.fail_stale_trials(study)
        stale = running - sum(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
        if stale:
            print(f"note: {stale} trial(s) of study {name!r} were left RUNNING by a launch that died (no heartbeat "
                  f"for {2 * beat} s): marked FAIL", file=sys.stderr)
        before = study.user_attrs.get("settings")
        space_before = study.user_attrs.get("space")
        diffs = [k for k in settings if before is not None and before.get(k) != settings[k]]
        if space_before is not None and space_before != spec.describe():
            diffs.append("space")
        if diffs:
            was = {k: (space_before if k == "space" else before.get(k)) for k in diffs}
            raise ConfigError(f"study {name!r} in {storage} was created with other {', '.join(diffs)} "
                              f"(then: {json.dumps(was)[:600]}); its trials' scores would not compare with this "
                              f"launch's: use another study.name, or the same settings")
        if note:
            print(f"note: {note}", file=sys.stderr)
        return study, storage, False
    study = optuna.create_study(study_name=name, storage=rdb, sampler=sampler, pruner=pruner,
                                direction="maximize")
    study.set_user_attr("settings", settings)
    study.set_user_attr("space", spec.describe())
    study.set_user_attr("published", json.loads(json.dumps(setup.published)))
    study.set_user_attr("kind", "tune")
    study.set_user_attr("dataset_space", setup.space_dims)
    study.set_user_attr("code_version", setup.git)
    for point in _starts(setup, spec):
        study.enqueue_trial(point, user_attrs={"start_point": True})
    return study, storage, True


@dataclass
class _Running:
    """A trial in flight: its hyperparameters and the per-run objective of the batches done."""

    trial: object
    alg: dict
    sampled: dict
    step: int = 0
    values: list = field(default_factory=list)
    intermediate: list = field(default_factory=list)
    t0: float = field(default_factory=time.time)


class StudyLaunch:
    """One launch of a study: adds trials (ask, simulate on Ray, report, prune, tell), then re-scores."""

    def __init__(self, cfg, setup: Setup, spec: SearchSpec, study, storage: str, created: bool, tracker,
                 parent: str, run_dir: Path, confirm: dict):
        self.cfg, self.setup, self.spec, self.study, self.confirm = cfg, setup, spec, study, confirm
        self.storage, self.created, self.tracker, self.parent, self.run_dir = storage, created, tracker, parent, run_dir
        self.counts = {"complete": 0, "pruned": 0, "failed": 0}
        self.asked = 0
        self.inflight: dict = {}
        self.scorer = None
        self.bar = None
        self.heartbeat_s = int(cfg.study.heartbeat_s)

    # ---- trials
    def run_trials(self, n_trials: int) -> None:
        import ray
        from tqdm import tqdm

        self._scorer()
        slots = parallel_slots(self.setup, self.cfg)
        self.bar = tqdm(total=n_trials, desc=f"{self.cfg.experiment} {self.study.study_name}", unit="trial",
                        disable=not self.cfg.progress, dynamic_ncols=True, file=sys.stderr)
        while self.asked < n_trials and len(self.inflight) < slots:
            self._ask()
        while self.inflight:
            ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=self.heartbeat_s)
            self._beat(*self.inflight.values())
            if not ready:
                continue
            r = self.inflight.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - a failed trial must not stop the study
                self._close(r, "fail", error=f"{type(exc).__name__}: {exc}")
            else:
                self._advance(r, out)
            while self.asked < n_trials and len(self.inflight) < slots:
                self._ask()
        self.bar.close()

    def _scorer(self) -> "Scorer":
        if self.scorer is None:
            self.scorer = Scorer(self.setup, self.cfg.cluster.cpus_per_cell, self.cfg.cluster.max_retries,
                                 self.confirm["reps"])
        return self.scorer

    def _ask(self) -> None:
        trial = self.study.ask()
        sampled = self.spec.suggest(trial)
        alg = self.spec.resolve(sampled)
        trial.set_user_attr("hyperparameters", alg)
        trial.set_user_attr("launch", self.run_dir.name)
        self.asked += 1
        r = _Running(trial, alg, sampled)
        self.inflight[self.scorer.submit(alg, self.setup.batches[0])] = r
        self._beat(r)

    def _beat(self, *running: "_Running") -> None:
        """Record that these trials' launch is alive (see open_study: a silent one is failed later)."""
        storage = self.study._storage  # the RDBStorage open_study made, with heartbeats on
        for r in running:
            storage.record_heartbeat(r.trial._trial_id)

    def _advance(self, r: _Running, out: list) -> None:
        """A batch came back: report the running objective; finish, prune or submit the next batch."""
        by_key = {o["key"]: o for o in out}
        r.values.append(runs_of(self.setup.objective, by_key, self.setup.batches[r.step]))
        running = float(np.concatenate(r.values).mean())
        r.intermediate.append(running)
        r.trial.report(running, r.step)
        r.step += 1
        if r.step == len(self.setup.batches):
            self._close(r, "complete", value=running)
        elif r.trial.should_prune():
            self._close(r, "pruned")
        else:
            self.inflight[self.scorer.submit(r.alg, self.setup.batches[r.step])] = r

    def _close(self, r: _Running, outcome: str, value=None, error=None) -> None:
        from optuna.trial import TrialState

        state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}[outcome]
        runs = sum(len(self.setup.batches[i]) for i in range(len(r.intermediate))) * self.setup.run["n_reps"]
        r.trial.set_user_attr("simulated_runs", runs)
        r.trial.set_user_attr("duration_s", round(time.time() - r.t0, 3))
        if value is not None:
            r.trial.set_user_attr("train_sem", mean_sem(np.concatenate(r.values))[1])
        if error:
            r.trial.set_user_attr("error", error[-2000:])
        self.study.tell(r.trial, value, state=state)
        self.counts["failed" if outcome == "fail" else outcome] += 1
        tr = self.tracker
        child = tr.start(f"trial {r.trial.number}", parent=self.parent,
                         params={**r.sampled, **{f"hp.{k}": v for k, v in chosen_params(r.alg).items()},
                                 "trial": r.trial.number, "launch": self.run_dir.name},
                         tags={"optuna.state": state.name, "optuna.study_name": self.study.study_name})
        if r.intermediate:
            tr.curves(child, {"intermediate_objective": r.intermediate})
        tr.metrics(child, {"simulated_runs": runs, **({"objective": value} if value is not None else {})})
        tr.end(child, "FAILED" if outcome == "fail" else "FINISHED")
        if self.bar is not None:
            best = _best_value(self.study)
            self.bar.update(1)
            self.bar.set_postfix(best=f"{best:.3f}" if best is not None else "-", pruned=self.counts["pruned"],
                                 failed=self.counts["failed"])

    def abandon(self) -> None:
        """Interrupted: the trials in flight are told FAIL, so the study holds no trial stuck RUNNING."""
        for r in list(self.inflight.values()):
            try:
                self._close(r, "fail", error="interrupted")
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self.inflight.clear()

    # ---- final choice, comparison and report
    def _candidates(self, complete: list) -> dict:
        """The ``top_k`` best completed trials with distinct hyperparameters: ``{label: trial}``."""
        out, seen = {}, set()
        for t in sorted(complete, key=lambda t: (-t.value, t.number)):
            key = json.dumps(t.user_attrs["hyperparameters"], sort_keys=True)
            if key not in seen:
                seen.add(key)
                out[f"trial {t.number}"] = t
            if len(out) == self.confirm["top_k"]:
                break
        return out

    def rescore(self) -> dict:
        """Choose (confirmation on fresh training runs), then re-score the choice and the published
        defaults on the held-out runs; the defaults also on the training runs every trial met."""
        from optuna.trial import TrialState

        scorer = self._scorer()
        setup, pub_alg = self.setup, self.setup.published
        complete = [t for t in self.study.trials if t.state == TrialState.COMPLETE]
        if not complete:
            raise RuntimeError(f"study {self.study.study_name!r} has no completed trial ({self.counts['failed']} "
                               f"failed, {self.counts['pruned']} pruned in this launch)")
        best = self.study.best_trial
        pub_train_refs = scorer.submit_all({"p": pub_alg}, "train")
        confirmation, confirm_runs = [], 0
        chosen_trial, chosen_alg = best, best.user_attrs["hyperparameters"]
        if self.confirm["top_k"] > 0:
            cands = self._candidates(complete)
            algs = {label: t.user_attrs["hyperparameters"] for label, t in cands.items()}
            algs["published_defaults"] = pub_alg
            res = scorer.evaluate(algs, "confirm")
            confirm_runs = len(algs) * len(setup.train) * self.confirm["reps"]
            scores = {label: mean_sem(runs_of(setup.objective, res[label], setup.train)) for label in algs}
            # the gain of each trial over the published defaults, paired by problem (same runs, same
            # seeds), its SEM across problems: a gain must hold across subjects' maps to transfer
            probs = {label: per_problem(setup.objective, res[label], setup.train) for label in algs}
            gains = {label: mean_sem(probs[label] - probs["published_defaults"]) for label in cands}
            if self.confirm["keep_published"]:
                eligible = [lb for lb in cands if gains[lb][0] > 0 and gains[lb][0] >= self.confirm["z"] * gains[lb][1]]
            else:
                eligible = list(cands)
            winner = max(eligible, key=lambda lb: scores[lb][0]) if eligible else "published_defaults"
            chosen_trial = cands.get(winner)
            chosen_alg = algs[winner]
            confirmation = [{"label": label, "trial": cands[label].number if label in cands else None,
                             "train_objective": cands[label].value if label in cands else None,
                             "confirm_objective": scores[label], "gain_over_published": gains.get(label),
                             "chosen": label == winner} for label in algs]
        methods = {"optuna": chosen_alg, "published_defaults": pub_alg}
        res = scorer.evaluate(methods, "heldout")
        pub_train = mean_sem(runs_of(setup.objective, Scorer.collect(pub_train_refs)["p"], setup.train))
        simulated = sum(t.user_attrs.get("simulated_runs", 0) for t in self.study.trials) + confirm_runs
        train_values = {"optuna": pub_train if chosen_trial is None else
                        [float(chosen_trial.value), float(chosen_trial.user_attrs.get("train_sem", 0.0))],
                        "published_defaults": pub_train}
        extra = [k for k in self.spec.ranges if k not in RATIOS]
        groups, comparison = heldout_groups(setup, res, methods, train_values,
                                            {"optuna": simulated, "published_defaults": 0}, extra)
        if confirmation:  # groups[0] is the choice, groups[1] the published defaults
            groups[0]["metrics"]["confirm_objective"] = scores[winner]
            groups[1]["metrics"]["confirm_objective"] = scores["published_defaults"]
        selected = {"trial": None if chosen_trial is None else chosen_trial.number,
                    "label": "published_defaults" if chosen_trial is None else f"trial {chosen_trial.number}",
                    "hyperparameters": chosen_alg, "launch": self.run_dir.name, "mlflow_run_id": self.parent,
                    "n_trials": len(self.study.trials), "heldout_objective": groups[0]["metrics"]["heldout_objective"],
                    "published_heldout_objective": groups[1]["metrics"]["heldout_objective"],
                    "train_objective": train_values["optuna"][0], "code_version": setup.git}
        self.study.set_user_attr("selected", json.loads(json.dumps(selected, default=_json_default)))
        return {"best": best, "selected": selected, "confirmation": confirmation, "methods": methods, "res": res,
                "train_values": train_values, "groups": groups, "comparison": comparison, "simulated": simulated,
                "confirm_runs": confirm_runs, "n_complete": len(complete)}

    def report(self, out: dict, t0: float) -> Path:
        from optuna.trial import TrialState

        study, spec, best = self.study, self.spec, out["best"]
        figs = self.run_dir / "figures"
        figs.mkdir(exist_ok=True)
        (self.run_dir / "results").mkdir(exist_ok=True)
        write_trials_table(study, spec, self.run_dir / "results" / "trials.parquet")
        history_figure(study, out["train_values"]["published_defaults"][0], figs / "optimization_history.png",
                       out["selected"]["trial"])
        importances = importance_figure(study, figs / "param_importances.png")
        slice_figure(study, spec, figs / "slices.png")
        heldout_figure(self.setup, out["res"], figs / "heldout_curves.png")
        sel = out["selected"]
        search = {"kind": "optuna", "study_name": study.study_name, "storage": self.storage, "trial": sel["trial"],
                  "selected": sel["label"], "best_trial": best.number, "n_trials": len(study.trials),
                  "confirm": self.confirm, "space": spec.describe()}
        groups = out["groups"]
        log_chosen(self.tracker, self.parent, "optuna", out["methods"]["optuna"], self.setup, groups[0], groups[1],
                   search, extra={"trial": sel["trial"], "study_name": study.study_name, "storage": self.storage})
        self.tracker.metrics(self.parent, {"best_value": best.value, "n_trials": len(study.trials),
                                           "n_complete": out["n_complete"],
                                           **{f"launch_{k}": v for k, v in self.counts.items()}})
        states = [t.state for t in study.trials]
        summary = {
            "study": {"name": study.study_name, "storage": self.storage, "resumed": not self.created,
                      "n_trials": len(study.trials), "n_complete": states.count(TrialState.COMPLETE),
                      "n_pruned": states.count(TrialState.PRUNED), "n_failed": states.count(TrialState.FAIL),
                      "launch_trials": self.asked, "launch_counts": self.counts, "best_trial": best.number,
                      "best_value": best.value, "best_params": best.params, "space": spec.describe(),
                      "simulated_runs": out["simulated"], "confirm": self.confirm,
                      "confirm_runs": out["confirm_runs"], "confirmation": out["confirmation"],
                      "selected": {k: sel[k] for k in ("label", "trial")}, "importances": importances},
            "dataset": dataset_block(self.setup),
            "groups": groups,
            "comparison": out["comparison"],
        }
        return finish(self.cfg, self.setup, self.run_dir, t0, self.tracker, self.parent, summary)


def drive(cfg, overrides, run_dir: Path, t0: float) -> Path:
    """The launcher's hook for kind=tune: validate everything, open the study, run trials, re-score, report."""
    import optuna
    import ray
    from optuna.trial import TrialState

    from sweeps.launch import _loggable, connect_ray
    from sweeps.tracking import Tracker

    setup = prepare(cfg, overrides, "tune", TUNE_PARAMS)
    n_trials = _int_param(setup.params, "n_trials", 0, 20)
    spec = SearchSpec(setup.params.get("space"), setup.base, setup.run["n_queries"] or
                      min(setup.dataset[k].space.n_points for k in setup.train))
    _starts(setup, spec)  # validated before any work
    confirm = confirm_spec(setup.params, setup.run["n_reps"])
    pruner = _pruner(setup.params.get("pruner"))
    _sampler(setup.params.get("sampler"), 0)

    # the sampler's seed also depends on how many trials the study already has, so a resumed
    # study does not replay the random startup points of its first launch
    def sampler(n: int):
        return _sampler(setup.params.get("sampler"), int(np.random.SeedSequence([setup.seed, n]).generate_state(1)[0]))

    if cfg.resume and cfg.study.storage is None and not (run_dir / "optuna.db").is_file():
        raise ConfigError(f"resume={cfg.resume}: no optuna.db in that folder; a study is resumed with "
                          f"study.name=NAME (and study.storage=URL when it is not in a run folder)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_dir.mkdir(parents=True, exist_ok=True)
    study, storage, created = open_study(cfg, setup, spec, run_dir, sampler(0), pruner)
    if n_trials == 0 and not any(t.state == TrialState.COMPLETE for t in study.trials):
        raise ConfigError(f"params.n_trials=0 and study {study.study_name!r} has no finished trial: nothing to "
                          f"re-score")
    if study.trials:
        study.sampler = sampler(len(study.trials))
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment_name or cfg.experiment)
    started = connect_ray(cfg)
    parent = tracker.start(f"{cfg.experiment} {study.study_name}", params=_loggable(cfg),
                           tags={"run_dir": str(run_dir), "optuna.study_name": study.study_name,
                                 "optuna.storage": storage, "neuro_opt.kind": "tune", "git_commit": setup.git,
                                 "optuna.resumed": str(not created)})
    launch = StudyLaunch(cfg, setup, spec, study, storage, created, tracker, parent, run_dir, confirm)
    try:
        launch.run_trials(n_trials)
        out = launch.rescore()
    except KeyboardInterrupt:
        launch.abandon()
        tracker.end(parent, "KILLED")
        print(f"interrupted; finished trials are in study {study.study_name!r} ({storage}); relaunch with "
              f"study.name={study.study_name} study.storage={storage} to continue", file=sys.stderr)
        raise
    except BaseException:
        launch.abandon()
        tracker.end(parent, "FAILED")
        raise
    finally:
        if started:
            ray.shutdown()
    try:
        return launch.report(out, t0)
    except BaseException:
        tracker.end(parent, "FAILED")
        raise


def _best_value(study):
    try:
        return study.best_value
    except ValueError:
        return None


# =============================================================================================
# study report: trials table and figures
# =============================================================================================
def write_trials_table(study, spec: SearchSpec, path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for t in study.trials:
        hp = t.user_attrs.get("hyperparameters", {})
        row = {"number": t.number, "state": t.state.name, "value": t.value,
               "launch": t.user_attrs.get("launch"), "start_point": bool(t.user_attrs.get("start_point", False)),
               "simulated_runs": t.user_attrs.get("simulated_runs"), "duration_s": t.user_attrs.get("duration_s"),
               "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
               "intermediate": [float(t.intermediate_values[k]) for k in sorted(t.intermediate_values)],
               "error": t.user_attrs.get("error")}
        for k in spec.ranges:
            v = t.params.get(k)
            row[f"param_{k}"] = None if v is None else float(v) if isinstance(v, (int, float)) else str(v)
        for k in HP_NAMES:
            v = hp.get(k)
            row[f"hp_{k}"] = None if v is None else float(v)
        rows.append(row)
    schema = pa.schema([("number", pa.int64()), ("state", pa.string()), ("value", pa.float64()),
                        ("launch", pa.string()), ("start_point", pa.bool_()), ("simulated_runs", pa.int64()),
                        ("duration_s", pa.float64()), ("datetime_start", pa.string()),
                        ("intermediate", pa.list_(pa.float64())), ("error", pa.string())]
                       + [(f"param_{k}", pa.string() if spec.ranges[k].choices is not None
                           and not all(isinstance(c, (int, float)) for c in spec.ranges[k].choices)
                           else pa.float64()) for k in spec.ranges]
                       + [(f"hp_{k}", pa.float64()) for k in HP_NAMES])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _plt():
    from sweeps.plots import plt
    return plt


def history_figure(study, published_train: float, path: Path, selected: int | None = None) -> Path:
    from optuna.trial import TrialState

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    comp = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.scatter([t.number for t in comp], [t.value for t in comp], s=18, color="C0", label="complete", zorder=3)
    ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
               s=18, marker="x", color="0.55", label="pruned (last report)", zorder=3)
    best, xs, ys = -math.inf, [], []
    for t in sorted(comp, key=lambda t: t.number):
        best = max(best, t.value)
        xs.append(t.number)
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="C3", label="best so far")
    if published_train == published_train:
        ax.axhline(published_train, ls="--", color="C2", label="published defaults")
    if selected is not None:
        t = study.trials[selected]
        ax.plot([t.number], [t.value], marker="*", ms=14, color="C1", ls="none", label="selected (confirmed)",
                zorder=4)
    ax.set_xlabel("trial")
    ax.set_ylabel("training objective")
    ax.set_title(f"study {study.study_name}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def importance_figure(study, path: Path) -> dict:
    """fANOVA importances (PED-ANOVA when scikit-learn is missing); {} when too few trials to tell."""
    import optuna
    from optuna.trial import TrialState

    if sum(t.state == TrialState.COMPLETE for t in study.trials) < 3:
        return {}
    try:
        try:
            import sklearn  # noqa: F401
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        except ImportError:
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception as exc:  # noqa: BLE001 - e.g. a parameter that never varied
        print(f"note: no parameter importances ({exc})", file=sys.stderr)
        return {}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(imp) + 1.2))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color="C0")
    ax.set_xlabel("importance (fANOVA, normalized)")
    ax.set_title(f"study {study.study_name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {k: float(v) for k, v in imp.items()}


def slice_figure(study, spec: SearchSpec, path: Path) -> Path:
    """Objective vs each searched parameter over the whole range, completed trials coloured by number."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    from optuna.trial import TrialState

    plt = _plt()
    comp = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if comp else None
    names = list(spec.ranges)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols + 0.8, 2.8 * rows), squeeze=False, sharey=True,
                             layout="constrained")
    sc = None
    for i, name in enumerate(names):
        ax = axes[i // cols, i % cols]
        pts = [(t.params[name], t.value, t.number) for t in comp if name in t.params]
        if pts:
            x, y, n = zip(*pts)
            if spec.ranges[name].choices is not None:
                x = [str(v) for v in x]
            sc = ax.scatter(x, y, c=n, cmap="viridis", s=16, vmin=0, vmax=max(len(study.trials) - 1, 1))
        if best is not None and name in best.params:
            bx = str(best.params[name]) if spec.ranges[name].choices is not None else best.params[name]
            ax.plot([bx], [best.value], marker="*", ms=12, color="C3", ls="none")
        r = spec.ranges[name]
        if r.choices is None:
            pad = (r.high / r.low) ** 0.03 if r.log else 0.03 * (r.high - r.low)
            ax.set_xlim(*((r.low / pad, r.high * pad) if r.log else (r.low - pad, r.high + pad)))
            if r.log:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
                if r.high / r.low < 100:
                    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(name)
        if i % cols == 0:
            ax.set_ylabel("training objective")
    for j in range(len(names), rows * cols):
        axes[j // cols, j % cols].axis("off")
    if sc is not None:
        fig.colorbar(sc, ax=axes, label="trial", shrink=0.8)
    fig.suptitle(f"study {study.study_name} (star: best trial)", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class TuneKind:
    drive = staticmethod(drive)


KIND = TuneKind()
