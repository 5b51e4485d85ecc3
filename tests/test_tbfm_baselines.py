"""Baselines: LSSM and AE-LSTM shapes, initial state, training on the same trials."""

import numpy as np
import pytest
import torch

from neuro_opt.tbfm.baselines import AELSTM, LSSM, fit_baseline
from neuro_opt.tbfm.data import from_session, stim_descriptor, time_ordered_split
from neuro_opt.tbfm.simulator import simulate_session

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split():
    s = simulate_session(n_trials=360, n_channels=8, ipi_ms=30, seed=2)
    return time_ordered_split(from_session(s, horizon_ms=60), n_train=260, n_test=100)


def test_lssm_starts_from_the_last_runway_value():
    """With A = I, B = 0 and an invertible C, the pinv initial state reproduces the last value forever."""
    model = LSSM(4, runway=5, horizon=12, latent=4)
    with torch.no_grad():
        model.A.copy_(torch.eye(4))
        model.B.zero_()
    model.set_normalizer(np.array([1.0, -1.0, 0.0, 2.0]), np.array([1.0, 2.0, 0.5, 3.0]))
    x = torch.randn(3, 5, 4, dtype=torch.float32)
    y = model(x, stim_descriptor(30, 12, 3))
    assert y.shape == (3, 12, 4)
    torch.testing.assert_close(y, x[:, -1:, :].expand(-1, 12, -1), atol=1e-4, rtol=1e-4)


def test_aelstm_shapes_and_bad_input():
    model = AELSTM(5, runway=6, horizon=15, latent=4, hidden=8, window=5)
    y = model(torch.randn(2, 6, 5, dtype=torch.float32), stim_descriptor(10, 15, 2))
    assert y.shape == (2, 15, 5)
    with pytest.raises(ValueError, match="3 channels but the model was built for 5"):
        model(torch.randn(2, 6, 3, dtype=torch.float32), stim_descriptor(10, 15, 2))


@pytest.mark.parametrize("kind", ["lssm", "ae_lstm"])
def test_baselines_learn(split, kind):
    train, val, test = split
    torch.manual_seed(0)
    if kind == "lssm":
        model = LSSM(train.n_channels, 20, 60)
        res = fit_baseline(model, train, val, lr=1e-2, max_epochs=8, patience=8)
    else:
        model = AELSTM(train.n_channels, 20, 60, hidden=16, window=60)
        res = fit_baseline(model, train, val, lr=3e-3, max_epochs=8, patience=8, batch_size=16)
    first, best = res.history[0][2], res.best_val_r2
    assert res.n_iters == 8 and best > first + 0.2, res.history  # training improved the validation R2
    assert best > 0.3
    pred = model.predict(test)
    assert pred.shape == test.target.shape and np.isfinite(pred).all()
