"""The held-out comparison of a tuning result with the published defaults, and what MLflow records of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from neuro_opt import metrics
from sweeps.tuning.scoring import runs_of
from sweeps.tuning.setup import Setup
from sweeps.tuning.space import HP_NAMES


# =============================================================================================
# held-out comparison and reporting (shared with the calibration kind)
# =============================================================================================
def chosen_params(alg: dict, extra_keys=()) -> dict:
    keys = [k for k in HP_NAMES if k in alg] + [k for k in extra_keys if k in alg and k not in HP_NAMES]
    return {k: alg[k] for k in keys}


def heldout_groups(
    setup: Setup, res: dict, methods: dict, train_values: dict, simulated: dict, extra_keys=()
) -> tuple[list, dict]:
    """Summary groups of ``{method: alg}`` from their held-out results ``res`` (``Scorer.evaluate(methods,
    "heldout")``: the same runs, seeds included, for every method). Returns ``(groups, comparison)``:
    the paired difference of the first method and ``published_defaults`` over held-out runs and by problem."""
    groups = []
    per_run = {}
    for method, alg in methods.items():
        vals = runs_of(setup.objective, res[method], setup.heldout)
        per_run[method] = vals
        expl = np.concatenate([res[method][k]["exploration"][:, -1] for k in setup.heldout])
        expt = np.concatenate([res[method][k]["exploitation"][:, -1] for k in setup.heldout])
        groups.append(
            {
                "params": {"method": method, **chosen_params(alg, extra_keys)},
                "n": int(vals.size),
                "metrics": {
                    "heldout_objective": metrics.value_sem(vals),
                    "train_objective": train_values[method],
                    "simulated_runs": [float(simulated[method]), 0.0],
                    "heldout_exploration_final": metrics.value_sem(expl),
                    "heldout_exploitation_final": metrics.value_sem(expt),
                },
            }
        )
    comparison = {}
    names = list(methods)
    if "published_defaults" in per_run and len(names) > 1:
        other = [n for n in names if n != "published_defaults"][0]
        d = per_run[other] - per_run["published_defaults"]
        by_problem = [
            float(
                np.mean(setup.objective.per_run(res[other][k]))
                - np.mean(setup.objective.per_run(res["published_defaults"][k]))
            )
            for k in setup.heldout
        ]
        comparison = {
            "a": other,
            "b": "published_defaults",
            "heldout_objective_difference": metrics.value_sem(d),
            "heldout_objective_difference_by_problem": metrics.value_sem(by_problem),
            "heldout_problems_a_at_least_b": int(sum(x >= 0 for x in by_problem)),
            "heldout_problems": len(by_problem),
        }
    return groups, comparison


def heldout_figure(setup: Setup, res: dict, path: Path) -> Path:
    from sweeps.plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, (method, by_key) in enumerate(res.items()):
        for ax, name in zip(axes, ("exploration", "exploitation")):
            runs = np.concatenate([by_key[k][name] for k in setup.heldout])
            m, s = mean_sem_rows(runs)
            q = np.arange(1, m.size + 1)
            ax.plot(q, 100 * m, color=f"C{i}", label=method)
            ax.fill_between(q, 100 * (m - s), 100 * (m + s), color=f"C{i}", alpha=0.25, lw=0)
            ax.set_xlabel("query")
            ax.set_ylabel(f"{name} (% of max)")
            ax.set_ylim(0, 105)
    axes[0].set_title(f"held-out subjects {', '.join(setup.heldout_subjects)}", fontsize=9)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mean_sem_rows(a: np.ndarray):
    return metrics.mean_sem(a, axis=0)


def log_chosen(
    tracker,
    run_id: str,
    method: str,
    alg: dict,
    setup: Setup,
    group: dict,
    published_group: dict,
    search: dict,
    extra: dict | None = None,
) -> None:
    """What ``sweeps.promote`` reads from a run: ``chosen.*`` params and held-out metrics."""
    import mlflow

    prov = {
        "chosen.method": method,
        "chosen.algorithm": json.dumps(alg, sort_keys=True),
        "chosen.n_queries": json.dumps(setup.run["n_queries"]),
        "chosen.dataset": json.dumps(setup.dataset_cfg, sort_keys=True),
        "chosen.dataset_space": json.dumps(setup.space_dims),
        "chosen.train_subjects": json.dumps(setup.train_subjects),
        "chosen.heldout_subjects": json.dumps(setup.heldout_subjects),
        "chosen.objective": json.dumps(setup.objective.to_dict(), sort_keys=True),
        "chosen.search": json.dumps(search, sort_keys=True),
        "chosen.code_version": setup.git,
        **{f"chosen.{k}": json.dumps(v) for k, v in (extra or {}).items()},
        **{f"chosen.hp.{k}": str(v) for k, v in chosen_params(alg).items()},
    }
    items = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in prov.items()]
    for i in range(0, len(items), 100):
        tracker.client.log_batch(run_id, params=items[i : i + 100])
    m = group["metrics"]
    tracker.metrics(
        run_id,
        {
            "heldout_objective": m["heldout_objective"][0],
            "heldout_objective_sem": m["heldout_objective"][1],
            "train_objective": m["train_objective"][0],
            "simulated_runs": m["simulated_runs"][0],
            "published_heldout_objective": published_group["metrics"]["heldout_objective"][0],
            "published_train_objective": published_group["metrics"]["train_objective"][0],
        },
    )


def dataset_block(setup: Setup) -> dict:
    return {
        "config": setup.dataset_cfg,
        "train_subjects": setup.train_subjects,
        "heldout_subjects": setup.heldout_subjects,
        "train_problems": len(setup.train),
        "heldout_problems": len(setup.heldout),
        "n_reps": setup.run["n_reps"],
        "heldout_reps": setup.heldout_reps,
        "n_queries": setup.run["n_queries"],
        "objective": setup.objective.to_dict(),
    }


def json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o)}")


def parallel_slots(setup: Setup, cfg) -> int:
    import ray

    if setup.params.get("parallel") is not None:
        return int(setup.params["parallel"])
    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, int(cpus // max(cfg.cluster.cpus_per_cell, 1e-9)))
