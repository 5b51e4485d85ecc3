"""TBFM metrics: R2 over the horizon, by horizon, of the mean, state-dependent; closed-loop ROC/AUC."""

import numpy as np
import pytest

from neuro_opt.tbfm.control import demo_reference_tracking, demo_target_ranges, roc_auc
from neuro_opt.tbfm.metrics import (evoked_baseline, forecast_report, r2_beyond_evoked, r2_by_horizon, r2_horizon,
                                    r2_mean_response, r2_per_channel, state_dependent_r2)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    state = rng.standard_normal((400, 3))
    t = np.linspace(0, 1, 50)
    response = np.sin(2 * np.pi * t)[None, :, None] * (1 + state[:, None, :])  # state-dependent
    target = response + 0.3 * rng.standard_normal((400, 50, 3))
    return state, response, target


def test_r2_known_values(data):
    state, response, target = data
    assert r2_horizon(target, target) == 1.0
    mean_pred = np.broadcast_to(target.mean(axis=(0, 1), keepdims=True), target.shape)
    assert r2_horizon(mean_pred, target) == pytest.approx(0.0, abs=1e-12)
    # the noiseless response explains var(response) / var(target) on each channel
    expected = 1 - 0.09 / target.var(axis=(0, 1))
    np.testing.assert_allclose(r2_per_channel(response, target), expected, atol=0.02)
    by_h = r2_by_horizon(response, target, horizons=(10, 50, 80))
    assert sorted(by_h) == [10, 50]  # horizons beyond the forecast are skipped
    assert by_h[50] == pytest.approx(r2_horizon(response, target))


def test_mean_and_state_dependent_r2(data):
    state, response, target = data
    mean_only = np.broadcast_to(target.mean(0, keepdims=True), target.shape)
    assert r2_mean_response(mean_only, target) == pytest.approx(1.0)
    # a state-agnostic forecast tracks the mean but not the state-binned means; the true response does both
    sd_mean, sd_true = state_dependent_r2(mean_only, target, state), state_dependent_r2(response, target, state)
    assert sd_true > 0.95 and sd_mean < sd_true - 0.3, (sd_mean, sd_true)
    rep = forecast_report(response, target, np.stack([state] * 4, 1), horizons=(10, 50))
    assert set(rep) == {"r2", "r2_beyond_evoked", "r2_mean", "state_dependent_r2", "r2_h10", "r2_h50"}


def test_r2_beyond_evoked_by_hand():
    # 2 trials x 2 steps x 1 channel; the evoked response (mean over trials per step) is [2, 4]
    target = np.array([[1.0, 3.0], [3.0, 5.0]])[:, :, None]
    evoked = np.array([[2.0, 4.0], [2.0, 4.0]])[:, :, None]
    # SST around the evoked response: 1 + 1 + 1 + 1 = 4; around the grand mean 3: 4 + 0 + 0 + 4 = 8
    assert r2_beyond_evoked(target, target) == 1.0
    assert r2_beyond_evoked(evoked, target) == 0.0  # the evoked response itself explains nothing beyond itself
    assert r2_horizon(evoked, target) == 0.5  # ... but half the variance around the grand mean (SSE 4 of 8)
    first = np.array([[1.0, 3.0], [1.0, 3.0]])[:, :, None]  # trial 1 forecast for both: SSE 0 + 0 + 4 + 4 = 8
    assert r2_beyond_evoked(first, target) == -1.0 and r2_horizon(first, target) == 0.0
    # channels are scored separately, then averaged
    two = np.concatenate([target, 10 * target], axis=2)
    assert r2_beyond_evoked(np.concatenate([evoked, 10 * target], axis=2), two) == 0.5


