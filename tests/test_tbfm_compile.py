"""Compilation: the linear model's forecasts equal the uncompiled TBFM's to 1e-5."""

import numpy as np
import pytest
import torch

from neuro_opt.tbfm.compile import compile_tbfm
from neuro_opt.tbfm.data import from_session, stim_descriptor, time_ordered_split
from neuro_opt.tbfm.fsam import fit_fsam
from neuro_opt.tbfm.model import TBFM, fit_tbfm
from neuro_opt.tbfm.simulator import simulate_session

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split():
    s = simulate_session(n_trials=420, n_channels=10, ipi_ms=[10, 30, 100], seed=5)
    return time_ordered_split(from_session(s, horizon_ms=120), n_train=320, n_test=100)


def _uncompiled(model, runway, ipi):
    with torch.no_grad():
        return model(torch.from_numpy(runway), stim_descriptor(ipi, model.horizon, 20)).numpy()


def _trained(split, kind: str, seed: int, iters: int) -> TBFM:
    """A 6-basis TBFM (full rank, rank 8 or sham runway) trained jointly on the mixed intervals."""
    train, val, _ = split
    torch.manual_seed(seed)
    model = TBFM(train.n_channels, 20, 120, n_bases=6, rank=8 if kind == "rank" else None,
                 state_agnostic=kind == "sham")
    fit_tbfm(model, train, val, method="adamw", max_iters=iters)
    return model


@pytest.mark.parametrize("kind", ["full", "rank", "sham"])
def test_compiled_equals_uncompiled(split, kind):
    train, val, test = split
    model = _trained(split, kind, seed=1, iters=4)
    assert float(model.penalty().detach()) > 0 or kind == "sham"  # trained, nonzero weights
    comp = compile_tbfm(model, ipis=(10, 30, 100))
    runway = np.ascontiguousarray(test.runway)
    for ipi in (10, 30, 100):
        ref = _uncompiled(model, runway, ipi)
        out = comp.predict(runway, ipi)
        assert out.shape == ref.shape == (test.n_trials, 120, train.n_channels)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
        one = comp.predict_one(runway[3], ipi)
        np.testing.assert_allclose(one, ref[3], rtol=0, atol=1e-5)
    # different descriptors really give different forecasts (the bases were compiled per descriptor)
    assert np.abs(comp.predict(runway, 10) - comp.predict(runway, 100)).max() > 1e-3
    assert comp.A is None if kind != "full" else comp.A.shape == (6 * train.n_channels, 20 * train.n_channels)


def test_compiled_rank_limited_alternating(split):
    """The tbfm_rank<k> path: reduced-rank ridge weights (alternating training) compile exactly too."""
    train, val, test = split
    one_ipi = [t.subset(np.nonzero(t.ipi_ms == 30)[0]) for t in (train, val, test)]
    torch.manual_seed(2)
    model = TBFM(train.n_channels, 20, 120, n_bases=6, rank=8)
    fit_tbfm(model, *one_ipi[:2], method="alternating", max_iters=4)
    sv = torch.linalg.svdvals(model.estimator.matrix().detach().double())
    assert float(sv[8] / sv[0]) < 1e-5  # rank 8 up to float32 rounding
    comp = compile_tbfm(model, ipis=[30])
    assert comp.A is None and comp.U.shape == (6 * train.n_channels, 8) and comp.V.shape == (8, 20 * train.n_channels)
    runway = np.ascontiguousarray(one_ipi[2].runway)
    ref = _uncompiled(model, runway, 30)
    np.testing.assert_allclose(comp.predict(runway, 30), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(comp.predict_one(runway[0], 30), ref[0], rtol=0, atol=1e-5)


def test_compiled_fsam_model(split):
    train, val, _ = split
    one_ipi = [t.subset(np.nonzero(t.ipi_ms == 30)[0]) for t in (train, val)]
    res = fit_fsam(*one_ipi, max_bases=3, patience=3, max_iters=6, keep_all=True)
    comp = compile_tbfm(res.model, ipis=[30])
    runway = np.ascontiguousarray(one_ipi[1].runway)
    np.testing.assert_allclose(comp.predict(runway, 30), _uncompiled(res.model, runway, 30), rtol=0, atol=1e-5)


def test_compiled_bad_input(split):
    train, _, test = split
    comp = compile_tbfm(TBFM(train.n_channels, 20, 120, n_bases=3), ipis=[30])
    with pytest.raises(KeyError, match="no compiled bases for descriptor 10"):
        comp.predict(test.runway[:2], 10)
    with pytest.raises(ValueError, match="runway must be R x C or N x R x C"):
        comp.predict(test.runway[:2, :, :-1], 30)
    bad = np.array(test.runway[:2])
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        comp.predict(bad, 30)
    with pytest.raises(ValueError, match="NaN"):
        comp.predict_one(bad[0], 30)


@pytest.mark.parametrize("kind", ["full", "rank", "sham"])
def test_streaming_forecast_equals_the_whole_runway_forecast(split, kind):
    """Samples pushed one at a time give, at every sample from the R-th on, predict_one of the last R samples."""
    train, _, test = split
    comp = compile_tbfm(_trained(split, kind, seed=3, iters=3), ipis=(10, 30))
    stream = comp.stream(30)
    x = np.ascontiguousarray(test.runway[:3].reshape(-1, train.n_channels))  # 60 samples, three runways end to end
    n_out = 0
    for t in range(x.shape[0]):
        out = stream.push(x[t])
        if t < 19:
            assert out is None  # no forecast before a whole runway
            continue
        if t % 2:
            stream.advance()  # the caller's off-path call; push does it itself otherwise
        ref = comp.predict_one(x[t - 19:t + 1], 30)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
        n_out += 1
    assert n_out == x.shape[0] - 19
    if kind != "sham":  # the forecast depends on the runway: a changed early sample changes it
        other = comp.stream(30)
        y = x[:20].copy()
        y[0] += 1.0
        outs = [other.push(s) for s in y]
        assert np.abs(outs[-1] - comp.predict_one(x[:20], 30)).max() > 1e-4
    with pytest.raises(ValueError, match="one value per channel"):
        stream.push(x[0, :-1])
    bad = x[0].copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        stream.push(bad)
    with pytest.raises(KeyError, match="no compiled bases for descriptor 100"):
        comp.stream(100)
