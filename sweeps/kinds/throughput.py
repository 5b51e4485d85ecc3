"""Complete simulated GP-BO runs per second: the batched engine vs the plain BoTorch loop.

Workloads (``params.workload_specs``): ``rat`` = synthetic rat maps (8 x 4 array, 32 queries),
``nhp`` = synthetic NHP maps (10 x 10 array minus corners, 96 queries), each on the first
``params.n_problems`` problems (subject/muscle) of its dataset. A cell is one (workload,
engine), and both engines run in the same launch on the same problems, with the same
GP-BO hyperparameters (the top-level ``algorithm``, variable-rho) and response sampling:

* ``batched``: :func:`neuro_opt.simulate.simulate` with ``gpbo``, ``n_reps`` replicates of
  one problem as one batch, one batch per problem: ``n_reps x n_problems`` runs;
* ``botorch_reference``: :func:`neuro_opt.reference_loop.botorch_reference_run`, one run at a
  time, ``workload_specs.<w>.runs_reference`` runs, cycling over the problems (it is slow:
  0.05 to 0.15 s per query on one thread here; the default runs 100 per workload, ~10 minutes
  on 2 cores).

Runs per second = runs / wall time of the complete runs (responses, model, acquisition and
metrics included), after one short untimed warm-up run of the same engine. Cells take
``cluster.cpus_per_cell`` cores (1 in the exp file, as sweeps run: cells side by side, one
per core) and torch uses ``params.threads`` threads (null: the cell's CPUs). One thread per
cell is also what keeps the measurement honest on a shared machine: two torch threads on two
busy cores make the small operations of both loops many times slower. ``runs_per_s`` is
therefore per cell; ``targets`` in the summary multiplies it by the Ray CPUs for the
whole-machine figure of the throughput target, and says so.

The summary has a group per (workload, engine) with ``n`` = the runs its figures rest on,
and a top-level ``ratios`` (batched / reference runs per second, per workload) and
``comparisons`` (performance points, batched minus reference, on the problems both ran).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neuro_opt import metrics
from sweeps.experiment import Experiment
from sweeps.schema import ConfigError

ENGINES = ("batched", "botorch_reference")
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


def reference_hyperparameters(alg: dict) -> dict:
    """The reference loop's arguments from a ``gpbo`` config; raises on keys it has no equivalent for."""
    extra = sorted(set(alg) - set(REFERENCE_KEYS) - set(ENGINE_ONLY_KEYS))
    if extra:
        raise ConfigError(
            f"algorithm keys {extra} have no equivalent in the BoTorch reference loop "
            f"(neuro_opt/reference_loop.py); the comparison would not be like for like"
        )
    return {k: alg[k] for k in REFERENCE_KEYS if k in alg}


def _n_queries(payload: dict, spec: dict) -> int:
    return int(payload["n_queries"] if payload["n_queries"] is not None else spec["n_queries"])


