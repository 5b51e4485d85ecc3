"""TBFM data: descriptors, windowing, cropping, time-ordered split, z-scoring, bad input."""

import numpy as np
import pytest

from neuro_opt.tbfm.data import crop, stim_descriptor, time_ordered_split, window_trials, zscore_stats


def _ramp(n_samples=3000, n_channels=3):
    """LFP whose value on channel c at sample t is t + 10000 c: windows are easy to check."""
    t = np.arange(n_samples, dtype=np.float64)[:, None]
    return (t + 10000.0 * np.arange(n_channels)[None, :]).astype(np.float32)


def test_stim_descriptor_clock_and_pulses():
    d = stim_descriptor(30, horizon=164, lead=20)
    assert d.shape == (164, 3) and d.dtype == np.float32
    assert d[0, 0] == 0.0 and d[-1, 0] == pytest.approx(1.0)
    assert np.all(np.diff(d[:, 0]) > 0)
    assert np.nonzero(d[:, 1])[0].tolist() == [20]
    assert np.nonzero(d[:, 2])[0].tolist() == [50]
    # a second pulse beyond the horizon leaves its column empty; sham has no pulse
    assert stim_descriptor(100, horizon=40, lead=20)[:, 2].sum() == 0
    assert stim_descriptor(0, horizon=40)[:, 1:].sum() == 0


def test_window_trials_timing_and_shapes():
    lfp = _ramp()
    onsets = np.array([500, 700, 900, 1100])
    ts = window_trials(lfp, onsets, 30, runway_ms=20, lead_ms=20, horizon_ms=164)
    assert ts.x.shape == (4, 184, 3)
    assert ts.runway.shape == (4, 20, 3) and ts.target.shape == (4, 164, 3)
    # runway ends lead + 1 samples before the pulse; the forecast starts lead samples before it
    assert ts.runway[1, -1, 0] == 700 - 20 - 1
    assert ts.target[1, 0, 0] == 700 - 20
    assert ts.target[1, 20, 2] == 700 + 20000  # pulse 1 is lead samples into the forecast
    keys, table, index = ts.descriptor_table()
    assert keys.tolist() == [30] and table.shape == (1, 164, 3) and index.tolist() == [0, 0, 0, 0]


def test_window_trials_bad_input():
    lfp = _ramp(1000)
    with pytest.raises(ValueError, match="outside the recording"):
        window_trials(lfp, [30], 30)  # runway would start before sample 0
    with pytest.raises(ValueError, match="outside the recording"):
        window_trials(lfp, [950], 30)  # horizon runs past the end
    bad = lfp.copy()
    bad[480, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        window_trials(bad, [500], 30)
    with pytest.raises(ValueError, match="samples x channels"):
        window_trials(lfp[:, 0], [500], 30)
    with pytest.raises(ValueError, match="1000 Hz"):
        window_trials(lfp, [500], 30, fs=2000)


def test_crop_rejects_runway_or_horizon_longer_than_trial():
    ts = window_trials(_ramp(), [500, 800], 30)
    short = crop(ts, runway=5, horizon=40)
    assert short.runway.shape == (2, 5, 3) and short.target.shape == (2, 40, 3)
    assert short.runway[0, -1, 0] == ts.runway[0, -1, 0]  # keeps the last runway samples
    assert short.target[0, 0, 0] == ts.target[0, 0, 0]
    with pytest.raises(ValueError, match="runway 21 is longer"):
        crop(ts, runway=21)
    with pytest.raises(ValueError, match="horizon 165 is longer"):
        crop(ts, horizon=165)


def test_time_ordered_split_is_ordered_and_disjoint():
    onsets = 500 + 200 * np.arange(40)
    ts = window_trials(_ramp(10000), onsets, 30)
    train, val, test = time_ordered_split(ts, n_train=30, n_test=8, val_fraction=0.2)
    assert (train.n_trials, val.n_trials, test.n_trials) == (24, 6, 8)
    assert train.trial_index.max() < val.trial_index.min()
    assert val.trial_index.max() < test.trial_index.min()
    assert test.trial_index.tolist() == list(range(32, 40))
    with pytest.raises(ValueError, match="n_train"):
        time_ordered_split(ts, n_train=35, n_test=8)


def test_zscore_stats_normalize_training_set():
    rng = np.random.default_rng(0)
    lfp = (rng.standard_normal((20000, 4)) * [1.0, 2.0, 5.0, 0.5] + [0.0, 3.0, -2.0, 10.0]).astype(np.float32)
    ts = window_trials(lfp, 500 + 200 * np.arange(50), 30)
    mean, std = zscore_stats(ts)
    z = (ts.x - mean) / std
    np.testing.assert_allclose(z.mean(axis=(0, 1)), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(0, 1)), 1.0, atol=1e-4)
    lfp[:, 2] = 1.5  # a flat (unusable) channel
    flat = window_trials(lfp, 500 + 200 * np.arange(50), 30)
    with pytest.raises(ValueError, match=r"channel\(s\) \[2\] are flat"):
        zscore_stats(flat)
