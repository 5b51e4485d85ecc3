"""Simulated optimization runs: problem x algorithm x replicates (Fig. S3 and friends)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neuro_opt import algorithms, metrics
from neuro_opt.datasets import Dataset
from neuro_opt.datasets import load as load_dataset
from neuro_opt.simulate import Block, simulate, simulate_batch
from sweeps import plots
from sweeps.experiment import Experiment
from sweeps.schema import ConfigError, as_dict
from sweeps.tables import run_curves, select, unique_rows

CURVES = ("exploration", "exploitation")


def dataset_args(ds_cfg: dict) -> tuple[str, dict]:
    ds = dict(ds_cfg)
    try:
        name = ds.pop("name")
    except KeyError:
        raise ConfigError("dataset.name is missing: every conf/dataset/*.yaml names its dataset") from None
    return name, ds


class DatasetKind(Experiment):
    """Driver-side dataset handling shared by kinds whose cells run on dataset problems:
    each distinct dataset config is loaded once, and load errors become ConfigErrors."""

    def __init__(self):
        self._datasets: dict[str, Dataset] = {}

    def dataset(self, ds_cfg: dict) -> Dataset:
        from sweeps.grid import stable_hash

        key = stable_hash(ds_cfg)
        if key not in self._datasets:
            name, args = dataset_args(ds_cfg)
            try:
                self._datasets[key] = load_dataset(name, **args)
            except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
                raise ConfigError(f"dataset={name}: {exc}") from None
        return self._datasets[key]

    def problem_keys(self, cfg) -> list[str]:
        return self.dataset(as_dict(cfg.dataset, "dataset")).keys()

    def data_for(self, payload: dict):
        return self.dataset(payload["dataset"])[payload["muscle"]]


class OptimizationKind(DatasetKind):
    payload_keys = (
        "kind",
        "algorithm",
        "dataset",
        "muscle",
        "noise",
        "n_reps",
        "n_queries",
        "response_mode",
        "use_prior",
        "record_map",
        "seed",
    )

    def validate(self, cfg, cells) -> None:
        for cell in cells:
            p = cell.payload
            problem = self.data_for(p)
            where = f"cell {cell.coords}"
            noise = p["noise"]
            if not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
                raise ConfigError(
                    f"noise={noise!r} ({where}): a noise level is a std as a fraction of the "
                    f"maximum response and must be >= 0"
                )
            n_q, P = p["n_queries"], problem.space.n_points
            if n_q is not None and (n_q < 1 or n_q > P):
                raise ConfigError(
                    f"n_queries={n_q} ({where}): must be between 1 and the size of the search "
                    f"space of {problem.key!r} ({P} points)"
                )
            if p["n_reps"] < 1:
                raise ConfigError(f"n_reps={p['n_reps']}: must be >= 1")
            if p["response_mode"] not in ("gaussian", "repetition_valid", "repetition_all"):
                raise ConfigError(
                    f"response_mode={p['response_mode']!r}: expected gaussian, repetition_valid or repetition_all"
                )
            alg = dict(p["algorithm"])
            name = alg.pop("name", None)
            try:  # builds the optimizer once: catches unknown names, unknown or out-of-range hyperparameters
                algorithms.make(
                    name, problem.space, n_reps=1, seed=0, prior=problem.prior if p["use_prior"] else None, **alg
                )
            except ValueError as exc:
                raise ConfigError(f"algorithm ({where}): {exc}") from None
            if p["use_prior"] and problem.prior is None and problem.meta.get("prior_dims") != []:
                # a generator that records prior_dims == [] made a no-prior condition on purpose (Fig. S7's 0 dims)
                raise ConfigError(
                    f"use_prior=true but problem {problem.key!r} of dataset {p['dataset']['name']!r} has no prior map"
                )

    def batch_key(self, payload: dict, problem) -> str | None:
        """Cells that differ only in problem (of one search space), noise level or seed share a key:
        their replicates run as one engine batch (simulate_batch; the same results as apart)."""
        from sweeps.grid import stable_hash

        name = payload["algorithm"]["name"]
        if payload["use_prior"] or not algorithms.batch_draws(name):
            return None
        shared = {k: v for k, v in payload.items() if k not in ("muscle", "noise", "n_reps", "seed", "coords")}
        space = problem.space.X
        return stable_hash([shared, list(space.shape), hashlib.sha1(np.ascontiguousarray(space).tobytes()).hexdigest()])

    def batch_size(self, payload: dict) -> int:
        return int(payload["n_reps"])

    @staticmethod
    def run_batch(payloads: list[dict], seed_sequences: list, problems: list) -> list[pa.Table]:
        """Cells of one batch key (see :meth:`batch_key`) as one :func:`simulate_batch`."""
        first = payloads[0]
        alg = dict(first["algorithm"])
        name = alg.pop("name")
        blocks = [
            Block(problem, p["n_reps"], ss, float(p["noise"]))
            for p, ss, problem in zip(payloads, seed_sequences, problems)
        ]
        return simulate_batch(
            blocks,
            name,
            n_queries=first["n_queries"],
            response_mode=first["response_mode"],
            use_prior=first["use_prior"],
            hyperparameters=alg,
            record_map=bool(first.get("record_map", False)),
        )

    # --------------------------------------------------------------- worker side
    @staticmethod
    def run_cell(payload: dict, seed_sequence, problem) -> pa.Table:
        alg = dict(payload["algorithm"])
        name = alg.pop("name")
        return simulate(
            problem,
            name,
            n_reps=payload["n_reps"],
            n_queries=payload["n_queries"],
            seed=seed_sequence,
            noise=float(payload["noise"]),
            response_mode=payload["response_mode"],
            use_prior=payload["use_prior"],
            hyperparameters=alg,
            record_map=bool(payload.get("record_map", False)),
        )

    # --------------------------------------------------------------- report
    def report(self, cfg, table: pa.Table, run_dir: Path, tracker, parent_run: str | None, axes: dict) -> dict:
        """Groups (mean +/- SEM per query and at the end), comparisons, figures and, when
        ``report.analysis`` names one (``sweeps/analyses/<name>.py``), the experiment's own
        figures and ``findings``. Reads the Parquet table only, so ``sweeps.report`` can
        call it again on a finished run (``tracker=None``)."""
        pool = [k for k in cfg.report.pool if k in axes or k == "muscle"]
        group_keys = [k for k in axes if k not in pool]
        cols = [k.replace(".", "_") for k in group_keys]
        extra = [c for c in ("map_r2",) if c in table.column_names and table[c].null_count < table.num_rows]
        groups = []
        curves_by_group = {}
        combos = unique_rows(table, cols)
        for combo in combos:
            sub = select(table, dict(zip(cols, combo)))
            cur = {name: run_curves(sub, name) for name in CURVES + tuple(extra)}
            if any(np.isnan(a).all() for a in cur.values()):
                cur = {k: a for k, a in cur.items() if not np.isnan(a).all()}
            params = dict(zip(group_keys, combo))
            m = {}
            for name, arr in cur.items():
                m[f"{name}_final"] = metrics.value_sem(metrics.final(arr))
                m[f"{name}_auc"] = metrics.value_sem(metrics.auc(arr))
                for q in cfg.report.at:
                    if q <= arr.shape[1]:
                        m[f"{name}_q{q}"] = metrics.value_sem(arr[:, q - 1])
            conv = metrics.queries_to_convergence(run_curves(sub, "point"))
            m["converged_fraction"] = metrics.value_sem(np.isfinite(conv).astype(float))
            per_query = {
                name: dict(zip(("mean", "sem"), (np.round(v, 5).tolist() for v in metrics.mean_sem(arr))))
                for name, arr in cur.items()
            }
            groups.append(
                {"params": params, "n": int(cur["exploration"].shape[0]), "metrics": m, "per_query": per_query}
            )
            curves_by_group[tuple(combo)] = cur
        comparisons = self._compare(cfg, table, group_keys, combos)
        figs = run_dir / "figures"
        figs.mkdir(exist_ok=True)
        n_problems = len(set(table["muscle"].to_pylist())) if "muscle" in table.column_names else None
        plots.curves_figure(group_keys, curves_by_group, figs / "curves.png", cfg.experiment, n_problems)
        numeric = [
            k
            for k in group_keys
            if k != "algorithm" and all(isinstance(c[group_keys.index(k)], (int, float)) for c in combos)
        ]
        if "algorithm" in group_keys and len(numeric) == 1:
            plots.final_vs_param(
                groups, numeric[0], figs / f"final_vs_{numeric[0].replace('.', '_')}.png", cfg.experiment, n_problems
            )
        out = {"groups": groups, "comparisons": comparisons}
        if cfg.report.analysis:
            from sweeps import analyses

            out.update(
                analyses.run(
                    cfg.report.analysis,
                    analyses.Context(
                        cfg=cfg, table=table, figures=figs, groups=groups, comparisons=comparisons, kind=self
                    ),
                )
            )
        return out

    def _compare(self, cfg, table, group_keys, combos):
        """Performance points and one-sided Wilcoxon tests between algorithm pairs, paired by problem.

        A grid key that does not apply to an algorithm (its coordinate is null, e.g. kappa for
        extensive search) does not split that algorithm's runs: GP-BO at each kappa is compared
        with the one extensive search."""
        if "algorithm" not in group_keys:
            return []
        pairs = [tuple(p) for p in cfg.report.compare]
        if not pairs:
            return []
        ai = group_keys.index("algorithm")
        rest_keys = [g for g in group_keys if g != "algorithm"]
        others = sorted(
            {tuple(v for i, v in enumerate(c) if i != ai) for c in combos},
            key=lambda r: tuple((str(type(v)), v) for v in r),
        )
        out = []
        for a, b in pairs:
            for rest in others:
                params = dict(zip(rest_keys, rest))
                per = {}
                for alg in (a, b):
                    sub = select(table, {"algorithm": alg})
                    wanted = {
                        k.replace(".", "_"): v
                        for k, v in params.items()
                        if sub.num_rows and sub[k.replace(".", "_")].null_count < sub.num_rows
                    }
                    per[alg] = select(sub, wanted) if None not in wanted.values() else sub.slice(0, 0)
                if per[a].num_rows == 0 or per[b].num_rows == 0:
                    continue
                entry = {"params": params, "a": a, "b": b}
                for name in CURVES:
                    ca, cb = run_curves(per[a], name), run_curves(per[b], name)
                    pts = metrics.performance_points(ca, cb)
                    pa_, pb_ = per_problem_final(per[a], name), per_problem_final(per[b], name)
                    common = sorted(set(pa_) & set(pb_))
                    p = (
                        metrics.wilcoxon_greater(np.array([pa_[k] for k in common]), np.array([pb_[k] for k in common]))
                        if len(common) > 1
                        else None
                    )
                    entry[f"{name}_points_final"] = float(pts[-1])
                    for q in cfg.report.at:
                        if q <= len(pts):
                            entry[f"{name}_points_q{q}"] = float(pts[q - 1])
                    entry[f"{name}_p_value"] = p
                    entry["n_problems"] = len(common)
                    if name == "exploration":
                        entry["queries_to_reach_b_final"] = metrics.queries_to_reach(ca, float(cb.mean(0)[-1]))
                out.append(entry)
        return out


def per_problem_final(sub: pa.Table, column: str) -> dict:
    """Mean final value per problem (muscle), the unit paired in Wilcoxon tests."""
    qmax = pc.max(sub["query"]).as_py()
    last = sub.filter(pc.equal(sub["query"], qmax))
    keys = last["muscle"].to_pylist() if "muscle" in last.column_names else ["all"] * last.num_rows
    vals = last[column].to_pylist()
    acc: dict = {}
    for k, v in zip(keys, vals):
        acc.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in acc.items()}


KIND = OptimizationKind()
