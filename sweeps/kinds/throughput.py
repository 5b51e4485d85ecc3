"""``+exp=throughput``: complete simulated GP-BO runs per second on the whole machine, quiet and
beside a competing load, for the batched engine, the earlier engine (the baseline) and the BoTorch reference.

Designs (``params.design_specs``): ``rat`` = synthetic rat maps (2 rats x 4 muscles, 8 x 4
array, 32 queries), ``nhp`` = synthetic NHP maps (2 monkeys x 3 muscles, 96 electrodes,
96 queries); a design is ``n_reps`` runs of each of its first ``n_problems`` problems, which
share one search space, run ``passes`` times over (new seeds each pass) in each batched or apart
measurement. Engines (``params.engines``, see :mod:`sweeps.throughput.shards`):
``batched`` (``simulate_batch`` across the design's problems, with ``algorithm`` as given),
``apart`` (the earlier path: one ``simulate`` batch per problem, with ``params.baseline`` over
``algorithm``, the earlier refit effort: the decision-quality baseline, run for run) and ``botorch_reference`` (the
plain BoTorch loop, one run at a time per worker, ``reference_runs`` per worker).

It drives its own work (a :class:`~sweeps.experiment.DriveExperiment`), because its conditions
are states of the whole machine, not independent cells. One worker per ``cluster.cpus_per_cell``
of Ray's CPUs (a Ray actor, that many CPUs and torch threads), and every measurement splits the
design's work into one shard per worker, started together: runs per second = runs / time from
the first shard's start to the last one's finish. Rounds (``params.rounds``) alternate the
conditions (``params.conditions``): ``quiet`` (nothing else started; the load average says what
else ran) and ``loaded`` (:class:`~sweeps.throughput.load.BusyLoad`: one busy process per Ray
CPU, started for the round's measurements, ended and joined after them). A group's figure is
its best round; the rounds' spread is beside it.

Results: ``results/phases.parquet`` (a row per measurement) and ``results/runs.parquet`` (a row
per run, its last query); the summary (:mod:`sweeps.throughput.summary`) has ``groups`` per
(design, engine, condition), ``ratios`` (batched / reference), ``slowdown`` (loaded / quiet),
``comparisons`` (batched vs apart, run for run), ``targets`` and ``machine``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sweeps.experiment import DriveExperiment
from sweeps.schema import ConfigError, as_dict
from sweeps.throughput.shards import ENGINES, Design
from sweeps.throughput.summary import CONDITIONS

if TYPE_CHECKING:
    from sweeps.run import Run

PARAMS = ("designs", "engines", "conditions", "rounds", "load", "targets", "design_specs", "baseline")
SPEC_KEYS = (
    "dataset",
    "n_problems",
    "n_queries",
    "passes",
    "reference_runs",
    "target_runs_per_s",
    "target_quality_runs",
)
# GP-BO hyperparameters the reference loop takes (the rest are the engine's own knobs)
REFERENCE_KEYS = (
    "kappa",
    "n_random",
    "rho_low",
    "rho_high",
    "noise_min",
    "noise_max",
    "outputscale_low",
    "outputscale_high",
)
ENGINE_ONLY_KEYS = ("name", "mode", "fit_steps", "lr", "fit_tol", "capacity", "device")
# the refit-effort keys params.baseline may set for the apart engine (everything else is shared)
BASELINE_KEYS = ("fit_steps", "lr", "fit_tol")


def reference_hyperparameters(alg: dict) -> dict:
    """The reference loop's arguments from a ``gpbo`` config; raises on keys it has no equivalent for."""
    extra = sorted(set(alg) - set(REFERENCE_KEYS) - set(ENGINE_ONLY_KEYS))
    if extra:
        raise ConfigError(
            f"algorithm keys {extra} have no equivalent in the BoTorch reference loop "
            f"(neuro_opt/reference_loop.py); the comparison would not be like for like"
        )
    return {k: alg[k] for k in REFERENCE_KEYS if k in alg}


def _int(v: Any, key: str, minimum: int = 1, null: bool = False) -> None:
    if null and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"{key}={v!r}: expected an integer >= {minimum}{' or null' if null else ''}")


def _number(v: Any, key: str, what: str, ok) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
        raise ConfigError(f"{key}={v!r}: expected {what}")
    return float(v)


def _choices(v: Any, key: str, known: tuple[str, ...] | list[str]) -> list[str]:
    if not isinstance(v, list) or not v or len(set(map(str, v))) != len(v):
        raise ConfigError(f"{key}={v!r}: expected a non-empty list without repeats, of {', '.join(known)}")
    for x in v:
        if x not in known:
            raise ConfigError(f"{key}: {x!r} is not one of {', '.join(known)}")
    return list(v)


