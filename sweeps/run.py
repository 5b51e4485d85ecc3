"""One launch as an experiment sees it: its config, run folder, MLflow parent run, Ray and summary.

:class:`Run` is what :mod:`sweeps.runner` hands to a :class:`~sweeps.experiment.DriveExperiment`
and uses itself for grid experiments, so every launch opens, continues and ends its MLflow
parent run, connects to Ray and writes ``summary.json`` the same way.
"""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from sweeps import results
from sweeps.schema import ConfigError, Interrupted
from sweeps.store import write_summary
from sweeps.tracking import Tracker


class Run:
    """One launch: its config, run folder, MLflow parent run, Ray connection and summary.

    A drive experiment may move ``dir`` (an online session writes into its session folder).
    """

    def __init__(self, cfg: DictConfig, overrides: list[str], run_dir: Path, t0: float | None = None):
        self.cfg, self.overrides, self.dir = cfg, list(overrides), Path(run_dir).resolve()
        self.t0 = time.time() if t0 is None else t0
        self.parent: str | None = None
        self._tracker: Tracker | None = None

    @property
    def experiment_name(self) -> str:
        return self.cfg.tracking.experiment_name or self.cfg.experiment

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.cfg.tracking.uri, self.experiment_name)
        return self._tracker

    def open_parent(
        self, name: str | None = None, params: dict | None = None, tags: dict | None = None, reopen: str | None = None
    ) -> bool:
        """Start the parent run, or continue ``reopen`` (a resumed launch's own); True if continued."""
        self.parent = self.tracker.reopen(reopen)
        if self.parent is not None:
            return True
        self.parent = self.tracker.start(
            name or f"{self.cfg.experiment} {self.dir.name}",
            params=loggable(self.cfg) if params is None else params,
            tags={**self.tags(), **(tags or {})},
        )
        return False

    def tags(self) -> dict[str, str]:
        """The parent run's tags: where it lives, what it ran on and from which commit."""
        cfg = self.cfg
        dataset = cfg.get("dataset")
        grid_keys = list((OmegaConf.to_container(cfg.grid) or {}) if "grid" in cfg else {})
        out = {
            "run_dir": str(self.dir),
            "experiment": str(cfg.experiment),
            "kind": str(cfg.kind),
            "scale": str(cfg.get("scale")),
            "seed": str(cfg.get("seed")),
            "dataset": str(dataset.get("name")) if isinstance(dataset, DictConfig) else "",
            "grid": " x ".join(map(str, grid_keys)) or "none",
        }
        commit = _git_commit()
        if commit:
            out["mlflow.source.git.commit"] = commit
        return out

    def require_parent(self) -> str:
        if self.parent is None:
            raise RuntimeError("the parent MLflow run is not open yet (Run.open_parent)")
        return self.parent

    @contextmanager
    def ray(self) -> Iterator[None]:
        """Ray for the duration of the block: connected to, or started (and then shut down)."""
        started = connect_ray(self.cfg)
        try:
            yield
        finally:
            if started:
                import ray

                ray.shutdown()

    @contextmanager
    def guarded(self) -> Iterator[None]:
        """End the parent run KILLED on an interruption and FAILED on any other error."""
        try:
            yield
        except (KeyboardInterrupt, Interrupted):
            self._end("KILLED")
            raise
        except BaseException:
            self._end("FAILED")
            raise

    def _end(self, status: str) -> None:
        if self.parent is not None:
            self.tracker.end(self.parent, status)

    def finish(self, body: dict, failed: bool = False, metrics: dict | None = None) -> Path:
        """Write ``summary.json`` (the runner's keys, then ``body``), log it, end the parent, print."""
        results.split_curves(body, self.dir)
        summary = {
            "experiment": self.cfg.experiment,
            "run_dir": str(self.dir),
            "mlflow_run_id": self.parent,
            "wall_s": round(time.time() - self.t0, 2),
            "headline": results.headline(body),
            **body,
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "summary.json"
        write_summary(path, summary, default=str)
        results.print_headline(summary)
        if self.parent is not None:
            self.tracker.metrics(self.parent, {"wall_s": summary["wall_s"], **(metrics or {})})
            if summary["headline"]:  # in the UI, which algorithm wins where comes first, above the fold
                best = results.best_per_point(body.get("groups") or [])
                lines = best + [line for line in summary["headline"] if line not in best]
                self.tracker.describe(self.parent, lines, f"{self.cfg.experiment}: headline")
            self.tracker.log_run_folder(self.parent, self.dir, path)
            self._end("FAILED" if failed else "FINISHED")
            print(self.tracker.ui_hint(self.experiment_name, self.parent))
        print(path)
        return path


def _git_commit() -> str | None:
    """The commit of the code that ran (None outside a git checkout)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def check_address(address: str) -> None:
    """Fail fast, with a clear message, when nothing listens at ``cluster.address``."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"cluster.address={address!r}: expected host:port or ray://host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cluster.address={address!r}: nothing answers at {host}:{port} ({exc.strerror or exc}); "
            f"start the head with `RAY_AUTH_MODE=token ray start --head` or set "
            f"cluster.address=null for a local Ray"
        ) from None


def task_cpus() -> int | None:
    """The CPUs the running Ray task holds (``num_cpus``, at least 1; a fraction rounds down), or
    None outside a Ray worker: the intra-op threads every task body of a launch uses
    (:func:`neuro_opt.threads.intra_op_threads`)."""
    import ray

    if not ray.is_initialized():  # (get_runtime_context would start a local Ray)
        return None
    ctx = ray.get_runtime_context()
    if ctx.worker.mode != ray.WORKER_MODE:
        return None
    return max(1, int(ctx.get_assigned_resources().get("CPU", 1)))


def connect_ray(cfg: DictConfig) -> bool:
    """Connect to (or start) Ray. Returns True if this call started it (and must shut it down)."""
    import logging

    import ray

    from hardware.local_ray import init_local

    if ray.is_initialized():
        return False
    address = cfg.cluster.address
    if address:
        check_address(address)
    runtime_env = OmegaConf.to_container(cfg.cluster.runtime_env, resolve=True) or None
    kwargs: dict[str, Any] = dict(logging_level=logging.WARNING, include_dashboard=False, runtime_env=runtime_env)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # "local" (never join a cluster that RAY_ADDRESS happens to point at), on loopback only
            init_local(num_cpus=cfg.cluster.num_cpus, **kwargs)
    except ConnectionError as exc:
        raise ConfigError(f"cluster.address={address!r}: {exc}") from None
    return True


def loggable(cfg: DictConfig) -> dict:
    """The composed config as MLflow params and ``launch.json`` record it (without the scale table)."""
    d = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(d, dict)
    d.pop("scales", None)
    return d