class ThroughputKind(Experiment):
    payload_keys = ("kind", "params", "algorithm", "n_reps", "n_queries", "noise", "response_mode", "seed")

    def __init__(self):
        self._datasets = {}

    # --------------------------------------------------------------- driver side
    def problems(self, ds_cfg: dict, n_problems: int) -> list:
        from neuro_opt.datasets import load
        from sweeps.grid import stable_hash
        from sweeps.kinds.optimization import dataset_args

        key = stable_hash(ds_cfg)
        if key not in self._datasets:
            name, args = dataset_args(ds_cfg)
            try:
                self._datasets[key] = load(name, **args)
            except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
                raise ConfigError(f"dataset={name}: {exc}") from None
        ds = self._datasets[key]
        if n_problems > len(ds):
            raise ConfigError(
                f"params.n_problems={n_problems} but dataset {ds_cfg.get('name')!r} has only {len(ds)} problems"
            )
        return [ds[k] for k in ds.keys()[:n_problems]]

    def data_for(self, payload: dict) -> dict:
        """Every workload's problems (one object shared by all cells: the launcher puts it once)."""
        p = payload["params"]
        return {w: self.problems(spec["dataset"], int(p["n_problems"])) for w, spec in p["workload_specs"].items()}

    def validate(self, cfg, cells) -> None:
        from neuro_opt import algorithms
        from sweeps.kinds.latency import check_threads

        for cell in cells:
            pl = cell.payload
            p = pl["params"]
            where = f"cell {cell.coords}"
            for key in ("workload", "engine", "workload_specs", "n_problems", "threads"):
                if key not in p:
                    raise ConfigError(f"params.{key} is missing ({where}); see conf/exp/throughput.yaml")
            if p["engine"] not in ENGINES:
                raise ConfigError(f"params.engine={p['engine']!r} ({where}): expected one of {', '.join(ENGINES)}")
            if p["workload"] not in p["workload_specs"]:
                raise ConfigError(
                    f"params.workload={p['workload']!r} ({where}): not in params.workload_specs "
                    f"({', '.join(p['workload_specs'])})"
                )
            check_threads(p["threads"])
            if not isinstance(p["n_problems"], int) or p["n_problems"] < 1:
                raise ConfigError(f"params.n_problems={p['n_problems']!r}: must be an integer >= 1")
            if pl["n_reps"] < 1:
                raise ConfigError(f"n_reps={pl['n_reps']}: must be >= 1 (batched runs per problem)")
            spec = p["workload_specs"][p["workload"]]
            for key in ("dataset", "n_queries", "runs_reference"):
                if key not in spec:
                    raise ConfigError(f"params.workload_specs.{p['workload']}.{key} is missing")
            if not isinstance(spec["runs_reference"], int) or spec["runs_reference"] < 1:
                raise ConfigError(
                    f"params.workload_specs.{p['workload']}.runs_reference={spec['runs_reference']!r}: "
                    f"must be an integer >= 1"
                )
            problems = self.problems(spec["dataset"], int(p["n_problems"]))
            P = min(pr.space.n_points for pr in problems)
            n_q = _n_queries(pl, spec)
            if n_q < 1 or n_q > P:
                raise ConfigError(
                    f"n_queries={n_q} ({where}): must be between 1 and the size of the search space ({P} points)"
                )
            if not (isinstance(pl["noise"], (int, float)) and math.isfinite(pl["noise"]) and pl["noise"] >= 0):
                raise ConfigError(f"noise={pl['noise']!r}: must be >= 0")
            alg = dict(pl["algorithm"])
            name = alg.pop("name", None)
            if name != "gpbo" or alg.get("mode", "variable") != "variable":
                raise ConfigError(
                    f"algorithm={name!r} (mode {alg.get('mode')!r}): throughput compares variable-rho "
                    f"GP-BO (algorithm=gpbo) with the BoTorch reference loop"
                )
            try:
                algorithms.make(name, problems[0].space, n_reps=1, seed=0, **alg)
            except ValueError as exc:
                raise ConfigError(f"algorithm ({where}): {exc}") from None
            reference_hyperparameters(pl["algorithm"])

    # --------------------------------------------------------------- worker side
    @staticmethod
    def run_cell(payload: dict, seed_sequence, data) -> pa.Table:
        import torch

        from neuro_opt.threads import intra_op_threads

        p = payload["params"]
        w, engine = p["workload"], p["engine"]
        spec = p["workload_specs"][w]
        problems = data[w]
        n_q = _n_queries(payload, spec)
        alg = dict(payload["algorithm"])
        alg.pop("name")
        sample = dict(noise=float(payload["noise"]), response_mode=payload["response_mode"])
        ref_args = reference_hyperparameters(payload["algorithm"])
        s_warm, s_runs = seed_sequence.spawn(2)
        tables: list[pa.Table] = []
        with intra_op_threads(p["threads"]):
            threads = torch.get_num_threads()
            _run_engine(engine, problems, spec, n_q, payload, alg, ref_args, sample, s_warm, s_runs, tables)
        out = pa.concat_tables(tables)
        n = out.num_rows
        for k, v, typ in (
            ("workload", w, pa.string()),
            ("engine", engine, pa.string()),
            ("threads", threads, pa.int32()),
        ):
            out = out.append_column(k, pa.array([v] * n, typ))
        return out

    # --------------------------------------------------------------- report
    def report(self, cfg, table: pa.Table, run_dir: Path, tracker, parent_run: str | None, axes: dict) -> dict:
        last = _final_rows(table)
        groups, per_problem = [], {}
        combos = sorted(set(zip(last["workload"].to_pylist(), last["engine"].to_pylist())))
        for w, e in combos:
            sub = last.filter(pc.and_(pc.equal(last["workload"], w), pc.equal(last["engine"], e)))
            runs_per_s = _rate(sub)
            params = {"workload": w, "engine": e}
            m = {
                "runs_per_s": runs_per_s,
                "exploration_final": _mean_sem(sub["exploration"].to_numpy()),
                "exploitation_final": _mean_sem(sub["exploitation"].to_numpy()),
            }
            batches = _batches(sub)
            g = {
                "params": params,
                "n": sub.num_rows,
                "metrics": m,
                "n_queries": int(pc.max(sub["query"]).as_py()),
                "n_problems": len(set(sub["problem"].to_pylist())),
                "wall_s": float(sum(b[1] for b in batches)),
                "threads": int(sub["threads"][0].as_py()),
            }
            groups.append(g)
            per_problem[(w, e)] = _per_problem(sub)
        ratios, comparisons = {}, []
        by = {(g["params"]["workload"], g["params"]["engine"]): g for g in groups}
        for w in sorted({g["params"]["workload"] for g in groups}):
            b, r = by.get((w, "batched")), by.get((w, "botorch_reference"))
            if b is None or r is None:
                continue
            ratio = b["metrics"]["runs_per_s"][0] / r["metrics"]["runs_per_s"][0]
            ratios[w] = ratio
            pb, pr = per_problem[(w, "batched")], per_problem[(w, "botorch_reference")]
            common = sorted(set(pb) & set(pr))
            entry = {
                "workload": w,
                "runs_per_s_ratio": ratio,
                "n_batched": b["n"],
                "n_reference": r["n"],
                "problems": common,
            }
            for name in ("exploration", "exploitation"):
                # performance points: per-problem mean final values, batched minus reference, averaged over
                # the problems both engines ran; the SEM is over those problems (0 with one problem)
                diffs = 100 * np.array([pb[k][name] - pr[k][name] for k in common])
                entry[f"{name}_points_final"] = float(diffs.mean()) if common else None
                entry[f"{name}_points_final_sem"] = metrics.value_sem(diffs)[1]
            entry["per_problem"] = {k: {"batched": pb[k], "botorch_reference": pr[k]} for k in common}
            comparisons.append(entry)
            if tracker is not None:
                tracker.metrics(parent_run, {f"ratio_{w}": ratio})
        figs = run_dir / "figures"
        figs.mkdir(exist_ok=True)
        if groups:
            throughput_figure(groups, ratios, figs / "throughput.png")
        return {
            "groups": groups,
            "ratios": ratios,
            "comparisons": comparisons,
            "targets": _targets(cfg, groups, comparisons),
        }


