"""A design's work split into one shard per worker, measured on the whole machine at once.

A worker is a Ray actor holding ``cluster.cpus_per_cell`` CPUs (1 by default) with as many torch
threads, one per shard of the machine's Ray CPUs; it keeps each design's problems, so a
measurement sends it only indices and seeds. A measurement starts one shard on every worker
together and lasts from the first shard's start to the last one's finish (each shard stamps
both with the machine's clock), so runs per second is the whole machine's figure. A design of
short runs sets ``passes``: each measurement then runs the design that many times over, one pass
after another with new seeds and the design's own batch size, so that it lasts long enough to be
timed beside other work.

Engines (what a shard runs):

* ``batched``: :func:`neuro_opt.simulate.simulate_batch` over the shard's blocks (one engine
  batch for all of its problems' replicates), once per pass;
* ``apart``: the earlier path, one :func:`neuro_opt.simulate.simulate` batch per block, the same
  blocks and seeds, with the baseline's hyperparameters (without overrides, each block's runs are
  the ones ``batched`` gives, run for run);
* ``botorch_reference``: :func:`neuro_opt.reference_loop.botorch_reference_run`, one run at a
  time, ``reference_runs`` runs per shard.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

ENGINES = ("batched", "apart", "botorch_reference")
RUN_COLUMNS = ("problem", "chunk", "rep", "exploration", "exploitation", "best", "point")


@dataclass(frozen=True)
class Design:
    """One design of the benchmark: ``n_reps`` runs of each of its problems (one search space)."""

    name: str
    problems: list
    n_reps: int
    n_queries: int
    reference_runs: int  # per shard and measurement
    passes: int = 1  # times a batched or apart measurement runs the design, one pass after another

    @property
    def n_problems(self) -> int:
        return len(self.problems)


def shard_units(n_problems: int, n_reps: int, n_shards: int) -> list[list[tuple[int, int, int]]]:
    """The blocks ``(problem index, chunk, replicates)`` of each of ``n_shards`` shards.

    With at least as many problems as shards, problems are dealt out whole, in order, as evenly as
    they go; with fewer, each problem's replicates are cut into equal chunks first so that every
    shard has work (then which runs a seed gives depends on the number of shards).
    """
    chunks = 1 if n_problems >= n_shards else -(-n_shards // n_problems)
    units = []
    for p in range(n_problems):
        for c, reps in enumerate(np.array_split(np.arange(n_reps), chunks)):
            if len(reps):
                units.append((p, c, len(reps)))
    return [[units[i] for i in idx] for idx in np.array_split(np.arange(len(units)), n_shards)]


def entropy(seed: int, *parts: Any) -> list[int]:
    """Seed entropy from the global seed and a measurement's coordinates (names hashed stably)."""
    from sweeps.grid import stable_hash

    return [int(seed)] + [p if isinstance(p, int) else int(stable_hash(str(p))[:8], 16) for p in parts]


class ShardWorker:
    """One worker of the benchmark (a Ray actor: :func:`start_workers`)."""

    def __init__(self, threads: int):
        import torch

        from neuro_opt.gp.linalg import flush_denormals_for_process

        flush_denormals_for_process()  # as the runner's tasks do, before torch's thread pool starts
        torch.set_num_threads(int(threads))
        self.info = {"threads": torch.get_num_threads(), "nice": os.getpriority(os.PRIO_PROCESS, 0)}
        self.designs: dict[str, list] = {}

    def keep(self, design: str, problems: list) -> dict:
        """Hold a design's problems; returns the worker's torch threads and niceness."""
        self.designs[design] = problems
        return self.info

    def warm(self, design: str, n_queries: int, alg: dict, ref_args: dict, sample: dict) -> float:
        """Untimed: a short run of every engine, so imports and first calls are paid before timing."""
        from neuro_opt.reference_loop import botorch_reference_run
        from neuro_opt.simulate import Block, simulate_batch

        t0 = time.perf_counter()
        problems = self.designs[design][:2]
        q = min(3, n_queries)
        blocks = [Block(p, 2, i, sample["noise"]) for i, p in enumerate(problems)]
        simulate_batch(blocks, "gpbo", q, response_mode=sample["response_mode"], hyperparameters=alg)
        simulate_batch(blocks[:1], "gpbo", q, response_mode=sample["response_mode"], hyperparameters=alg)
        botorch_reference_run(problems[0], min(2, n_queries), seed=0, **ref_args, **sample)
        return time.perf_counter() - t0

    def run(
        self, design: str, engine: str, units: list, n_queries: int, alg: dict, ref_args: dict, sample: dict, passes=1
    ):
        """Time one shard: ``units`` are ``(problem index, chunk, replicates, seed entropy)`` blocks,
        ``passes`` equal passes of them one after another (batched: one engine batch per pass), or
        for the reference ``(problem index, run, 1, seed entropy)`` single runs.

        Returns the shard's start and finish (epoch seconds), its CPU seconds and, per run, the
        last query's values (``RUN_COLUMNS``)."""
        from neuro_opt.reference_loop import botorch_reference_run
        from neuro_opt.simulate import Block, simulate, simulate_batch

        problems = self.designs[design]
        noise, mode = sample["noise"], sample["response_mode"]
        blocks = [Block(problems[p], reps, np.random.SeedSequence(ent), noise) for p, _, reps, ent in units]
        t0, c0 = time.time(), time.process_time()
        threads = self.info["threads"]  # the worker's CPUs (simulate's own default is one thread)
        if engine == "batched":
            per = len(blocks) // passes
            tables = [
                t
                for k in range(passes)
                for t in simulate_batch(
                    blocks[k * per : (k + 1) * per],
                    "gpbo",
                    n_queries,
                    response_mode=mode,
                    hyperparameters=alg,
                    threads=threads,
                )
            ]
        elif engine == "apart":
            tables = [
                simulate(
                    b.problem, "gpbo", b.n_reps, n_queries, b.seed, noise, mode, hyperparameters=alg, threads=threads
                )
                for b in blocks
            ]
        elif engine == "botorch_reference":
            tables = [botorch_reference_run(b.problem, n_queries, seed=b.seed, **ref_args, **sample) for b in blocks]
        else:
            raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
        t1, c1 = time.time(), time.process_time()
        rows: dict[str, list] = {k: [] for k in RUN_COLUMNS}
        for (p, chunk, reps, _), table in zip(units, tables):
            last = np.arange(reps) * n_queries + n_queries - 1  # rows are rep-major
            rows["problem"] += [problems[p].key] * reps
            rows["chunk"] += [chunk] * reps
            rows["rep"] += list(range(reps))
            for k in ("exploration", "exploitation", "best", "point"):
                rows[k] += table[k].to_numpy()[last].tolist()
        return {"t0": t0, "t1": t1, "cpu_s": c1 - c0, "rows": rows}


