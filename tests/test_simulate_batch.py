"""Replicates of several problems as one engine batch: the same results as running each apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuro_opt.algorithms.blocks import BlockGenerator
from neuro_opt.datasets import load
from neuro_opt.simulate import Block, simulate, simulate_batch
from tests.launching import launch, results

TRACE = ("rep", "query", "point", "response", "best", "exploration", "exploitation")


def _blocks(ds, keys, reps, noises, tag):
    rows = enumerate(zip(keys, reps, noises))
    return [Block(ds[k], n, np.random.SeedSequence([tag, i]), nz) for i, (k, n, nz) in rows]


def _apart(blk, i, tag, algorithm, **kw):
    return simulate(blk.problem, algorithm, blk.n_reps, seed=np.random.SeedSequence([tag, i]), noise=blk.noise, **kw)


@pytest.mark.parametrize(
    "dataset,algorithm,mode,n_queries",
    [
        ("synthetic_rat", "gpbo", "repetition_valid", 32),
        ("synthetic_rat", "gpbo_fixed_rho", "gaussian", 20),
        ("synthetic_nhp", "gpbo", "gaussian", 60),
        ("synthetic_rat", "greedy", "gaussian", 20),  # draws per replicate: run one block after another
        ("synthetic_rat", "extensive", "gaussian", 20),
    ],
)
def test_a_batch_of_problems_gives_each_block_its_results_apart(dataset, algorithm, mode, n_queries):
    ds = load(dataset)
    keys = ds.keys()[:4]
    blocks = _blocks(ds, keys, [6, 2, 9, 4], [0.0, 0.1, 0.3, 0.6], tag=11)
    batched = simulate_batch(blocks, algorithm, n_queries=n_queries, response_mode=mode, record_map=True)
    assert len(batched) == len(blocks)
    for i, (blk, got) in enumerate(zip(blocks, batched)):
        want = _apart(blk, i, 11, algorithm, n_queries=n_queries, response_mode=mode, record_map=True)
        assert got.num_rows == blk.n_reps * n_queries
        for col in TRACE:  # every decision and every metric: identical
            assert got[col].equals(want[col]), (i, col)
        if want["map_r2"].null_count < want.num_rows:  # the model's map: equal to rounding (padding differs)
            np.testing.assert_allclose(got["map_r2"].to_numpy(), want["map_r2"].to_numpy(), rtol=0, atol=1e-9)
            g = [np.array(v) for v in got["posterior"].to_pylist() if v is not None]
            w = [np.array(v) for v in want["posterior"].to_pylist() if v is not None]
            np.testing.assert_allclose(np.stack(g), np.stack(w), rtol=0, atol=1e-5)  # float32 maps


def test_the_batch_differs_from_a_batch_with_other_seeds():
    ds = load("synthetic_rat")
    keys = ds.keys()[:2]
    a = simulate_batch(_blocks(ds, keys, [4, 4], [0.1, 0.1], tag=1), "gpbo", n_queries=12)
    b = simulate_batch(_blocks(ds, keys, [4, 4], [0.1, 0.1], tag=2), "gpbo", n_queries=12)
    assert not a[0]["point"].equals(b[0]["point"]) and not a[1]["point"].equals(b[1]["point"])


def test_bad_batches_are_refused_with_what_was_wrong():
    rat, nhp = load("synthetic_rat"), load("synthetic_nhp")
    with pytest.raises(ValueError, match="another search space than block 0"):
        simulate_batch([Block(rat[rat.keys()[0]], 2), Block(nhp[nhp.keys()[0]], 2)], "gpbo", n_queries=4)
    with pytest.raises(ValueError, match="at least one block"):
        simulate_batch([], "gpbo")
    with pytest.raises(ValueError, match="block 1: n_reps must be an integer >= 1"):
        simulate_batch([Block(rat[rat.keys()[0]], 2), Block(rat[rat.keys()[1]], 0)], "gpbo", n_queries=4)
    with pytest.raises(ValueError, match="block 0: noise level must be >= 0"):
        simulate_batch([Block(rat[rat.keys()[0]], 2, noise=float("nan"))], "gpbo", n_queries=4)


def test_block_generator_splits_only_batch_shaped_draws():
    gens = [np.random.default_rng(1), np.random.default_rng(2)]
    blocks = BlockGenerator(gens, [2, 3])
    x = blocks.integers(0, 100, 5)
    assert np.array_equal(x[:2], np.random.default_rng(1).integers(0, 100, 2))
    assert np.array_equal(x[2:], np.random.default_rng(2).integers(0, 100, 3))
    r = blocks.random((5, 4))
    assert r.shape == (5, 4)
    assert np.array_equal(r[2:], (lambda g: (g.integers(0, 100, 3), g.random((3, 4)))[1])(np.random.default_rng(2)))
    with pytest.raises(TypeError, match="first axis is the batch"):
        blocks.integers(4)
    with pytest.raises(ValueError, match="one generator per block"):
        BlockGenerator(gens, [2])


def test_a_sweep_batched_across_cells_equals_one_task_per_cell(tmp_path):
    tiny = [
        "+exp=noise_sweep",
        "n_reps=3",
        "n_queries=10",
        "grid.noise=[0.0,0.5]",
        "dataset.n_subjects=1",
        "dataset.n_muscles=2",
        "grid.algorithm=[gpbo]",
        "progress=false",
        f"tracking.uri=sqlite:///{tmp_path}/m.db",
    ]
    runs = {}
    for reps in (0, 6):  # one task per cell; two tasks of two cells (3 replicates each)
        proc = launch(tmp_path, *tiny, f"cluster.batch_reps={reps}")
        runs[reps] = results(Path(json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())["run_dir"]))
    assert runs[0].num_rows == 4 * 3 * 10
    assert runs[6].equals(runs[0])


def test_a_negative_batch_size_is_refused_before_any_work(tmp_path):
    proc = launch(tmp_path, "+exp=noise_sweep", "cluster.batch_reps=-1", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cluster.batch_reps=-1: expected an integer >= 0" in proc.stderr.strip().splitlines()[-1]


def test_the_runner_packs_gpbo_cells_of_one_space_and_runs_the_rest_alone():
    from sweeps import kinds
    from sweeps.runner import CellData, batches, build_cells
    from tests.test_config import composed

    overrides = [
        "+exp=noise_sweep",
        "n_reps=3",
        "grid.noise=[0.0,0.5]",
        "dataset.n_subjects=1",
        "dataset.n_muscles=3",
        "grid.algorithm=[gpbo,extensive]",
    ]
    experiment, cells = build_cells(composed(*overrides), overrides)
    assert experiment is kinds.get("optimization") and len(cells) == 12
    for reps, sizes in ((0, [1] * 12), (9, [3, 3] + [1] * 6), (10, [3, 3] + [1] * 6), (256, [6] + [1] * 6)):
        groups = batches(experiment, cells, reps, CellData(experiment))
        assert sorted((len(g) for g in groups), reverse=True) == sizes, reps
        for g in groups:  # a task holds one algorithm's cells only, in grid order
            assert len({c.payload["algorithm"]["name"] for c in g}) == 1
            assert len(g) == 1 or g[0].payload["algorithm"]["name"] == "gpbo"
