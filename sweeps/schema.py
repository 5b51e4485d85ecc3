"""Structured config: the typed schema that validates every composed config.

Registered in Hydra's ConfigStore as ``schema`` and listed first in the root
defaults, so an unknown top-level key or a value of the wrong type fails at
composition with Hydra's message naming the key. Group contents that vary by
option (algorithm hyperparameters, dataset arguments) are open mappings here and
are validated against the code that consumes them before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class LaunchError(Exception):
    """A launch that stops with one line for the user (``error: <message>``), no traceback."""

    exit_code = 1


def as_dict(node: Any, key: str) -> dict:
    """A config node (``cfg.<key>``) as a plain dict, resolved; a ConfigError naming the key when it
    is not a mapping."""
    value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    if not isinstance(value, dict):
        raise ConfigError(f"{key}={value!r}: expected a mapping of keys to values")
    return value


class Interrupted(LaunchError):
    """Ctrl-C (or SIGTERM) during a launch: what was kept and how to resume, on one line."""

    exit_code = 130


class ConfigError(LaunchError, ValueError):
    """A config that cannot run; the message names the key and what is expected."""

    exit_code = 2


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    experiment_name: Optional[str] = None  # default: the experiment's name


@dataclass
class ClusterConfig:
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    cpus_per_cell: float = 1.0
    batch_reps: int = 256  # cells that share a search space run as engine batches of at most about this many replicates
    max_retries: int = 3
    runtime_env: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportConfig:
    pool: List[str] = field(default_factory=lambda: ["muscle"])
    compare: List[Any] = field(default_factory=list)
    by: List[str] = field(default_factory=list)  # result columns that split groups further (e.g. model)
    metrics: List[str] = field(default_factory=list)  # result columns summarized as [mean, sem]
    x: Optional[str] = None  # grid key on the x axis of the summary figure
    at: List[int] = field(default_factory=list)  # query counts at which summaries and comparisons are also stated
    analysis: Optional[str] = None  # sweeps/analyses/<name>.py: the experiment's own figures and findings
    order: List[Any] = field(default_factory=list)  # TBFM kinds: chains [A, B, ..] expected A > B > .. on metrics[0]


@dataclass
class StudyConfig:
    name: Optional[str] = None
    storage: Optional[str] = None
    heartbeat_s: int = 30  # a trial whose launch died (no heartbeat for 2x this) is failed at the next launch


@dataclass
class Config:
    experiment: str = "single"
    kind: str = "optimization"
    seed: int = 0
    n_reps: int = 10
    n_queries: Optional[int] = None
    scale: str = "default"
    resume: Optional[str] = None
    noise: float = 0.0
    response_mode: str = "gaussian"
    muscle: Any = "all"
    use_prior: bool = False
    record_map: bool = False
    grid: Dict[str, Any] = field(default_factory=dict)
    scales: Dict[str, Any] = field(default_factory=dict)
    report: ReportConfig = field(default_factory=ReportConfig)
    progress: bool = True
    algorithm: Any = MISSING
    dataset: Any = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    params: Dict[str, Any] = field(default_factory=dict)  # free parameters of non-optimization kinds
    online: Any = None  # kind=online: the session (conf/online/*.yaml, hardware.online.OnlineConfig)
    rig: Any = None  # kind=online: the rig (conf/rig/*.yaml)
    mode: Optional[str] = None  # kind=online: operator | autonomous | dry_run (null: the online config's)


def register() -> None:
    ConfigStore.instance().store(name="schema", node=Config)
    if not OmegaConf.has_resolver("if_null"):
        OmegaConf.register_new_resolver("if_null", lambda a, b: b if a is None else a)


register()
