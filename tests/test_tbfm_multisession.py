"""Multi-session TBFM: one shared basis generator, per-session estimators; fit, compilation, cell, launch."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from neuro_opt.tbfm.data import from_session, stim_descriptor, time_ordered_split
from neuro_opt.tbfm.model import TBFM, fit_tbfm
from neuro_opt.tbfm.multisession import MultiSessionTBFM, compile_session, fit_multisession
from neuro_opt.tbfm.simulator import simulate_session
from tests.launching import launch

torch.set_num_threads(1)
H = 60


@pytest.fixture(scope="module")
def splits():
    """Three sessions with intervals 10, 30, 100 ms, different seeds and different usable channels."""
    out = []
    for i, (ipi, bad) in enumerate(((10, 0.1), (30, 0.2), (100, 0.3))):
        s = simulate_session(n_trials=360, n_channels=10, ipi_ms=ipi, seed=40 + i, bad_fraction=bad)
        out.append(time_ordered_split(from_session(s, horizon_ms=H), n_train=260, n_test=100))
    return out


def test_shapes_and_one_shared_generator(splits):
    chans = [sp[0].n_channels for sp in splits]
    assert len(set(chans)) == 3  # the sessions differ in their usable channels
    torch.manual_seed(0)
    model = MultiSessionTBFM(chans, 20, H, n_bases=4, hidden=8, depth=2)
    assert model.n_sessions == 3 and model.n_channels == chans
    # every session's TBFM holds the shared generator itself, not a copy
    assert all(model.session(s).generator is model.generator for s in range(3))
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if n.startswith("heads.") and ".generator." in n]
    gen = sum(p.numel() for p in model.generator.parameters())
    est = sum(p.numel() for s in range(3) for p in model.session(s).estimator.parameters())
    assert sum(p.numel() for p in model.parameters()) == gen + est
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for s, (train, _, _) in enumerate(splits):
        runway = torch.from_numpy(np.ascontiguousarray(train.runway[:7]))
        out = model(s, runway, stim_descriptor(int(train.ipi_ms[0]), H))
        assert out.shape == (7, H, chans[s])
        assert model.predict(s, train).shape == (train.n_trials, H, chans[s])
    # one generator: changing its output layer changes every session's bases
    stims = torch.from_numpy(np.stack([stim_descriptor(i, H) for i in (10, 30, 100)]))
    before = [model.session(s).bases(stims[s : s + 1]).detach().clone() for s in range(3)]
    with torch.no_grad():
        model.generator.net[-1].bias.add_(1.0)
    assert all(not torch.equal(model.session(s).bases(stims[s : s + 1]), before[s]) for s in range(3))


def test_bad_input_messages(splits):
    model = MultiSessionTBFM([sp[0].n_channels for sp in splits], 20, H, n_bases=3)
    with pytest.raises(IndexError, match="session 3 out of range: the model has 3 sessions"):
        model.session(3)
    with pytest.raises(ValueError, match="one training and one validation set per session"):
        fit_multisession(model, [sp[0] for sp in splits[:2]], [sp[1] for sp in splits])
    swapped = [splits[1][0], splits[0][0], splits[2][0]]
    with pytest.raises(ValueError, match="channels but the model was built for"):
        fit_multisession(model, swapped, [sp[1] for sp in splits])
    s = simulate_session(n_trials=200, n_channels=10, ipi_ms=[10, 30], seed=3)
    mixed = time_ordered_split(from_session(s, horizon_ms=H), n_train=150, n_test=50)
    one = MultiSessionTBFM([mixed[0].n_channels], 20, H, n_bases=3)
    with pytest.raises(ValueError, match="session 0: the training set holds 2 stimulation descriptors"):
        fit_multisession(one, [mixed[0]], [mixed[1]])
    with pytest.raises(ValueError, match="at least one session"):
        MultiSessionTBFM([], 20, H)


def test_one_session_fits_as_the_single_session_tbfm(splits):
    """With one session the joint fit is the single-session alternating fit (same start, same forecasts)."""
    train, val, test = splits[1]
    torch.manual_seed(3)
    single = TBFM(train.n_channels, 20, H, n_bases=4, hidden=8, depth=2)
    multi = MultiSessionTBFM([train.n_channels], 20, H, n_bases=4, hidden=8, depth=2)
    multi.generator.load_state_dict(single.generator.state_dict())
    r1 = fit_tbfm(single, train, val, max_iters=6)
    r2 = fit_multisession(multi, [train], [val], max_iters=6)
    assert r1.best_iter == r2.best_iter and r1.best_val_r2 == pytest.approx(r2.best_val_r2, abs=1e-6)
    np.testing.assert_allclose(multi.predict(0, test), single.predict(test), rtol=0, atol=1e-4)


def test_joint_fit_learns_every_session_and_restores_the_best(splits):
    torch.manual_seed(1)
    model = MultiSessionTBFM([sp[0].n_channels for sp in splits], 20, H, n_bases=4, hidden=8, depth=2)
    r = fit_multisession(model, [sp[0] for sp in splits], [sp[1] for sp in splits], max_iters=8)
    from neuro_opt.tbfm.metrics import r2_horizon

    val = [r2_horizon(model.predict(s, sp[1]), sp[1].target) for s, sp in enumerate(splits)]
    assert r.best_val_r2 == pytest.approx(np.mean(val), abs=1e-6)  # the restored model is the one scored
    assert min(r2_horizon(model.predict(s, sp[2]), sp[2].target) for s, sp in enumerate(splits)) > 0.2
    # each session's weights are its own: different shapes, all trained
    assert all(float(model.session(s).penalty().detach()) > 0 for s in range(3))


def test_compiled_session_equals_eager(splits):
    torch.manual_seed(2)
    model = MultiSessionTBFM([sp[0].n_channels for sp in splits], 20, H, n_bases=4, hidden=8, depth=2)
    fit_multisession(model, [sp[0] for sp in splits], [sp[1] for sp in splits], max_iters=3)
    for s, (_, _, test) in enumerate(splits):
        comp = compile_session(model, s, ipis=(10, 30, 100))  # every interval, not only the session's own
        runway = np.ascontiguousarray(test.runway)
        for ipi in (10, 30, 100):
            with torch.no_grad():
                eager = model(s, torch.from_numpy(runway), stim_descriptor(ipi, H)).numpy()
            np.testing.assert_allclose(comp.predict(runway, ipi), eager, rtol=0, atol=1e-5)
            np.testing.assert_allclose(comp.predict_one(runway[4], ipi), eager[4], rtol=0, atol=1e-5)
        assert comp.n_channels == splits[s][0].n_channels
        assert np.abs(comp.predict(runway, 10) - comp.predict(runway, 100)).max() > 1e-3
    np.testing.assert_allclose(  # the cell's check: the session's own interval on its test set
        compile_session(model, 2, ipis=[100]).predict(np.ascontiguousarray(splits[2][2].runway), 100),
        model.predict(2, splits[2][2]),
        rtol=0,
        atol=1e-5,
    )


def test_the_seed_key_of_the_other_cells_is_unchanged_and_the_sessions_enter_the_multisession_one():
    from sweeps.grid import stable_hash
    from sweeps.kinds.tbfm import seed_key

    params = {"cell": "compare", "rep": 1, "n_channels": 32, "n_session": 3000}
    before = stable_hash({"rep": 1, "n_channels": 32, "n_session": 3000, "ipi_ms": 30, "sim": {}})  # the old rule
    assert seed_key({"seed": 0, "params": params}) == before

    def key(**p):
        return seed_key({"seed": 0, "params": {"cell": "multisession", "rep": 0, "sessions": [{"ipi_ms": 10}], **p}})

    assert key(n_train=100) == key(n_train=2000, max_seconds=5)  # every training size sees the same sessions
    assert key() != key(sessions=[{"ipi_ms": 30}]) != key(rep=1)


def _rows(gaps_small, gaps_large, err=1e-6):
    """Hand-built cell rows: per session (10, 30, 100 ms) the multi - single gap at n_train 100 and 1000."""
    rows = []
    for n, gaps in ((100, gaps_small), (1000, gaps_large)):
        for ipi, g in zip((10, 30, 100), gaps):
            for model, r2 in (("tbfm", 0.5), ("tbfm_multi", 0.5 + g)):
                rows.append({"model": model, "n_train": n, "ipi_ms": ipi, "rep": 0, "test_r2": r2,
                             "compile_max_err": err})
    return rows


@pytest.mark.parametrize("small, large, err, expect", [
    ((0.05, 0.02, 0.01), (0.01, 0.01, -0.01), 1e-6, [True, True, True, True]),
    ((-0.01, 0.0, 0.01), (0.01, -0.03, -0.01), 1e-3, [False, False, False, False]),
])
def test_multisession_findings_follow_their_rules(tmp_path, small, large, err, expect):
    from sweeps.analyses import Context, tbfm_multisession

    ctx = Context(cfg=None, table=pa.Table.from_pylist(_rows(small, large, err)), figures=tmp_path, groups=[],
                  comparisons=[], kind=None)
    findings = tbfm_multisession.analyze(ctx)["findings"]
    assert [f["holds"] for f in findings] == expect
    assert findings[0]["numbers"]["n_train"] == 1000
    assert findings[0]["numbers"]["sessions"]["30"]["gap"] == pytest.approx(large[1])
    assert findings[2]["numbers"]["mean_gap"]["100"] == pytest.approx(np.mean(small))
    assert (tmp_path / "multisession.png").stat().st_size > 0


def test_tbfm_multisession_tiny_launch(tmp_path):
    proc = launch(tmp_path, "+exp=tbfm_multisession", "++params.n_channels=6", "++params.n_session=320",
                  "++params.n_test=60", "++params.max_seconds=2", "grid.params.n_train=[40,100]",
                  "grid.params.rep=[0]", "progress=false", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    summary = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    groups = summary["groups"]
    # per session (interval) and model, at each training size
    assert {(g["params"]["params.n_train"], g["params"]["ipi_ms"], g["params"]["model"]) for g in groups} == {
        (n, ipi, m) for n in (40, 100) for ipi in (10, 30, 100) for m in ("tbfm", "tbfm_multi")}
    assert all({"test_r2", "n_usable", "compile_max_err"} <= set(g["metrics"]) for g in groups)
    findings = summary["findings"]
    assert len(findings) == 4 and all(isinstance(f["holds"], bool) for f in findings)
    assert findings[0]["published"].startswith("test R2 increased for two of the three sessions")
    assert set(findings[0]["numbers"]["sessions"]) == {"10", "30", "100"}
    assert findings[3]["holds"]  # compiled forecasts equal the eager ones
    assert summary["headline"][0].startswith(findings[0]["finding"])
    assert (Path(summary["run_dir"]) / "figures" / "multisession.png").stat().st_size > 0


def test_the_multisession_cell_refuses_a_device_it_does_not_train_on():
    from neuro_opt.tbfm.multisession_cell import run_multisession

    with pytest.raises(ValueError, match="CPU only"):
        run_multisession({"n_channels": 6, "n_session": 320, "n_test": 60, "n_train": 40, "device": "cuda"}, 0)
