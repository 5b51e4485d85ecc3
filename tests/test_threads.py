"""Thread hygiene: torch threads per cell, idle OpenMP threads that sleep, the threads block.

A cell uses as many torch intra-op threads as the CPUs its Ray task holds (``cluster.cpus_per_cell``),
and the workers a launch starts have a bounded ``GOMP_SPINCOUNT`` so that torch's OpenMP threads
(libgomp) do not spin on cores other cells need. ``ThreadProbe`` (``kind=tests.test_threads:ThreadProbe``)
is a cell that records what it runs with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from neuro_opt.threads import OPENMP_ENV, available_cpus, default_threads, intra_op_threads
from sweeps.experiment import Experiment
from sweeps.run import worker_runtime_env
from tests import launching

ROOT = Path(__file__).resolve().parents[1]


class ThreadProbe(Experiment):
    """One row per cell: the torch threads it runs with and its worker's OpenMP spin count."""

    payload_keys = ("kind", "params", "seed")

    def run_cell(self, payload, seed_sequence, data) -> pa.Table:
        import ray

        job_env = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
        return pa.table({
            "threads": [torch.get_num_threads()],
            "default_threads": [default_threads()],
            "omp_wait_policy": [os.environ.get("GOMP_SPINCOUNT")],  # what libgomp read when torch loaded here
            "job_omp_wait_policy": [job_env.get("GOMP_SPINCOUNT")],  # what the launch's runtime_env gave
            "probe_var": [os.environ.get("PROBE_VAR")],
            "nice": [os.getpriority(os.PRIO_PROCESS, 0)],  # the worker's niceness (Ray's own default: 15)
        })

    def report(self, cfg, table, run_dir, tracker, parent_run, axes) -> dict:
        rows = table.select(["threads", "default_threads", "omp_wait_policy", "job_omp_wait_policy",
                             "probe_var", "nice"]).to_pylist()
        return {"groups": [{"params": {}, "n": len(rows), "metrics": {}}], "cells": rows}


def _probe_launch(tmp: Path, *overrides: str, process: bool) -> list[dict]:
    proc = launching.launch(tmp, f"kind={__name__}:ThreadProbe", "experiment=thread_probe", "+params.i=0",
                            "+grid.params.i=[0,1]", "cluster.num_cpus=2", "progress=false",
                            f"tracking.uri=sqlite:///{tmp}/mlflow.db", *overrides, process=process)
    summary = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    assert summary["failed_cells"] == 0, summary
    return summary["cells"]


def test_a_launched_cell_has_its_cpus_as_torch_threads_a_bounded_openmp_spin_and_niceness_0(tmp_path, monkeypatch):
    """``python -m sweeps.launch`` (a process: the launcher starts its own local Ray and workers)."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # what the cells see comes from the launch
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    cells = _probe_launch(tmp_path, "cluster.cpus_per_cell=2", "+cluster.runtime_env.env_vars.PROBE_VAR=kept",
                          process=True)
    assert len(cells) == 2
    for c in cells:
        assert c["threads"] == 2 and c["default_threads"] == 2, c
        assert c["omp_wait_policy"] == c["job_omp_wait_policy"] == OPENMP_ENV["GOMP_SPINCOUNT"], c
        assert c["probe_var"] == "kept", c  # a user's env_vars are kept beside the launcher's
        assert c["nice"] == os.getpriority(os.PRIO_PROCESS, 0), c  # workers compete as ordinary jobs, not at 15


def test_cells_side_by_side_take_one_thread_each(tmp_path):
    """In-process, on the tests' shared local Ray (2 CPUs): two 1-CPU cells, one torch thread each."""
    torch.set_num_threads(2)  # the driver's count does not leak into the cells
    cells = _probe_launch(tmp_path, "cluster.cpus_per_cell=1", process=False)
    assert [(c["threads"], c["default_threads"]) for c in cells] == [(1, 1), (1, 1)]