def start_workers(n: int, cpus: float, threads: int, designs: list[Design], timeout_s: float = 600):
    """``n`` workers, each holding every design's problems; waits until all are up.
    Returns the workers and each one's torch threads and niceness."""
    import ray

    actor = ray.remote(num_cpus=cpus, max_restarts=0)(ShardWorker)
    workers = [actor.remote(threads) for _ in range(n)]
    refs = {d.name: ray.put(d.problems) for d in designs}
    ready = [w.keep.remote(d.name, refs[d.name]) for w in workers for d in designs]
    _, pending = ray.wait(ready, num_returns=len(ready), timeout=timeout_s)
    if pending:
        stop_workers(workers)
        raise RuntimeError(
            f"{n} benchmark workers of {cpus:g} CPU(s) were not all scheduled within {timeout_s:.0f} s; "
            f"is another job holding this Ray's CPUs?"
        )
    info = ray.get(ready)[:: len(designs)]
    return workers, info


def stop_workers(workers: list) -> None:
    import ray

    for w in workers:
        ray.kill(w)


def warm(workers: list, design: Design, alg: dict, ref_args: dict, sample: dict) -> None:
    import ray

    ray.get([w.warm.remote(design.name, design.n_queries, alg, ref_args, sample) for w in workers])


def measure(workers: list, design: Design, engine: str, seed: int, where: tuple, alg, ref_args, sample) -> dict:
    """One measurement: the design's work for ``engine`` on every worker at once.

    ``where`` (round, condition) enters the seeds, so every measurement runs its own runs and
    ``batched`` and ``apart`` of one measurement run the same ones.

    Returns ``n_runs``, ``wall_s`` (first shard start to last shard finish), ``driver_wall_s``
    (submission to the last result, Ray's overhead included), ``work_cpu_s``, ``t_start`` and
    the runs' ``rows`` (``RUN_COLUMNS`` plus ``shard``).
    """
    import ray

    n = len(workers)
    if engine == "botorch_reference":
        shards = [
            [((s * design.reference_runs + r) % design.n_problems, r, 1) for r in range(design.reference_runs)]
            for s in range(n)
        ]
        ents = [[entropy(seed, design.name, *where, engine, s, r) for _, r, _ in u] for s, u in enumerate(shards)]
    else:
        base = shard_units(design.n_problems, design.n_reps, n)
        n_chunks = 1 + max(c for units in base for _, c, _ in units)
        # pass k's blocks are chunks k * n_chunks + c: their own seeds, and their own runs in the comparison
        shards = [[(p, k * n_chunks + c, r) for k in range(design.passes) for p, c, r in units] for units in base]
        ents = [[entropy(seed, design.name, *where, p, c) for p, c, _ in units] for units in shards]
    specs = [[(*u, e) for u, e in zip(units, es)] for units, es in zip(shards, ents)]
    t = time.perf_counter()
    refs = [
        w.run.remote(design.name, engine, units, design.n_queries, alg, ref_args, sample, design.passes)
        for w, units in zip(workers, specs)
        if units
    ]
    outs = ray.get(refs)
    driver_wall = time.perf_counter() - t
    rows: dict[str, list] = {"shard": []}
    for s, o in enumerate(outs):
        rows["shard"] += [s] * len(o["rows"]["rep"])
        for k, v in o["rows"].items():
            rows.setdefault(k, []).extend(v)
    t0, t1 = min(o["t0"] for o in outs), max(o["t1"] for o in outs)
    return {
        "n_runs": len(rows["rep"]),
        "n_shards": len(outs),
        "wall_s": t1 - t0,
        "driver_wall_s": driver_wall,
        "work_cpu_s": float(sum(o["cpu_s"] for o in outs)),
        "t_start": t0,
        "rows": rows,
    }