def test_evoked_baseline_by_hand():
    test = np.array([[1.0, 3.0], [3.0, 5.0]])[:, :, None]  # evoked response [2, 4]
    same = np.array([[0.0, 4.0], [4.0, 4.0], [2.0, 4.0]])[:, :, None]  # training evoked response [2, 4] too
    assert evoked_baseline(same, test) == {"r2": 0.5, "r2_beyond_evoked": 0.0}
    shifted = np.array([[0.0, 2.0], [2.0, 4.0]])[:, :, None]  # forecast [1, 3] for both: SSE 0 + 0 + 4 + 4 = 8
    assert evoked_baseline(shifted, test) == {"r2": 0.0, "r2_beyond_evoked": -1.0}
    longer = np.concatenate([same, np.full((3, 5, 1), 9.0)], axis=1)  # a longer training horizon is cropped
    assert evoked_baseline(longer, test) == {"r2": 0.5, "r2_beyond_evoked": 0.0}
    with pytest.raises(ValueError, match="training horizon >= the test horizon"):
        evoked_baseline(same[:, :1], test)


def test_r2_beyond_evoked_on_data(data):
    state, response, target = data
    rng = np.random.default_rng(3)
    train = response + 0.3 * rng.standard_normal(response.shape)  # same process, other trials
    base = evoked_baseline(train, target)
    # the evoked-response predictor scores well on R2 over the horizon and <= 0 beyond the evoked response
    assert base["r2"] > 0.3 and -0.01 < base["r2_beyond_evoked"] <= 0.0
    # the true state-dependent response explains most of what the evoked response leaves (noise aside)
    beyond = r2_beyond_evoked(response, target)
    resid = target - target.mean(0, keepdims=True)
    np.testing.assert_allclose(beyond, np.mean(1 - 0.09 / resid.var(axis=(0, 1))), atol=0.02)
    assert 0 < beyond < r2_horizon(response, target)


def test_metric_bad_input(data):
    _, response, target = data
    with pytest.raises(ValueError, match="differs from target shape"):
        r2_horizon(response[:, :10], target)
    bad = response.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="pred contains NaN"):
        r2_horizon(bad, target)
    flat = target.copy()
    flat[:, :, 1] = 2.0
    with pytest.raises(ValueError, match=r"constant on channel\(s\) \[1\]"):
        r2_horizon(response, flat)
    with pytest.raises(ValueError, match=r"the same on every trial at each time step on channel\(s\) \[0, 1, 2\]"):
        r2_beyond_evoked(response[:1], target[:1])  # one trial: nothing varies around the evoked response
    with pytest.raises(ValueError, match="n_bins"):
        state_dependent_r2(response[:5], target[:5], np.zeros((5, 3)), n_bins=9)


def test_roc_auc():
    labels = np.array([0, 0, 1, 1, 0, 1], bool)
    assert roc_auc(labels.astype(float), labels) == 1.0
    assert roc_auc(-labels.astype(float), labels) == 0.0
    assert roc_auc(np.zeros(6), labels) == 0.5
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(np.zeros(3), np.ones(3, bool))


def test_control_demos_perfect_and_useless_forecasts():
    rng = np.random.default_rng(1)
    actual = np.cumsum(rng.standard_normal((300, 40, 4)), axis=1)
    rest = rng.standard_normal((1000, 4)) * 5
    for demo in ("ranges", "tracking"):
        aucs = []
        for forecast in (actual, rng.standard_normal(actual.shape) * actual.std()):
            r = (demo_target_ranges(forecast, actual, rest, [0, 2], 19, np.random.default_rng(2)) if demo == "ranges"
                 else demo_reference_tracking(forecast, actual, [0, 2], 20, np.random.default_rng(2)))
            assert r.n_pos + r.n_neg == 300 and np.all(np.diff(r.fpr) >= 0) and np.all(np.diff(r.tpr) >= 0)
            aucs.append(r.auc)
        # a perfect forecast controls well (demo 2's references only partly contain the trial); noise does not
        assert aucs[0] > (0.99 if demo == "ranges" else 0.62) and abs(aucs[1] - 0.5) < 0.08, (demo, aucs)
    with pytest.raises(ValueError, match="stim_channels"):
        demo_reference_tracking(actual, actual, [0, 9], 20, rng)
