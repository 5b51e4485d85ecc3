"""``python -m sweeps.launch +exp=NAME [key=value ...]``: compose, expand, fan out, record, report.

1. Hydra composes ``conf/config.yaml`` with the experiment; the schema validates it.
2. The grid expands into cells; everything is validated before any work starts.
3. Cells run as Ray tasks (a local Ray, or the cluster at ``cluster.address``);
   each finished cell's table is written to ``results/`` as it arrives, so
   ``resume=<run folder>`` skips finished cells.
4. The report reads the Parquet results only: summary groups, MLflow child runs,
   figures, ``summary.json``. The last line printed is the path of ``summary.json``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sweeps import grid, kinds
from sweeps.schema import ConfigError, LaunchError
from sweeps.store import HYDRA_FILES, LaunchRecord, ResultStore, coord_columns, write_summary
from sweeps.tracking import Tracker


def _execute(kind_name: str, key: str, coords: dict, payload: dict, entropy: list, data):
    """Body of one Ray task: run a cell and tag its rows with the cell key and coordinates."""
    import numpy as np
    import torch

    from neuro_opt.gp.engine import flush_denormals_for_process

    flush_denormals_for_process()  # before torch's thread pool starts, so its threads flush too
    try:
        import ray
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
    except Exception:  # noqa: BLE001 - outside a Ray worker: keep torch's default
        pass
    table = kinds.get(kind_name).run_cell(payload, np.random.SeedSequence(entropy), data)
    return coord_columns(table, key, coords)


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
        raise ConfigError(f"cluster.address={address!r}: nothing answers at {host}:{port} ({exc.strerror or exc}); "
                          f"start the head with `RAY_AUTH_MODE=token ray start --head` or set "
                          f"cluster.address=null for a local Ray") from None


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
    kwargs = dict(logging_level=logging.WARNING, include_dashboard=False, runtime_env=runtime_env)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # "local" (never join a cluster that RAY_ADDRESS happens to point at), on loopback only
            init_local(num_cpus=cfg.cluster.num_cpus, **kwargs)
    except ConnectionError as exc:
        raise ConfigError(f"cluster.address={address!r}: {exc}") from None
    return True


def check_keys(cfg: DictConfig) -> None:
    """Reject top-level keys the schema does not know (Hydra lets ``+key=value`` add them)."""
    from dataclasses import fields

    from sweeps.schema import Config

    known = {f.name for f in fields(Config)} | {"hydra"}
    unknown = sorted(set(cfg.keys()) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; top-level keys are: {', '.join(sorted(known))}")


def check_cpus(cfg: DictConfig) -> None:
    """A local Ray with fewer CPUs than a cell asks for would wait for ever: refuse before any work.

    (A cluster's nodes declare their own CPUs and an autoscaler may add bigger ones, so only the
    local Ray is checked.)"""
    if cfg.cluster.cpus_per_cell <= 0:
        raise ConfigError(f"cluster.cpus_per_cell={cfg.cluster.cpus_per_cell:g}: each cell needs a positive CPU count")
    if cfg.cluster.num_cpus is not None and cfg.cluster.num_cpus < 1:
        raise ConfigError(f"cluster.num_cpus={cfg.cluster.num_cpus}: a local Ray needs at least 1 CPU "
                          f"(null: all of this machine's)")
    if cfg.cluster.address:
        return
    have = cfg.cluster.num_cpus or os.cpu_count() or 1
    if cfg.cluster.cpus_per_cell > have:
        raise ConfigError(f"cluster.cpus_per_cell={cfg.cluster.cpus_per_cell:g} but the local Ray has {have} CPU(s): "
                          f"no cell could ever be scheduled; set cluster.cpus_per_cell<={have}")


def build_cells(cfg: DictConfig, overrides: list[str]):
    check_keys(cfg)
    check_cpus(cfg)
    grid.apply_scale(cfg, overrides)
    kind = kinds.get(cfg.kind)
    pairs = grid.expand(cfg, overrides, getattr(kind, "problem_keys", None))
    cells = [grid.make_cell(coords, c, kind.payload_keys, getattr(kind, "seed_key", None)) for coords, c in pairs]
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ConfigError("two grid points give identical cells; check grid for values that do not change anything")
    kind.validate(cfg, cells)
    if cfg.report.analysis:  # an unknown analysis stops the launch before any work, not at the report
        from sweeps import analyses
        analyses.load(cfg.report.analysis)
    return kind, cells


def run(cfg: DictConfig, overrides: list[str], run_dir: str | Path) -> Path:
    """Run an experiment from a composed config; returns the path of ``summary.json``."""
    import ray
    from tqdm import tqdm

    t0 = time.time()
    run_dir = Path(run_dir).resolve()
    check_keys(cfg)
    kind = kinds.get(cfg.kind)
    if hasattr(kind, "drive"):  # kinds that are not a grid of independent cells (online, tune, ...)
        return kind.drive(cfg, overrides, run_dir, t0)
    if cfg.resume:
        if not (Path(cfg.resume) / "results").is_dir():
            raise ConfigError(f"resume={cfg.resume!r}: not a run folder (no results/ inside)")
        run_dir = Path(cfg.resume).resolve()
    kind, cells = build_cells(cfg, overrides)
    record = LaunchRecord(run_dir)
    config = _loggable(cfg)
    differs = record.differences(config) if cfg.resume else []
    if differs:
        record.restore_hydra()
        raise ConfigError(f"resume={cfg.resume}: this launch's design differs from the run's in "
                          f"{', '.join(differs[:6])}{' ...' if len(differs) > 6 else ''}; resume with the same "
                          f"settings, or start a new run")
    store = ResultStore(run_dir)
    done = store.done() if cfg.resume else set()
    pending = [c for c in cells if c.key not in done]
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment_name or cfg.experiment)
    started = connect_ray(cfg)
    parent = reopened = tracker.reopen(record.parent_run_id) if cfg.resume else None
    if parent is None:
        parent = tracker.start(f"{cfg.experiment} {run_dir.name}", params=config, tags={"run_dir": str(run_dir)})
    tracker.client.set_tag(parent, "resumed_cells", str(len(cells) - len(pending)))
    record.save(config, parent)
    failures = []
    try:
        task = ray.remote(_execute).options(num_cpus=cfg.cluster.cpus_per_cell, max_retries=cfg.cluster.max_retries)
        refs_of_data = {}
        futures = {}
        for c in pending:
            dkey = grid.stable_hash([c.payload.get("dataset"), c.payload.get("muscle")])
            if dkey not in refs_of_data:
                data = kind.data_for(c.payload) if hasattr(kind, "data_for") else None
                refs_of_data[dkey] = ray.put(data)
            ent = list(c.seed_sequence(cfg.seed).entropy)
            futures[task.remote(cfg.kind, c.key, c.coords, c.payload, ent, refs_of_data[dkey])] = c
        bar = tqdm(total=len(cells), initial=len(cells) - len(pending), desc=cfg.experiment, unit="cell",
                   disable=not cfg.progress, dynamic_ncols=True, file=sys.stderr)
        waiting = list(futures)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            cell = futures[ready[0]]
            try:
                store.write(cell.key, ray.get(ready[0]))
            except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the sweep
                failures.append({"cell": cell.key, "coords": cell.coords, "error": _short(exc)})
            bar.update(1)
            bar.set_postfix(failed=len(failures))
        bar.close()
    except KeyboardInterrupt:
        tracker.end(parent, "KILLED")
        n_kept = len(list(store.dir.glob("*.parquet")))
        raise Interrupted(f"interrupted: {n_kept} of {len(cells)} cells are kept in {run_dir}; resume with the same "
                          f"command and resume={run_dir}") from None
    finally:
        if started:
            ray.shutdown()

    summary = {"experiment": cfg.experiment, "run_dir": str(run_dir), "mlflow_run_id": parent}
    if failures:
        (run_dir / "failures.json").write_text(json.dumps(failures, indent=2))
    try:
        table = store.read()
    except FileNotFoundError:
        tracker.end(parent, "FAILED")
        raise RuntimeError(f"every cell failed; first error: {failures[0]['error'] if failures else 'none'}")
    if reopened:
        tracker.drop_children(parent)
    report = kind.report(cfg, table, run_dir, tracker, parent, grid.grid_axes(cfg))
    summary["wall_s"] = round(time.time() - t0, 2)
    summary.update(report)
    summary["n_cells"], summary["failed_cells"] = len(cells), len(failures)
    path = run_dir / "summary.json"
    write_summary(path, summary)
    tracker.metrics(parent, {"wall_s": summary["wall_s"], "failed_cells": len(failures)})
    tracker.log_run_folder(parent, run_dir, path)
    tracker.end(parent, "FAILED" if failures else "FINISHED")
    if failures:
        print(f"{len(failures)} of {len(cells)} cells failed (see {run_dir / 'failures.json'}); first: "
              f"{failures[0]['coords']}: {failures[0]['error']}", file=sys.stderr)
    print(tracker.ui_hint(cfg.tracking.experiment_name or cfg.experiment, parent))
    print(path)
    return path


def _loggable(cfg: DictConfig) -> dict:
    d = OmegaConf.to_container(cfg, resolve=True)
    d.pop("scales", None)
    return d


class Interrupted(LaunchError):
    """Ctrl-C (or SIGTERM) during a launch: what was kept and how to resume, on one line."""

    exit_code = 130


def discard_if_untouched(run_dir: Path) -> None:
    """Remove a run folder holding only what Hydra wrote at start: a launch that failed before any
    work leaves no folder behind (nor creates one it was only told to read, ``resume=/typo``)."""
    if not run_dir.is_dir():
        return
    names = {p.name for p in run_dir.iterdir()}
    hydra = run_dir / ".hydra"
    hydra_only = not hydra.is_dir() or {p.name for p in hydra.iterdir()} <= set(HYDRA_FILES)
    log = run_dir / "launch.log"
    if names <= {".hydra", "launch.log"} and hydra_only and not (log.is_file() and log.stat().st_size):
        import shutil

        shutil.rmtree(run_dir)


def _short(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text[-2000:]


def _terminate(signum, frame):  # SIGTERM ends a launch as Ctrl-C does: parent KILLED, one line
    raise KeyboardInterrupt


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        path = run(cfg, list(hc.overrides.task), run_dir)
    except LaunchError as exc:
        if not isinstance(exc, Interrupted):
            discard_if_untouched(run_dir)
        print(f"{'' if isinstance(exc, Interrupted) else 'error: '}{exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # outside a sweep's cells (a drive kind, or before any work)
        discard_if_untouched(run_dir)
        print(f"interrupted; anything finished is kept in {run_dir} (resume=<that folder> carries on where the "
              f"experiment supports it)", file=sys.stderr)
        sys.exit(130)
    if json.loads(path.read_text()).get("failed_cells"):
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
