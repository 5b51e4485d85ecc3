"""The one lifecycle of a launch, for every experiment.

:func:`run` takes a composed config and a run folder and:

1. checks the config's keys and options (:mod:`sweeps.config`) and finds the experiment (``kind``);
2. for an :class:`~sweeps.experiment.Experiment` (a grid of cells): expands and validates the
   grid, refuses a resume with a different design, starts or reconnects Ray, opens (or, on
   resume, continues) the MLflow parent run, runs the pending cells as Ray tasks with a progress
   bar, keeps each cell's table as Parquet as it arrives, and reports from the Parquet results;
   for a :class:`~sweeps.experiment.DriveExperiment`: hands it a :class:`Run`;
3. writes ``summary.json``, logs it with the run folder to the parent run, ends the parent
   (FINISHED, FAILED, or KILLED on Ctrl-C/SIGTERM) and prints the MLflow hint and, last, the
   path of ``summary.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig

from sweeps import config, grid, kinds, results
from sweeps.experiment import DriveExperiment, Experiment
from sweeps.run import Run, loggable, task_cpus
from sweeps.schema import ConfigError, Interrupted
from sweeps.store import LaunchRecord, ResultStore, coord_columns


def run(cfg: DictConfig, overrides: list[str], run_dir: str | Path) -> Path:
    """Run an experiment from a composed config; returns the path of ``summary.json``."""
    t0 = time.time()
    config.check_keys(cfg)
    experiment = kinds.get(cfg.kind)
    launch = Run(cfg, overrides, Path(run_dir), t0)
    if isinstance(experiment, DriveExperiment):
        config.check_options(cfg)
        with launch.guarded():
            body = experiment.drive(launch)
            return launch.finish(body)
    return _run_grid(launch, experiment)


def _run_grid(launch: Run, experiment: Experiment) -> Path:
    cfg = launch.cfg
    if cfg.resume:
        if not (Path(cfg.resume) / "results").is_dir():
            raise ConfigError(f"resume={cfg.resume!r}: not a run folder (no results/ inside)")
        launch.dir = Path(cfg.resume).resolve()
    _, cells = build_cells(cfg, launch.overrides)
    record = LaunchRecord(launch.dir)
    config = loggable(cfg)
    differs = record.differences(config) if cfg.resume else []
    if differs:
        record.restore_hydra()
        raise ConfigError(
            f"resume={cfg.resume}: this launch's design differs from the run's in "
            f"{', '.join(differs[:6])}{' ...' if len(differs) > 6 else ''}; resume with the same "
            f"settings, or start a new run"
        )
    store = ResultStore(launch.dir)
    done = store.done() if cfg.resume else set()
    pending = [c for c in cells if c.key not in done]
    with launch.ray(), launch.guarded():
        shared = shared_params(config, grid.grid_axes(cfg), experiment.payload_keys)
        continued = launch.open_parent(params=shared, reopen=record.parent_run_id if cfg.resume else None)
        parent = launch.require_parent()
        launch.tracker.client.set_tag(parent, "resumed_cells", str(len(cells) - len(pending)))
        record.save(config, parent)
        try:
            failures = _fan_out(cfg, experiment, cells, pending, store)
        except KeyboardInterrupt:
            n_kept = len(list(store.dir.glob("*.parquet")))
            raise Interrupted(
                f"interrupted: {n_kept} of {len(cells)} cells are kept in {launch.dir}; resume with "
                f"the same command and resume={launch.dir}"
            ) from None
    with launch.guarded():
        if failures:
            (launch.dir / "failures.json").write_text(json.dumps(failures, indent=2))
        try:
            table = store.read()
        except FileNotFoundError:
            raise RuntimeError(f"every cell failed; first error: {failures[0]['error'] if failures else 'none'}")
        if continued:
            launch.tracker.drop_children(parent)
        body = experiment.report(cfg, table, launch.dir, launch.tracker, launch.parent, grid.grid_axes(cfg))
        body["n_cells"], body["failed_cells"] = len(cells), len(failures)
        results.log_groups(launch.tracker, parent, body, results.split_curves(body, launch.dir))
        if failures:
            print(
                f"{len(failures)} of {len(cells)} cells failed (see {launch.dir / 'failures.json'}); first: "
                f"{failures[0]['coords']}: {failures[0]['error']}",
                file=sys.stderr,
            )
        return launch.finish(body, failed=bool(failures), metrics={"failed_cells": len(failures)})


def _fan_out(cfg: DictConfig, experiment: Experiment, cells: list, pending: list, store: ResultStore) -> list[dict]:
    """Run the pending cells as Ray tasks; each finished table is written as it arrives.
    Returns the failed cells (one failed cell does not stop the sweep)."""
    import ray
    from tqdm import tqdm

    opts = dict(num_cpus=cfg.cluster.cpus_per_cell, max_retries=cfg.cluster.max_retries)
    task, batch_task = ray.remote(_execute).options(**opts), ray.remote(_execute_batch).options(**opts)
    data = CellData(experiment)
    refs_of_data: dict[str, object] = {}
    futures: dict = {}  # task ref -> the cells it runs
    for group in batches(experiment, pending, cfg.cluster.batch_reps, data):
        refs = []
        for c in group:
            dkey = data.key(c)
            if dkey not in refs_of_data:
                refs_of_data[dkey] = ray.put(data(c))
            refs.append(refs_of_data[dkey])
        specs = [(c.key, c.coords, c.payload, list(c.seed_sequence(cfg.seed).entropy)) for c in group]
        if len(group) == 1:
            futures[task.remote(cfg.kind, *specs[0], refs[0])] = group
        else:
            futures[batch_task.remote(cfg.kind, specs, *refs)] = group
    failures: list[dict] = []
    bar = tqdm(
        total=len(cells),
        initial=len(cells) - len(pending),
        desc=cfg.experiment,
        unit="cell",
        disable=not cfg.progress,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    waiting = list(futures)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        group = futures[ready[0]]
        try:
            out = ray.get(ready[0])
            tables = out if isinstance(out, list) else [out]
            for cell, table in zip(group, tables):
                store.write(cell.key, table)
        except Exception as exc:  # noqa: BLE001 - one failed task must not stop the sweep
            failures += [{"cell": c.key, "coords": c.coords, "error": _short(exc)} for c in group]
        bar.update(len(group))
        bar.set_postfix(failed=len(failures))
    bar.close()
    return failures


class CellData:
    """A cell's driver-side data (``experiment.data_for``), made once per dataset and problem."""

    def __init__(self, experiment: Experiment):
        self.experiment = experiment
        self.made: dict[str, object] = {}

    @staticmethod
    def key(cell) -> str:
        return grid.stable_hash([cell.payload.get("dataset"), cell.payload.get("muscle")])

    def __call__(self, cell):
        k = self.key(cell)
        if k not in self.made:
            self.made[k] = self.experiment.data_for(cell.payload)
        return self.made[k]