class ThroughputKind(DriveExperiment):
    """kind=throughput (``+exp=throughput``)."""

    def plan(self, cfg) -> tuple[dict, list[Design], dict, dict]:
        """Everything validated before any work: the params, the designs (problems loaded), the
        engines' hyperparameters (``{"batched": ..., "apart": ...}``: apart runs the algorithm with
        ``params.baseline`` over it) and the reference loop's. Raises :class:`ConfigError`."""
        from neuro_opt import algorithms
        from neuro_opt.datasets import load as load_dataset
        from sweeps import config
        from sweeps.kinds.optimization import dataset_args
        from sweeps.runner import check_cpus
        from sweeps.tuning.space import RESPONSE_MODES

        if cfg.resume:
            raise ConfigError(f"resume={cfg.resume!r}: a throughput run measures the machine at once; start a new run")
        check_cpus(cfg)
        p = as_dict(cfg.params, "params")
        unknown = sorted(set(p) - set(PARAMS))
        if unknown:
            raise ConfigError(f"params: unknown key(s) {unknown} for kind=throughput; known: {', '.join(PARAMS)}")
        for key in PARAMS:
            if key not in p:
                raise ConfigError(f"params.{key} is missing; see conf/exp/throughput.yaml")
        specs = as_dict(p["design_specs"], "params.design_specs")
        designs = _choices(p["designs"], "params.designs", list(specs))
        _choices(p["engines"], "params.engines", ENGINES)
        conditions = _choices(p["conditions"], "params.conditions", CONDITIONS)
        _int(p["rounds"], "params.rounds")
        load = as_dict(p["load"], "params.load")
        if set(load) != {"processes", "max_s", "nice"}:
            raise ConfigError(
                f"params.load={load!r}: expected the keys processes (null: one per CPU), max_s and nice "
                f"(0: an ordinary process; null: the workers' niceness)"
            )
        _int(load["processes"], "params.load.processes", null=True)
        if load["nice"] is not None and (
            isinstance(load["nice"], bool) or not isinstance(load["nice"], int) or not -20 <= load["nice"] <= 19
        ):
            raise ConfigError(f"params.load.nice={load['nice']!r}: expected a niceness from -20 to 19, or null")
        _number(load["max_s"], "params.load.max_s", "seconds > 0 (each load process ends by itself after it)", bool)
        address = cfg.cluster.address
        if "loaded" in conditions and address and address != "local":
            raise ConfigError(
                f"params.conditions has loaded but cluster.address={address!r}: the competing load runs on this "
                f"machine, not on the cluster's; measure the loaded condition with a local Ray (cluster.address=null)"
            )
        t = as_dict(p["targets"], "params.targets")
        if set(t) != {"cpus", "points", "loaded_fraction"}:
            raise ConfigError(f"params.targets={t!r}: expected the keys cpus, points and loaded_fraction")
        _int(t["cpus"], "params.targets.cpus", null=True)
        _number(t["points"], "params.targets.points", "performance points >= 0", lambda v: v >= 0)
        _number(t["loaded_fraction"], "params.targets.loaded_fraction", "a fraction in (0, 1]", lambda v: 0 < v <= 1)
        _int(cfg.n_reps, "n_reps")
        _number(cfg.noise, "noise", "a noise std >= 0 (fraction of the maximum response)", lambda v: v >= 0)
        if cfg.response_mode not in RESPONSE_MODES:
            raise ConfigError(f"response_mode={cfg.response_mode!r}: expected one of {', '.join(RESPONSE_MODES)}")
        alg = as_dict(cfg.algorithm, "algorithm")
        name = alg.pop("name", None)
        if name != "gpbo" or alg.get("mode", "variable") != "variable":
            mode = f" (mode {alg['mode']!r})" if "mode" in alg else ""
            raise ConfigError(
                f"algorithm={name!r}{mode}: throughput compares variable-rho GP-BO "
                f"(algorithm=gpbo) with the BoTorch reference loop"
            )
        ref_args = reference_hyperparameters({"name": name, **alg})
        baseline = as_dict(p["baseline"], "params.baseline")
        bad = sorted(set(baseline) - set(BASELINE_KEYS))
        if bad:
            raise ConfigError(
                f"params.baseline: {bad} cannot differ between the engines; the baseline (apart) changes only "
                f"the refit's effort: {', '.join(BASELINE_KEYS)}"
            )
        algs = {"batched": alg, "apart": {**alg, **baseline}}
        out = []
        for d in designs:
            where = f"params.design_specs.{d}"
            spec = as_dict(specs[d], where)
            unknown = sorted(set(spec) - set(SPEC_KEYS))
            missing = [k for k in SPEC_KEYS if k not in spec]
            if unknown or missing:
                raise ConfigError(
                    f"{where}: {'unknown key(s) ' + str(unknown) if unknown else 'missing ' + str(missing)}; "
                    f"a design has {', '.join(SPEC_KEYS)}"
                )
            _int(spec["n_problems"], f"{where}.n_problems")
            _int(spec["n_queries"], f"{where}.n_queries")
            _int(spec["passes"], f"{where}.passes")
            _int(spec["reference_runs"], f"{where}.reference_runs")
            _int(spec["target_quality_runs"], f"{where}.target_quality_runs", null=True)
            if spec["target_runs_per_s"] is not None:
                _number(spec["target_runs_per_s"], f"{where}.target_runs_per_s", "runs/s > 0 or null", lambda v: v > 0)
            config.check_option("dataset", spec["dataset"])
            ds_name, args = dataset_args(spec["dataset"])
            try:
                ds = load_dataset(ds_name, **args)
            except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
                raise ConfigError(f"{where}.dataset={ds_name}: {exc}") from None
            if spec["n_problems"] > len(ds):
                raise ConfigError(
                    f"{where}.n_problems={spec['n_problems']} but dataset {ds_name!r} has only {len(ds)} problems"
                )
            problems = [ds[k] for k in ds.keys()[: spec["n_problems"]]]
            X0 = problems[0].space.X
            for pr in problems[1:]:
                if pr.space.X.shape != X0.shape or not np.array_equal(pr.space.X, X0):
                    raise ConfigError(
                        f"{where}: problems {problems[0].key!r} and {pr.key!r} have different search spaces; "
                        f"a design's problems run as one engine batch and must share one"
                    )
            P = problems[0].space.n_points
            n_q = cfg.n_queries if cfg.n_queries is not None else spec["n_queries"]
            key = "n_queries" if cfg.n_queries is not None else f"{where}.n_queries"
            if not isinstance(n_q, int) or not 1 <= n_q <= P:
                raise ConfigError(f"{key}={n_q!r}: must be between 1 and design {d}'s search space size ({P} points)")
            for engine, hp in algs.items():
                try:
                    algorithms.make(name, problems[0].space, n_reps=1, seed=0, **hp)
                except (ValueError, TypeError) as exc:
                    where_hp = "algorithm" if engine == "batched" else "algorithm with params.baseline"
                    raise ConfigError(f"{where_hp}: {exc}") from None
            out.append(Design(d, problems, int(cfg.n_reps), n_q, spec["reference_runs"], spec["passes"]))
        return p, out, algs, ref_args

    def drive(self, run: Run) -> dict:
        import ray

        from sweeps import grid, results

        cfg = run.cfg
        grid.apply_scale(cfg, run.overrides)
        params, designs, algs, ref_args = self.plan(cfg)
        sample = {"noise": float(cfg.noise), "response_mode": str(cfg.response_mode)}
        run.dir.mkdir(parents=True, exist_ok=True)
        with run.ray():
            run.open_parent(tags={"neuro_opt.kind": "throughput"})
            cpus = float(ray.cluster_resources().get("CPU", 1))
            per = float(cfg.cluster.cpus_per_cell)
            n_workers, threads = max(1, int(cpus // per)), max(1, int(per))
            n_load = params["load"]["processes"] or int(cpus)
            machine = {
                "cpus": int(cpus),
                "workers": n_workers,
                "cpus_per_worker": per,
                "threads_per_worker": threads,
                "load_processes": n_load,
                "load_max_s": params["load"]["max_s"],
                "os_cpus": len(os.sched_getaffinity(0)),
                "loadavg_at_start": list(os.getloadavg()),
                "n_reps": int(cfg.n_reps),
                "n_queries": {d.name: d.n_queries for d in designs},
                "rounds": params["rounds"],
            }
            machine["baseline"] = dict(params["baseline"])
            phases, runs = self.measure_all(cfg, params, designs, algs, ref_args, sample, machine)
            machine["loadavg_at_end"] = list(os.getloadavg())
        table_runs = write_results(run.dir, phases, runs)
        from sweeps.throughput.summary import summarize

        body = summarize(params, machine, phases, table_runs, run.dir)
        parent = run.require_parent()
        results.log_groups(run.tracker, parent, body)
        run.tracker.metrics(parent, parent_metrics(body))
        return body

    @staticmethod
    def measure_all(cfg, params, designs, algs: dict, ref_args, sample, machine: dict):
        """Every round: each condition (the load started for it), each design and engine (``algs``:
        its hyperparameters, the batched engine's for the reference). Adds the workers' niceness,
        the load's and every load session to ``machine``."""
        from sweeps.throughput import shards
        from sweeps.throughput.load import BusyLoad

        say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if cfg.progress else (lambda msg: None)
        n_load = machine["load_processes"]
        workers, info = shards.start_workers(
            machine["workers"], machine["cpus_per_worker"], machine["threads_per_worker"], designs
        )
        machine["worker_nice"] = max(i["nice"] for i in info)
        machine["worker_threads"] = max(i["threads"] for i in info)
        nice = params["load"]["nice"]
        nice = machine["load_nice"] = machine["worker_nice"] if nice is None else nice
        phases: list[dict] = []
        runs: list[dict] = []
        loads: list[dict] = machine.setdefault("loads", [])
        try:
            for d in designs:
                shards.warm(workers, d, algs["batched"], ref_args, sample)
            for rnd in range(1, params["rounds"] + 1):
                for cond in params["conditions"]:
                    loaded = cond == "loaded"
                    t_load = time.time()
                    with BusyLoad(n_load, params["load"]["max_s"], nice) if loaded else nullcontext() as load:
                        for d in designs:
                            for engine in params["engines"]:
                                la, l0 = os.getloadavg()[0], load.cpu_s() if load else 0.0
                                hp = algs.get(engine, algs["batched"])
                                m = shards.measure(workers, d, engine, cfg.seed, (rnd, cond), hp, ref_args, sample)
                                l1 = load.cpu_s() if load else 0.0
                                if load is not None and load.alive() < n_load:
                                    raise RuntimeError(
                                        f"the competing load ended during round {rnd} ({load.alive()} of {n_load} "
                                        f"processes left); raise params.load.max_s={params['load']['max_s']}"
                                    )
                                rows = m.pop("rows")
                                key = {"round": rnd, "condition": cond, "design": d.name, "engine": engine}
                                phases.append(
                                    {
                                        **key,
                                        **m,
                                        "runs_per_s": m["n_runs"] / m["wall_s"],
                                        "load_processes": n_load if loaded else 0,
                                        "load_cpu_s": l1 - l0,
                                        "loadavg_1m": la,
                                    }
                                )
                                runs.append({**key, **rows})
                                say(
                                    f"round {rnd}/{params['rounds']} {cond} {d.name} {engine}: {m['n_runs']} runs in "
                                    f"{m['wall_s']:.2f} s = {m['n_runs'] / m['wall_s']:.3g} runs/s"
                                    + (f" (load {l1 - l0:.1f} CPU s)" if loaded else "")
                                )
                    if load is not None:
                        loads.append(
                            {"round": rnd, "pids": load.pids, "cpu_s": load.final_cpu_s, "wall_s": time.time() - t_load}
                        )
        finally:
            shards.stop_workers(workers)
        return phases, runs


def write_results(run_dir: Path, phases: list[dict], runs: list[dict]) -> dict[str, np.ndarray]:
    """``results/phases.parquet`` and ``results/runs.parquet``; returns the runs as columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(run_dir) / "results"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(phases), out / "phases.parquet")
    cols: dict[str, list] = {}
    for block in runs:
        n = len(block["rep"])
        for k, v in block.items():
            cols.setdefault(k, []).extend(v if isinstance(v, list) else [v] * n)
    table = pa.table(cols)
    pq.write_table(table, out / "runs.parquet")
    return {k: table[k].to_numpy(zero_copy_only=False) for k in table.column_names}


def parent_metrics(body: dict) -> dict[str, float]:
    """Ratios, slowdown and targets as the parent run's metrics (also in ``summary.json``)."""
    from sweeps.results import metric_key

    out: dict[str, float] = {}
    for r in body["ratios"]:
        for k in ("ratio", "apart_ratio", "batched_over_apart"):
            if k in r:
                out[metric_key(k, f"{r['design']} {r['condition']}")] = r[k]
    for s in body["slowdown"]:
        out[metric_key("loaded_over_quiet", f"{s['design']} {s['engine']}")] = s["fraction"]
    for c in body["comparisons"]:
        out[metric_key("max_abs_points", f"{c['params']['design']} batched vs apart")] = max(
            c["exploration_points_max_abs"], c["exploitation_points_max_abs"]
        )
    for i, t in enumerate(body["targets"]):
        if t["met"] is not None:
            out[metric_key("target_met", f"{i} {t['target'].split(':')[0]}")] = float(t["met"])
    return out


KIND = ThroughputKind()
