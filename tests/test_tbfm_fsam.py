"""FSAM: exactly one basis per stage, earlier weights keep training, earlier bases keep their shape, stopping rule."""

import pytest
import torch

from neuro_opt.tbfm.data import from_session, stim_descriptor, time_ordered_split, zscore_stats
from neuro_opt.tbfm.fsam import AdditiveTBFM, fit_fsam
from neuro_opt.tbfm.metrics import r2_horizon
from neuro_opt.tbfm.model import fit_tbfm
from neuro_opt.tbfm.simulator import simulate_session

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split():
    s = simulate_session(n_trials=500, n_channels=10, ipi_ms=30, seed=21)
    return time_ordered_split(from_session(s, horizon_ms=100), n_train=380, n_test=120)


def test_one_basis_per_stage_and_earlier_weights_not_frozen(split):
    train, val, _ = split
    torch.manual_seed(0)
    model = AdditiveTBFM(train.n_channels, 20, 100)
    model.set_normalizer(*zscore_stats(train))
    stim = torch.from_numpy(stim_descriptor(30, 100, 20))[None]
    snapshots = []
    for k in (1, 2, 3):
        net = model.add_basis()
        assert model.n_bases == k and len(model.generator.subnets) == k
        assert model.estimator.weight.shape == (k, train.n_channels, 20 * train.n_channels)
        before = [p.detach().clone() for p in model.generator.subnets[0].parameters()]
        fit_tbfm(model, train, val, max_iters=6, trainable=list(net.parameters()), set_normalizer=False)
        with torch.no_grad():
            snapshots.append((model.estimator.weight[0].clone(), model.bases(stim)[0].clone()))
        if k > 1:  # the first sub-network was not trained (only rescaled, an exact gauge change)
            after = list(model.generator.subnets[0].parameters())
            ratio = after[-1] / before[-1]  # output-layer bias
            assert torch.allclose(after[0], before[0])
            assert torch.allclose(ratio, ratio.mean().expand_as(ratio), atol=1e-4)
    w1_stage1, basis1_stage1 = snapshots[0]
    w1_stage2, basis1_stage2 = snapshots[1]
    assert (w1_stage2 - w1_stage1).abs().max() > 1e-4  # earlier weights keep training
    cos = torch.nn.functional.cosine_similarity(basis1_stage1[0], basis1_stage2[0], dim=0)
    assert cos > 0.9999  # earlier basis keeps its shape


def test_fit_fsam_curve_and_stopping(split):
    train, val, test = split
    res = fit_fsam(train, val, max_bases=5, patience=1, min_delta=1e-3, max_iters=8, test=test, seed=0)
    ks = [c["n_bases"] for c in res.curve]
    assert ks == list(range(1, len(ks) + 1))  # one basis added per stage
    vals = [c["val_r2"] for c in res.curve]
    assert res.chosen == min(k for k, v in zip(ks, vals) if v >= max(vals) - 1e-3)  # parsimonious choice
    assert res.model.n_bases == res.chosen == len(res.model.generator.subnets)
    if len(ks) < 5:  # stopped early: the last stage failed to improve by min_delta
        assert vals[-1] <= max(vals[:-1]) + 1e-3
    assert vals[1] > vals[0]  # a second basis helps on these data (two pulses)
    assert all("test_r2" in c for c in res.curve)
    # the chosen model reproduces the chosen stage's validation score
    assert r2_horizon(res.model.predict(val), val.target) == pytest.approx(vals[res.chosen - 1], abs=1e-6)