def test_worker_runtime_env_merges_under_a_users_env_vars():
    assert worker_runtime_env(None) == {"env_vars": OPENMP_ENV}
    assert worker_runtime_env({"env_vars": {"A": "1"}}) == {"env_vars": {"A": "1", **OPENMP_ENV}}
    user = {"working_dir": ".", "env_vars": {"A": "1", "OMP_WAIT_POLICY": "ACTIVE"}}
    assert worker_runtime_env(user) == {"working_dir": ".", "env_vars": {"A": "1", "OMP_WAIT_POLICY": "ACTIVE"}}
    assert user["env_vars"] == {"A": "1", "OMP_WAIT_POLICY": "ACTIVE"}  # not modified
    with pytest.raises(ValueError, match="cluster.runtime_env.env_vars"):
        worker_runtime_env({"env_vars": ["A=1"]})


# CPU time of an idle process whose torch ran parallel regions on 2 threads a moment ago
_IDLE_CPU = textwrap.dedent("""
    import time, torch
    torch.set_num_threads(2)
    x = torch.randn(512, 512)
    for _ in range(20):
        (x @ x).sum() + torch.exp(x).sum()
    t0 = time.process_time()
    time.sleep(0.5)
    print(time.process_time() - t0)
""")
IDLE_BOUND_S = 0.05


def _idle_cpu_s(policy: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(dict([policy.split("=")]))
    out = subprocess.run([sys.executable, "-c", _IDLE_CPU], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(available_cpus() < 2, reason="needs 2 CPUs for a second OpenMP thread")
def test_idle_openmp_threads_sleep_soon_with_the_bounded_spin():
    """With the bounded spin, a process whose 2 torch threads are idle uses (almost) no CPU over 0.5 s;
    with ACTIVE (the control: the measurement can fail) an idle thread spins through it."""
    assert torch.__config__.parallel_info().count("OpenMP") >= 1  # libgomp: what OMP_WAIT_POLICY governs
    assert _idle_cpu_s("GOMP_SPINCOUNT=" + OPENMP_ENV["GOMP_SPINCOUNT"]) < IDLE_BOUND_S
    assert _idle_cpu_s("OMP_WAIT_POLICY=ACTIVE") > IDLE_BOUND_S


def test_neuro_opt_bounds_the_openmp_spin_only_before_torch_and_never_over_a_users_value():
    code = "import os, sys; {}; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = str(ROOT)

    def policy(imports: str, **extra: str) -> str:
        out = subprocess.run([sys.executable, "-c", code.format(imports)], env={**env, **extra},
                             capture_output=True, text=True, timeout=120, check=True)
        return out.stdout.strip()

    assert policy("import neuro_opt; import torch") == OPENMP_ENV["GOMP_SPINCOUNT"]
    assert policy("import torch; import neuro_opt") == "None"  # too late: libgomp has read the environment
    assert policy("import neuro_opt", OMP_WAIT_POLICY="ACTIVE") == "None"  # a wait policy of the user's
    assert policy("import neuro_opt", GOMP_SPINCOUNT="5") == "5"


def test_intra_op_threads_sets_and_restores_and_refuses_bad_counts():
    torch.set_num_threads(1)
    assert default_threads() == 1
    with intra_op_threads(2):
        assert torch.get_num_threads() == 2 and default_threads() == 2
        with intra_op_threads(1, blas=True):
            assert torch.get_num_threads() == 1 and default_threads() == 1
        assert torch.get_num_threads() == 2 and default_threads() == 2
        with intra_op_threads(None):  # leaves the count as it is
            assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1 and default_threads() == 1
    with pytest.raises(RuntimeError, match="inside"):
        with intra_op_threads(2):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == 1 and default_threads() == 1
    for bad in (0, -1, 1.5, 2.0, "2", True):
        with pytest.raises(ValueError, match=r"^threads=.*: intra-op threads must be an integer >= 1$"):
            with intra_op_threads(bad):  # type: ignore[arg-type]
                pass
    assert torch.get_num_threads() == 1


def test_available_cpus_is_this_processs_affinity():
    assert available_cpus() == len(os.sched_getaffinity(0)) >= 1
