"""Fig. 7 (+exp=spinal_4d) and Fig. 8 (+exp=cortical_5d) end to end at tiny scale: findings,
figures, ``python -m sweeps.report`` remaking them; and the map projections on hand-made maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuro_opt.datasets import load
from neuro_opt.space import SearchSpace
from sweeps.analyses._common import pairwise_r, pearson, project
from tests.launching import launch, run_module, without_algorithm

TINY = {
    "spinal_4d": ["n_reps=2", "n_queries=8", "dataset.n_subjects=2"],
    "cortical_5d": ["n_reps=2", "n_queries=5", "dataset.n_subjects=2", "dataset.n_repetitions=2"],
}
N_FINDINGS = {"spinal_4d": 7, "cortical_5d": 8}


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request, tmp_path_factory):
    exp = request.param
    tmp = tmp_path_factory.mktemp(exp)
    proc = launch(tmp, f"+exp={exp}", *TINY[exp], "progress=false", "cluster.num_cpus=2",
                  f"tracking.uri=sqlite:///{tmp}/mlflow.db")
    summary = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    return exp, tmp, summary


def test_findings_and_figure(tiny):
    exp, _, summary = tiny
    assert len(summary["findings"]) == N_FINDINGS[exp]
    for f in summary["findings"]:
        assert set(f) == {"finding", "published", "holds", "numbers"}
        assert f["holds"] in (True, False, None)
        assert "rule" in f["numbers"] and len(f["numbers"]) > 1
    fig = Path(summary["run_dir"]) / "figures" / f"{exp}.png"
    assert fig.stat().st_size > 50_000  # many panels, not an empty canvas
    if exp == "cortical_5d":
        assert set(summary["profiles"]) == {"duration", "frequency", "pulse_width", "spatial"}
        # GP-BO vs each benchmark, both readings of greedy search included, with the published greedy numbers
        assert {(c["a"], c["b"]) for c in summary["comparisons"]} == {
            ("gpbo", b) for b in ("extensive", "greedy", "greedy_line")
        }
        line = [f for f in summary["findings"] if "greedy search (STAR Methods line)" in f["finding"]]
        hyper = [f for f in summary["findings"] if "greedy search (companion code, hyperplane)" in f["finding"]]
        assert len(line) == len(hyper) == 2
        assert [f["published"] for f in line] == [f["published"] for f in hyper]
        c = next(c for c in summary["comparisons"] if c["b"] == "greedy_line")
        assert line[0]["numbers"]["points"] == round(c["exploration_points_final"], 2)


def test_report_remakes_figure_and_findings(tiny):
    exp, tmp, summary = tiny
    run_dir = Path(summary["run_dir"])
    fig = run_dir / "figures" / f"{exp}.png"
    fig.unlink()
    proc = run_module(tmp, "sweeps.report", f"run={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert fig.stat().st_size > 50_000
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["findings"] == summary["findings"]
    if exp == "cortical_5d":
        # a launch that overrode grid.algorithm without greedy_line (report.compare still names it):
        # the report leaves greedy_line's findings out
        no_line = without_algorithm(run_dir, tmp / "no_line", "greedy_line", config_too=False)
        proc = run_module(tmp, "sweeps.report", f"run={no_line}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        again = json.loads((no_line / "summary.json").read_text())
        assert len(again["findings"]) == 6 and not any("STAR Methods" in f["finding"] for f in again["findings"])
        assert {c["b"] for c in again["comparisons"]} == {"extensive", "greedy"}
        assert (no_line / "figures" / "cortical_5d.png").is_file()


def test_project_hand_made_map_with_a_masked_point():
    mask = np.ones((2, 3, 4), dtype=bool)
    mask[1, 2, 3] = False
    space = SearchSpace({"a": [0, 1], "b": [0, 1, 2], "c": [0, 1, 2, 3]}, mask=mask)
    a, b, c = space.index.T
    values = 100.0 * a + 10.0 * b + c  # additive: each projection is known in closed form
    ca = project(values, space, ("c", "a"))  # kept in the order asked
    assert ca.shape == (4, 2)
    expected = 100.0 * np.arange(2)[None, :] + 10.0 * 1.0 + np.arange(4)[:, None]  # mean of b over 0..2 is 1
    expected[3, 1] = 100.0 + 10.0 * 0.5 + 3  # (c=3, a=1) lost b=2: the mean over b is 0.5
    np.testing.assert_allclose(ca, expected)
    batch = project(np.stack([values, 2 * values]), space, ("b",))  # leading axes are kept
    np.testing.assert_allclose(batch[1], 2 * batch[0])
    np.testing.assert_allclose(batch[0], [np.mean(values[b == k]) for k in range(3)])
    with pytest.raises(ValueError, match="distinct dimension names"):
        project(values, space, ("a", "a"))


def test_profile_correlations_on_known_profiles():
    base = np.array([0.1, 0.5, 1.0, 0.5, 0.1])
    profiles = np.stack([base, 3 * base + 1, base[::-1], -base])
    r = pairwise_r(profiles)  # pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    np.testing.assert_allclose(r, [1, 1, -1, 1, -1, -1], atol=1e-12)
    assert np.isnan(pearson(np.ones(5), base))


def test_spinal_notch_cells_border_the_charge_cap():
    from sweeps.analyses.spinal_4d import _caps

    problem = next(iter(load("spinal4d", n_subjects=1)))
    caps = _caps(problem, problem.space)
    assert caps["notch_pulses"] == pytest.approx(10.0)  # 600 nC / (300 uA x 200 us)
    full = caps["amp"] >= 1 - 1e-9
    np.testing.assert_array_equal(full, caps["pulses"] <= 10)
    assert caps["notch"].any() and np.all(full[caps["notch"]])
    for i, j in np.argwhere(caps["notch"]):
        neighbours = [(i + di, j + dj) for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))
                      if 0 <= i + di < full.shape[0] and 0 <= j + dj < full.shape[1]]
        assert any(not full[n] for n in neighbours)
