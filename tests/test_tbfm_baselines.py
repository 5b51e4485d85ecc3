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


def test_aelstm_windows_have_per_trial_starts():
    """Each trial is cropped at its own random start; the window holds the trial's frames and inputs there."""
    R, H, W, C = 4, 30, 6, 3
    model = AELSTM(C, runway=R, horizon=H, latent=3, hidden=4, window=W)
    model.set_normalizer(np.zeros(C), np.full(C, 2.0))
    n = 64
    runway = torch.randn(n, R, C)
    target = torch.randn(n, H, C)
    stim = torch.from_numpy(stim_descriptor(10, H, 5))[None]
    win, u = model.windows(runway, target, stim, torch.zeros(n, dtype=torch.long), torch.Generator().manual_seed(0))
    assert win.shape == (n, R + W, C) and u.shape == (n, R + W, 3)
    full = torch.cat([runway, target], 1) / 2.0
    u_full = torch.cat([torch.zeros(R, 3, dtype=stim.dtype), stim[0]])
    starts = []
    for i in range(n):
        s = [k for k in range(H - W + 1) if torch.equal(full[i, k:k + R + W], win[i])]
        assert len(s) == 1
        starts.append(s[0])
        torch.testing.assert_close(u[i], u_full[s[0]:s[0] + R + W])
    assert len(set(starts)) > 10  # not one start shared by the minibatch


def test_aelstm_loss_terms():
    """Tripartite loss = dynamics + ae_weight * autoencoder + nn_weight * centre, each as documented."""
    R, H, W, C = 4, 20, 5, 3
    model = AELSTM(C, runway=R, horizon=H, latent=2, hidden=4, window=W, nn_weight=0.3, ae_weight=0.7)
    runway, target = torch.randn(8, R, C, dtype=torch.float32), torch.randn(8, H, C, dtype=torch.float32)
    stim, idx = torch.from_numpy(stim_descriptor(10, H, 5))[None], torch.zeros(8, dtype=torch.long)
    win, u = model.windows(runway, target, stim, idx, torch.Generator().manual_seed(1))
    terms = model.loss_terms(win, u)
    lat = model.enc(win)
    torch.testing.assert_close(terms["autoencoder"], ((model.dec(lat) - win) ** 2).mean())
    torch.testing.assert_close(terms["centre"], lat.mean(dim=(0, 1)).pow(2).mean())
    # the head starts at zero: the rollout holds the last runway latent (persistence) over the window
    hs, y = model._rollout(win[:, :R], u[:, :R], u[:, R:])
    torch.testing.assert_close(hs, lat[:, R - 1:R].expand(-1, W, -1))
    dyn = ((y - win[:, R:]) ** 2).mean() + ((hs - lat[:, R:]) ** 2).mean()
    torch.testing.assert_close(terms["dynamics"], dyn)
    total = model.loss(runway, target, stim, idx, torch.Generator().manual_seed(1))
    torch.testing.assert_close(total, terms["dynamics"] + 0.7 * terms["autoencoder"] + 0.3 * terms["centre"])
    with torch.no_grad():  # a zero encoder: latents at 0, no centring penalty
        model.enc[-1].weight.zero_()
        model.enc[-1].bias.zero_()
    assert float(model.loss_terms(win, u)["centre"]) == 0.0


def test_fit_baseline_budget_is_cpu_time(split):
    """max_seconds counts CPU seconds: a tiny budget stops after the first epoch, and the CPU time is reported."""
    train, val, _ = split
    model = LSSM(train.n_channels, 20, 60)
    res = fit_baseline(model, train, val, max_epochs=50, patience=50, max_seconds=1e-6)
    assert res.n_iters == 1 and res.train_cpu_s > 0 and res.train_s > 0
