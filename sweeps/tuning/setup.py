"""A tuning launch's setup, validated before any work: dataset split, runs, objective, published defaults."""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from neuro_opt.datasets import Dataset
from sweeps.schema import ConfigError
from sweeps.tuning.space import RATIOS, RESPONSE_MODES, ROOT, Objective

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from neuro_opt.space import SearchSpace


# =============================================================================================
# setup: everything validated before any work
# =============================================================================================
@dataclass
class Setup:
    experiment: str
    seed: int
    dataset_cfg: dict
    dataset: Dataset
    train: list[str]
    heldout: list[str]
    batches: list[list[str]]  # training problem keys per pruning step
    run: dict  # n_reps, n_queries, noise, response_mode, use_prior
    heldout_reps: int
    objective: Objective
    base: dict  # the algorithm config (name + hyperparameters)
    published: dict  # the published defaults as a full algorithm config
    params: dict
    space_dims: dict  # the dataset's search space, {dimension: [values]} (first training problem)
    git: str = ""

    @property
    def train_subjects(self) -> list[str]:
        return list(dict.fromkeys(k.split("/", 1)[0] for k in self.train))

    @property
    def heldout_subjects(self) -> list[str]:
        return list(dict.fromkeys(k.split("/", 1)[0] for k in self.heldout))

    def train_runs(self) -> int:
        return len(self.train) * self.run["n_reps"]

    def settings(self) -> dict:
        """What a study's scores depend on: a resumed study must match it."""
        return {
            "dataset": self.dataset_cfg,
            "train": self.train,
            "heldout": self.heldout,
            "batches": self.batches,
            "run": self.run,
            "seed": self.seed,
            "objective": self.objective.to_dict(),
            "base_algorithm": self.base,
        }


def check_params(params: dict, allowed: tuple[str, ...], kind: str) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"params: unknown key(s) {unknown} for kind={kind}; known: {', '.join(allowed)}")


def int_param(params: dict, key: str, minimum: int, default: int | None = None) -> int:
    v = params.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ConfigError(f"params.{key}={v!r}: expected an integer >= {minimum}")
    return v


def prepare(cfg: DictConfig, overrides: list[str], kind: str, allowed: tuple[str, ...]) -> Setup:
    """Validate the composed config and load the dataset; raises ConfigError before any work."""
    from omegaconf import OmegaConf

    from sweeps import grid
    from sweeps.kinds.optimization import KIND as OPT

    grid.apply_scale(cfg, overrides)
    if OmegaConf.to_container(cfg.grid, resolve=True):
        raise ConfigError(f"kind={kind} takes no grid: (got grid keys {list(cfg.grid)}); it searches params.space")
    # containers of mapping nodes: params is a Dict in sweeps.schema.Config, dataset and algorithm are config groups
    params = cast(dict[str, Any], OmegaConf.to_container(cfg.params, resolve=True) or {})
    check_params(params, allowed, kind)
    ds_cfg = cast(dict[str, Any], OmegaConf.to_container(cfg.dataset, resolve=True))
    dataset = OPT.dataset(ds_cfg)

    # ---- split by subject
    subjects = dataset.subjects
    held = params.get("heldout", 1)
    if isinstance(held, int) and not isinstance(held, bool):
        if not 1 <= held < len(subjects):
            raise ConfigError(
                f"params.heldout={held}: dataset {ds_cfg.get('name')!r} has {len(subjects)} subject(s) "
                f"({', '.join(subjects)}); hold out between 1 and {len(subjects) - 1} "
                f"(more subjects: dataset.n_subjects=N for the generators)"
            )
        held_subjects = subjects[-held:]
    elif isinstance(held, list) and held:
        unknown = [s for s in held if s not in subjects]
        if unknown:
            raise ConfigError(
                f"params.heldout: subject(s) {unknown} not in dataset {ds_cfg.get('name')!r}; "
                f"it has {', '.join(subjects)}"
            )
        if len(set(held)) == len(subjects):
            raise ConfigError("params.heldout holds out every subject; at least one must be left for training")
        held_subjects = list(held)
    else:
        raise ConfigError(
            f"params.heldout={held!r}: expected a number of subjects (the last N) or a list of subject names"
        )
    train = [p.key for p in dataset if p.subject not in held_subjects]
    heldout = [p.key for p in dataset if p.subject in held_subjects]

    # ---- runs
    if cfg.n_reps < 1:
        raise ConfigError(f"n_reps={cfg.n_reps}: must be >= 1")
    min_p = min(dataset[k].space.n_points for k in train + heldout)
    n_q = cfg.n_queries
    if n_q is not None and not 1 <= n_q <= min_p:
        raise ConfigError(
            f"n_queries={n_q}: must be between 1 and the size of the smallest search space ({min_p} points)"
        )
    if cfg.response_mode not in RESPONSE_MODES:
        raise ConfigError(f"response_mode={cfg.response_mode!r}: expected one of {', '.join(RESPONSE_MODES)}")
    if not (math.isfinite(cfg.noise) and cfg.noise >= 0):
        raise ConfigError(f"noise={cfg.noise!r}: a noise level is a std as a fraction of the maximum response, >= 0")
    if cfg.response_mode != "gaussian":
        missing = [k for k in train + heldout if dataset[k].repetitions is None]
        if missing:
            raise ConfigError(
                f"response_mode={cfg.response_mode}: problem {missing[0]!r} has no recorded "
                f"repetitions; use response_mode=gaussian"
            )
    if cfg.use_prior:
        missing = [k for k in train + heldout if dataset[k].prior is None]
        if missing:
            raise ConfigError(f"use_prior=true but problem {missing[0]!r} has no prior map")
    run = {
        "n_reps": int(cfg.n_reps),
        "n_queries": None if n_q is None else int(n_q),
        "noise": float(cfg.noise),
        "response_mode": str(cfg.response_mode),
        "use_prior": bool(cfg.use_prior),
    }
    heldout_reps = int_param(params, "heldout_reps", 1, cfg.n_reps)
    bp = int_param(params, "batch_problems", 1, len(train))
    batches = [train[i : i + bp] for i in range(0, len(train), bp)]
    if params.get("parallel") is not None:
        int_param(params, "parallel", 1)

    # ---- algorithm
    base = cast(dict[str, Any], OmegaConf.to_container(cfg.algorithm, resolve=True))
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
    return Setup(
        experiment=cfg.experiment,
        seed=int(cfg.seed),
        dataset_cfg=ds_cfg,
        dataset=dataset,
        train=train,
        heldout=heldout,
        batches=batches,
        run=run,
        heldout_reps=heldout_reps,
        objective=objective,
        base=base,
        published=published,
        params=params,
        space_dims=space_dims,
        git=git_version(),
    )


def check_algorithm(alg: dict, space: SearchSpace, where: str, n_queries: int) -> None:
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
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("-dirty" if dirty else "")