def _targets(cfg, groups: list[dict], comparisons: list[dict]) -> list[dict]:
    """Issue 3's throughput targets, as measured (and, for the 2-core figure, how it is derived)."""
    out = []
    for c in comparisons:
        out.append(
            {
                "target": f"batched >= 100x the reference, {c['workload']}",
                "value": c["runs_per_s_ratio"],
                "met": bool(c["runs_per_s_ratio"] >= 100),
            }
        )
        pts = [c[f"{n}_points_final"] for n in ("exploration", "exploitation")]
        if None not in pts:
            out.append(
                {
                    "target": f"final exploration and exploitation within 2 points of the reference, {c['workload']}",
                    "value": pts,
                    "met": bool(max(abs(v) for v in pts) <= 2),
                    "n_reference": c["n_reference"],
                    "problems": len(c["problems"]),
                }
            )
    cores = cfg.cluster.num_cpus or os.cpu_count() or 1
    cells = max(1, int(cores // cfg.cluster.cpus_per_cell))
    for g in groups:
        if g["params"] == {"workload": "nhp", "engine": "batched"}:
            rate = g["metrics"]["runs_per_s"][0] * cells
            out.append(
                {
                    "target": ">= 20 complete NHP runs per second on 2 cores",
                    "value": rate,
                    "met": bool(rate >= 20) if cores == 2 else None,
                    "basis": f"runs_per_s of one cell ({cfg.cluster.cpus_per_cell} CPU, {g['threads']} "
                    f"thread(s)) x {cells} cells side by side on {cores} CPUs",
                }
            )
    return out


def _run_engine(engine, problems, spec, n_q, payload, alg, ref_args, sample, s_warm, s_runs, tables) -> None:
    """Time complete runs of one engine (after a short untimed warm-up run) into ``tables``."""
    from neuro_opt.reference_loop import botorch_reference_run
    from neuro_opt.simulate import simulate

    if engine == "batched":
        reps = int(payload["n_reps"])
        simulate(problems[0], "gpbo", n_reps=2, n_queries=min(3, n_q), seed=s_warm, hyperparameters=alg, **sample)
        for i, (problem, ss) in enumerate(zip(problems, s_runs.spawn(len(problems)))):
            t0 = time.perf_counter()
            tab = simulate(problem, "gpbo", n_reps=reps, n_queries=n_q, seed=ss, hyperparameters=alg, **sample)
            dt = time.perf_counter() - t0
            tables.append(_annotate(tab, problem.key, i * reps, i, dt, reps))
    else:
        botorch_reference_run(problems[0], min(3, n_q), seed=s_warm, **ref_args, **sample)
        for r, ss in enumerate(s_runs.spawn(int(spec["runs_reference"]))):
            problem = problems[r % len(problems)]
            t0 = time.perf_counter()
            tab = botorch_reference_run(problem, n_q, seed=ss, **ref_args, **sample)
            dt = time.perf_counter() - t0
            tables.append(_annotate(tab, problem.key, r, r, dt, 1))


def _annotate(tab: pa.Table, problem: str, rep0: int, batch: int, seconds: float, batch_size: int) -> pa.Table:
    """Number the runs of a cell consecutively and record which timed batch each belongs to."""
    n = tab.num_rows
    tab = tab.set_column(0, "rep", pa.array(tab["rep"].to_numpy() + rep0, pa.int32()))
    for k, v, typ in (
        ("problem", problem, pa.string()),
        ("batch", batch, pa.int32()),
        ("batch_s", seconds, pa.float64()),
        ("batch_size", batch_size, pa.int32()),
    ):
        tab = tab.append_column(k, pa.array([v] * n, typ))
    return tab


def _final_rows(table: pa.Table) -> pa.Table:
    """The last query of every run (one row per run)."""
    keep = np.zeros(table.num_rows, dtype=bool)
    w = np.asarray(table["workload"].to_pylist())
    q = table["query"].to_numpy()
    for wl in np.unique(w):
        sel = w == wl
        keep |= sel & (q == q[sel].max())
    return table.filter(pa.array(keep))


def _batches(sub: pa.Table) -> list[tuple[int, float]]:
    """``(runs, seconds)`` of every timed unit (a batch of replicates, or one reference run)."""
    seen = {}
    for cell, b, s, n in zip(
        sub["cell"].to_pylist(), sub["batch"].to_pylist(), sub["batch_s"].to_pylist(), sub["batch_size"].to_pylist()
    ):
        seen[(cell, b)] = (n, s)
    return list(seen.values())


def _rate(sub: pa.Table) -> list[float]:
    """Runs per second = total runs / total time, with its SEM over the timed units (ratio estimator)."""
    units = np.array(_batches(sub), dtype=float)
    n, t = units[:, 0], units[:, 1]
    rate = n.sum() / t.sum()
    k = len(units)
    sem = float(np.sqrt(((n - rate * t) ** 2).sum() / (k * (k - 1))) / t.mean()) if k > 1 else 0.0
    return [float(rate), sem]


_mean_sem = metrics.value_sem


def _per_problem(sub: pa.Table) -> dict:
    acc: dict = {}
    for k, ex, ei in zip(sub["problem"].to_pylist(), sub["exploration"].to_pylist(), sub["exploitation"].to_pylist()):
        acc.setdefault(k, []).append((ex, ei))
    return {
        k: {
            "exploration": float(np.mean([v[0] for v in vals])),
            "exploitation": float(np.mean([v[1] for v in vals])),
            "n": len(vals),
        }
        for k, vals in acc.items()
    }


def throughput_figure(groups: list[dict], ratios: dict, path: Path) -> Path:
    """Runs per second (log scale) and final exploration/exploitation per workload and engine."""
    from sweeps.plots import plt

    workloads = sorted({g["params"]["workload"] for g in groups})
    engines = [e for e in ENGINES if any(g["params"]["engine"] == e for g in groups)]
    by = {(g["params"]["workload"], g["params"]["engine"]): g for g in groups}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.8 / max(1, len(engines))
    for ax, metric, scale in zip(axes, ("runs_per_s", "exploration_final", "exploitation_final"), (1, 100, 100)):
        for j, e in enumerate(engines):
            xs, ms, ss, ns = [], [], [], []
            for i, w in enumerate(workloads):
                g = by.get((w, e))
                if g is None:
                    continue
                xs.append(i + (j - (len(engines) - 1) / 2) * width)
                ms.append(scale * g["metrics"][metric][0])
                ss.append(scale * g["metrics"][metric][1])
                ns.append(g["n"])
            ax.bar(xs, ms, width, yerr=ss, capsize=3, color=f"C{j}", label=e)
            for x, m, n in zip(xs, ms, ns):
                ax.annotate(f"n={n}", (x, m), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels(
            [f"{w}\n{by[(w, engines[0])]['n_queries']} queries" if (w, engines[0]) in by else w for w in workloads]
        )
        ax.set_ylabel(metric.replace("_", " ") + (" (% of max)" if scale == 100 else ""))
        if metric == "runs_per_s":
            ax.set_yscale("log")
            threads = sorted({g["threads"] for g in groups})
            ax.set_title(
                "batched / reference: "
                + ("; ".join(f"{w} x{r:.0f}" for w, r in ratios.items()) or "-")
                + f"\n(per cell, {'/'.join(map(str, threads))} torch thread(s))",
                fontsize=9,
            )
        else:
            ax.set_ylim(0, 110)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


KIND = ThroughputKind()
