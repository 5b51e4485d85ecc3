"""Launching ``sweeps.launch`` from tests: as a process, or in this process on a shared local Ray.

A process is what a user runs; tests of the command line itself (exit codes, signals, the worker
count) use one. Tests of what an experiment computes and records launch in-process instead: the
same Hydra main, runner and MLflow store, without paying an interpreter, a Ray start and
workers' imports per launch, which is most of a tiny launch's time.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def launch(tmp: Path, *overrides: str, check: bool = True, stdin=None,
           process: bool = False) -> subprocess.CompletedProcess:
    """``python -m sweeps.launch *overrides`` in folder ``tmp``; in-process unless ``process`` or ``stdin``.

    In-process launches share this test process's local Ray (started on first use, 2 CPUs), so
    ``cluster.num_cpus`` does not change their worker count.
    """
    _seed_store(overrides, tmp)
    if process or stdin is not None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
        proc = subprocess.run([sys.executable, "-m", "sweeps.launch", *overrides], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=600, stdin=stdin)
    else:
        proc = run_module(tmp, "sweeps.launch", *overrides)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    last = proc.stdout.strip().splitlines()[-1:] if proc.returncode == 0 else []
    if last and last[0].endswith("summary.json"):  # every experiment's summary opens with its headline
        summary = json.loads(Path(last[0]).read_text())
        assert list(summary)[:5] == ["experiment", "run_dir", "mlflow_run_id", "wall_s", "headline"], list(summary)
        assert isinstance(summary["headline"], list) and all(isinstance(x, str) for x in summary["headline"])
    return proc


def ensure_local_ray() -> None:
    """Start this process's local Ray unless one runs (it lives until the test session ends)."""
    import ray

    from hardware.local_ray import init_local

    if not ray.is_initialized():
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        init_local(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)


def run_module(cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module *args`` in folder ``cwd``, run here (runpy does what ``-m`` does).

    Each run gets a fresh interpreter's torch default dtype, not the test session's, and
    Hydra's global state is cleared after it.
    """
    import runpy

    import torch
    from hydra.core.global_hydra import GlobalHydra

    if module == "sweeps.launch":
        ensure_local_ray()
    out, err = io.StringIO(), io.StringIO()
    saved = (sys.argv, os.getcwd(), torch.get_default_dtype(), signal.getsignal(signal.SIGTERM))
    sys.argv = [module, *args]
    os.chdir(cwd)
    torch.set_default_dtype(torch.float32)
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        torch.set_default_dtype(saved[2])
        signal.signal(signal.SIGTERM, saved[3])
        GlobalHydra.instance().clear()
    if isinstance(code, str):  # sys.exit("message") prints the message and exits 1
        err.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess([module, *args], int(code or 0), out.getvalue(), err.getvalue())


def _seed_store(overrides: tuple[str, ...], tmp: Path) -> None:
    """Give a launch's new sqlite MLflow store a copy of an empty, already migrated one: creating the
    tables takes seconds per store, and every launch here starts its own (the launch then uses it as is)."""
    import shutil

    for o in overrides:
        if o.startswith("tracking.uri=sqlite:///"):
            db = Path(o[len("tracking.uri=sqlite:///"):])
            db = db if db.is_absolute() else tmp / db
            if not db.exists():
                db.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(_empty_store(), db)


_EMPTY_STORE: list[Path] = []


def _empty_store() -> Path:
    if not _EMPTY_STORE:
        import tempfile

        from mlflow.tracking import MlflowClient

        path = Path(tempfile.mkdtemp(prefix="mlflow_empty_")) / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # creates and migrates the tables
        _EMPTY_STORE.append(path)
    return _EMPTY_STORE[0]


def results(run_dir: Path) -> pa.Table:
    files = sorted((run_dir / "results").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    return table.sort_by([("cell", "ascending"), ("rep", "ascending"), ("query", "ascending")])


def without_algorithm(run_dir: Path, dest: Path, algorithm: str, config_too: bool) -> Path:
    """A copy of a finished run folder without ``algorithm``'s cells (its Parquet files), for reports on
    runs that lack it. ``config_too``: drop it from the composed config's ``grid.algorithm`` and
    ``report.compare`` as well (a run launched before it was in the experiment file); else keep the
    config (a launch that overrode ``grid.algorithm`` only)."""
    import shutil

    from omegaconf import OmegaConf

    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("figures", "*.db"))
    for f in (dest / "results").glob("*.parquet"):
        if algorithm in pq.read_table(f, columns=["algorithm"])["algorithm"].to_pylist():
            f.unlink()
    if config_too:
        path = dest / ".hydra" / "config.yaml"
        cfg = OmegaConf.load(path)
        cfg.grid.algorithm = [a for a in cfg.grid.algorithm if a != algorithm]
        cfg.report.compare = [p for p in cfg.report.compare if algorithm not in p]
        OmegaConf.save(cfg, path)
    return dest
