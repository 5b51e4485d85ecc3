"""Scoring hyperparameters on Ray: simulated GP-BO runs on the training or held-out problems."""

from __future__ import annotations

import numpy as np

from sweeps.tuning.setup import Setup
from sweeps.tuning.space import Objective


# =============================================================================================
# scoring on Ray
# =============================================================================================
def _simulate_batch(algorithm: dict, run: dict, seeds: list, *problems) -> list:
    """Ray task body: the problems' replicates as one engine batch (``simulate_batch``, the same
    runs as one ``simulate`` per problem); returns the curves only."""
    from neuro_opt.simulate import Block, curves, simulate_batch
    from neuro_opt.threads import intra_op_threads
    from sweeps.run import task_cpus

    alg = dict(algorithm)
    name = alg.pop("name")
    with intra_op_threads(task_cpus()):  # as many torch threads as the task's CPUs
        traces = simulate_batch(
            [Block(problem, run["n_reps"], ss, run["noise"]) for problem, ss in zip(problems, seeds)],
            name,
            n_queries=run["n_queries"],
            response_mode=run["response_mode"],
            use_prior=run["use_prior"],
            hyperparameters=alg,
        )
    return [
        {"key": p.key, "exploration": curves(t, "exploration"), "exploitation": curves(t, "exploitation")}
        for p, t in zip(problems, traces)
    ]


class Scorer:
    """Submits simulated runs of a hyperparameter set on some problems as Ray tasks.

    Every problem goes to the object store once. A run's seed derives from (global seed,
    stable hash of dataset, problem, replicates, queries, noise, response mode, prior), not
    from the hyperparameters: common random numbers across trials and methods.


    Roles: ``train`` (the runs every trial is scored on), ``heldout`` (the held-out subjects,
    ``heldout_reps`` replicates) and ``confirm`` (the training problems again with
    ``confirm_reps`` replicates from a fresh seed stream: runs no trial was selected on).
    """

    def __init__(self, setup: Setup, cpus_per_task: float, max_retries: int, confirm_reps: int | None = None):
        import ray

        self.setup, self.confirm_reps = setup, confirm_reps or setup.run["n_reps"]
        self.refs = {k: ray.put(setup.dataset[k]) for k in setup.train + setup.heldout}
        self.task = ray.remote(_simulate_batch).options(num_cpus=cpus_per_task, max_retries=max_retries)

    def run_settings(self, role: str) -> dict:
        run = dict(self.setup.run)
        if role == "heldout":
            run["n_reps"] = self.setup.heldout_reps
        elif role == "confirm":
            run["n_reps"] = self.confirm_reps
        return run

    def seed(self, key: str, role: str) -> np.random.SeedSequence:
        from sweeps.grid import stable_hash

        content = {"dataset": self.setup.dataset_cfg, "problem": key, **self.run_settings(role)}
        if role == "confirm":
            content["stage"] = "confirm"
        h = stable_hash(content)
        return np.random.SeedSequence([self.setup.seed, int(h[:15], 16)])

    def submit(self, alg: dict, keys: list, role: str = "train"):
        return self.task.remote(
            alg, self.run_settings(role), [self.seed(k, role) for k in keys], *[self.refs[k] for k in keys]
        )

    def submit_all(self, algs: dict, role: str) -> dict:
        """``{label: alg}`` -> ``{label: [refs]}`` covering every problem of ``role``."""
        keys = self.setup.heldout if role == "heldout" else self.setup.train
        bp = max(len(b) for b in self.setup.batches)
        return {
            label: [self.submit(alg, keys[i : i + bp], role) for i in range(0, len(keys), bp)]
            for label, alg in algs.items()
        }

    @staticmethod
    def collect(refs: dict) -> dict:
        """``{label: [refs]}`` -> ``{label: {problem key: curves}}`` (blocking)."""
        import ray

        return {label: {r["key"]: r for batch in ray.get(rs) for r in batch} for label, rs in refs.items()}

    def evaluate(self, algs: dict, role: str) -> dict:
        """``submit_all`` then ``collect``: every setting of ``algs`` in parallel."""
        return self.collect(self.submit_all(algs, role))


def runs_of(objective: Objective, results: dict, keys: list) -> np.ndarray:
    """Per-run objective values over ``keys`` (problem order, then replicate)."""
    return np.concatenate([objective.per_run(results[k]) for k in keys])


def per_problem(objective: Objective, results: dict, keys: list) -> np.ndarray:
    """Mean objective per problem over its replicates: ``len(keys)`` values (the unit that transfers to new
    subjects; runs of one problem share its map)."""
    return np.array([objective.per_run(results[k]).mean() for k in keys])