def batches(experiment: Experiment, cells: list, batch_reps: int, data: CellData) -> list[list]:
    """The cells in tasks: the cells of one ``experiment.batch_key`` are split, in grid order, into
    the fewest tasks of about equal size that keep each near ``batch_reps`` replicates
    (``experiment.batch_size``); the rest run alone. Batched tasks come first (the longest work
    starts first). A function of the cells and ``batch_reps`` only, not of the workers, so a seed
    gives the same tasks on any cluster."""
    keyed: dict[str, list] = {}
    alone: list[list] = []
    for c in cells:
        key = experiment.batch_key(c.payload, data(c)) if batch_reps > 0 else None
        if key is None:
            alone.append([c])
        else:
            keyed.setdefault(key, []).append(c)
    groups: list[list] = []
    for members in keyed.values():
        sizes = [experiment.batch_size(c.payload) for c in members]
        total = sum(sizes)
        n = -(-total // batch_reps)  # ceil
        chunks: list[list] = [[] for _ in range(n)]
        before = 0
        for c, size in zip(members, sizes):
            chunks[min(n - 1, before * n // total)].append(c)
            before += size
        groups += [g for g in chunks if g]
    return groups + alone


def _execute_batch(kind_name: str, specs: list, *data):
    """Body of a Ray task that runs several cells as one batch (``experiment.run_batch``); returns
    their tables, each tagged as :func:`_execute` tags one."""
    import numpy as np

    from neuro_opt.threads import intra_op_threads

    experiment = _prepare_worker(kind_name)
    seeds = [np.random.SeedSequence(ent) for _, _, _, ent in specs]
    with intra_op_threads(task_cpus()):  # as many torch threads as the task's CPUs (cluster.cpus_per_cell)
        tables = experiment.run_batch([p for _, _, p, _ in specs], seeds, list(data))
    return [coord_columns(t, key, coords) for t, (key, coords, _, _) in zip(tables, specs)]


def _prepare_worker(kind_name: str) -> Experiment:
    """A task's setup: subnormals flushed (before torch's thread pool starts, so its threads flush
    too); returns the experiment."""
    from neuro_opt.gp.linalg import flush_denormals_for_process

    flush_denormals_for_process()
    experiment = kinds.get(kind_name)
    assert isinstance(experiment, Experiment)  # build_cells checked it on the driver
    return experiment


def _execute(kind_name: str, key: str, coords: dict, payload: dict, entropy: list, data):
    """Body of one Ray task: run a cell and tag its rows with the cell key and coordinates."""
    import numpy as np

    from neuro_opt.threads import intra_op_threads

    experiment = _prepare_worker(kind_name)
    with intra_op_threads(task_cpus()):  # as many torch threads as the task's CPUs (cluster.cpus_per_cell)
        table = experiment.run_cell(payload, np.random.SeedSequence(entropy), data)
    return coord_columns(table, key, coords)


def build_cells(cfg: DictConfig, overrides: list[str]) -> tuple[Experiment, list]:
    """The validated cells of a grid experiment (nothing has run yet)."""
    config.check_keys(cfg)
    check_cpus(cfg)
    grid.apply_scale(cfg, overrides)
    experiment = kinds.get(cfg.kind)
    if not isinstance(experiment, Experiment):
        raise ConfigError(f"kind={cfg.kind!r} is not a grid of cells (it drives its own launch)")
    pairs = grid.expand(cfg, overrides, experiment.problem_keys)
    cells = [grid.make_cell(coords, c, experiment.payload_keys, experiment.seed_key) for coords, c in pairs]
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ConfigError("two grid points give identical cells; check grid for values that do not change anything")
    experiment.validate(cfg, cells)
    if cfg.report.analysis:  # an unknown analysis stops the launch before any work, not at the report
        from sweeps import analyses

        analyses.load(cfg.report.analysis)
    return experiment, cells


def shared_params(config: dict, axes: dict, payload_keys: tuple[str, ...]) -> dict:
    """The settings every cell shares (the parent run's params): what reaches a cell (the
    experiment's ``payload_keys``), the experiment, scale and cluster, without the keys the grid
    varies (an axis, or a key inside a group that is an axis: ``algorithm.kappa`` when
    ``algorithm`` is one), whose values the child runs carry."""
    varied = set(axes)
    config = {k: v for k, v in config.items() if k in (*payload_keys, "experiment", "scale", "cluster")}

    def keep(prefix: str, node: dict) -> dict:
        out = {}
        for k, v in node.items():
            key = f"{prefix}{k}"
            if key in varied:
                continue
            out[k] = keep(f"{key}.", v) if isinstance(v, dict) else v
        return out

    return keep("", config)


def check_cpus(cfg: DictConfig) -> None:
    """A local Ray with fewer CPUs than a cell asks for would wait for ever: refuse before any work.

    (A cluster's nodes declare their own CPUs and an autoscaler may add bigger ones, so only the
    local Ray is checked.)"""
    if cfg.cluster.cpus_per_cell <= 0:
        raise ConfigError(f"cluster.cpus_per_cell={cfg.cluster.cpus_per_cell:g}: each cell needs a positive CPU count")
    if cfg.cluster.num_cpus is not None and cfg.cluster.num_cpus < 1:
        raise ConfigError(
            f"cluster.num_cpus={cfg.cluster.num_cpus}: a local Ray needs at least 1 CPU (null: all of this machine's)"
        )
    reps = cfg.cluster.batch_reps
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 0:
        raise ConfigError(
            f"cluster.batch_reps={reps!r}: expected an integer >= 0 (replicates per engine batch; 0: one task per cell)"
        )
    if cfg.cluster.address:
        return
    have = cfg.cluster.num_cpus or os.cpu_count() or 1
    if cfg.cluster.cpus_per_cell > have:
        raise ConfigError(
            f"cluster.cpus_per_cell={cfg.cluster.cpus_per_cell:g} but the local Ray has {have} CPU(s): "
            f"no cell could ever be scheduled; set cluster.cpus_per_cell<={have}"
        )


def _short(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text[-2000:]
