"""Thread hygiene: torch threads per cell, idle OpenMP threads that sleep, the threads block.

A cell uses as many torch intra-op threads as the CPUs its Ray task holds (``cluster.cpus_per_cell``),
and a one-thread process has no idle OpenMP thread, while libgomp's idle threads sleep after a short spin
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

from neuro_opt.threads import available_cpus, default_threads, intra_op_threads
from sweeps.experiment import Experiment
from tests import launching

ROOT = Path(__file__).resolve().parents[1]


class ThreadProbe(Experiment):
    """One row per cell: the torch threads it runs with, its worker's niceness and environment."""

    payload_keys = ("kind", "params", "seed")

    def run_cell(self, payload, seed_sequence, data) -> pa.Table:
        import ray

        job_env = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
        return pa.table({
            "threads": [torch.get_num_threads()],
            "default_threads": [default_threads()],
            "job_probe_var": [job_env.get("PROBE_VAR")],  # what the launch's runtime_env gave
            "probe_var": [os.environ.get("PROBE_VAR")],
            "nice": [os.getpriority(os.PRIO_PROCESS, 0)],  # the worker's niceness (Ray's own default: 15)
        })

    def report(self, cfg, table, run_dir, tracker, parent_run, axes) -> dict:
        rows = table.select(["threads", "default_threads", "job_probe_var", "probe_var", "nice"]).to_pylist()
        return {"groups": [{"params": {}, "n": len(rows), "metrics": {}}], "cells": rows}


def _probe_launch(tmp: Path, *overrides: str, process: bool) -> list[dict]:
    proc = launching.launch(tmp, f"kind={__name__}:ThreadProbe", "experiment=thread_probe", "+params.i=0",
                            "+grid.params.i=[0,1]", "cluster.num_cpus=2", "progress=false",
                            f"tracking.uri=sqlite:///{tmp}/mlflow.db", *overrides, process=process)
    summary = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    assert summary["failed_cells"] == 0, summary
    return summary["cells"]


def test_a_launched_cell_has_its_cpus_as_torch_threads_and_niceness_0(tmp_path):
    """``python -m sweeps.launch`` (a process: the launcher starts its own local Ray and workers)."""
    cells = _probe_launch(tmp_path, "cluster.cpus_per_cell=2", "+cluster.runtime_env.env_vars.PROBE_VAR=kept",
                          process=True)
    assert len(cells) == 2
    for c in cells:
        assert c["threads"] == 2 and c["default_threads"] == 2, c
        assert c["probe_var"] == c["job_probe_var"] == "kept", c  # a user's env_vars reach the workers
        assert c["nice"] == os.getpriority(os.PRIO_PROCESS, 0), c  # workers compete as ordinary jobs, not at 15


def test_cells_side_by_side_take_one_thread_each(tmp_path):
    """In-process, on the tests' shared local Ray (2 CPUs): two 1-CPU cells, one torch thread each."""
    torch.set_num_threads(2)  # the driver's count does not leak into the cells
    cells = _probe_launch(tmp_path, "cluster.cpus_per_cell=1", process=False)
    assert [(c["threads"], c["default_threads"]) for c in cells] == [(1, 1), (1, 1)]


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
    env.update(dict([policy.split("=")]) if policy else {})
    out = subprocess.run([sys.executable, "-c", _IDLE_CPU], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(available_cpus() < 2, reason="needs 2 CPUs for a second OpenMP thread")
def test_idle_openmp_threads_sleep_soon():
    """With libgomp's default bounded spin, a process whose 2 torch threads are idle uses (almost) no CPU over 0.5 s;
    with ACTIVE (the control: the measurement can fail) an idle thread spins through it."""
    assert torch.__config__.parallel_info().count("OpenMP") >= 1  # libgomp: what OMP_WAIT_POLICY governs
    assert _idle_cpu_s("") < IDLE_BOUND_S  # libgomp's own default
    assert _idle_cpu_s("OMP_WAIT_POLICY=ACTIVE") > IDLE_BOUND_S


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
