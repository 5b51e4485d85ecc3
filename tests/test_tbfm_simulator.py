"""The synthetic LFP: determinism, unusable channels, real state dependence, plasticity, paired pulses."""

import numpy as np
import pytest

from neuro_opt.tbfm.data import from_session
from neuro_opt.tbfm.simulator import electrode_grid, find_unusable_channels, simulate_session


@pytest.fixture(scope="module")
def session():
    return simulate_session(n_trials=400, n_channels=20, ipi_ms=30, seed=3, return_components=True)


def _site_trough(s, trial_idx, pulse=0, lag=slice(5, 16)):
    """Min of the evoked response at the stimulated site in a window after a pulse (per trial)."""
    site = s.stim_sites[pulse]
    t = s.onsets[trial_idx] + (0 if pulse == 0 else s.ipi_ms[trial_idx])
    w = s.evoked[t[:, None] + np.arange(200)[lag][None, :], site]
    return w.min(1)


def test_deterministic_and_seed_dependent(session):
    again = simulate_session(n_trials=400, n_channels=20, ipi_ms=30, seed=3)
    np.testing.assert_array_equal(session.lfp, again.lfp)
    other = simulate_session(n_trials=400, n_channels=20, ipi_ms=30, seed=4)
    assert not np.allclose(session.lfp[:1000], other.lfp[:1000])
    assert session.lfp.shape == (int(session.onsets[-1] + 400), 20)
    assert session.lfp.dtype == np.float32 and np.isfinite(session.lfp).all()


def test_unusable_channels_flagged_and_detectable(session):
    assert session.usable.sum() == 18  # 10 % of 20 electrodes made unusable
    assert session.usable[session.stim_sites].all()
    np.testing.assert_array_equal(find_unusable_channels(session.lfp), session.usable)
    ts = from_session(session)
    assert ts.n_channels == 18 and set(ts.channels) == set(np.nonzero(session.usable)[0])


def test_response_depends_on_state(session):
    """The evoked trough at the site scales with the state at the pulse: state dependence is real."""
    n = np.arange(session.n_trials)
    trough = _site_trough(session, n)
    r = np.corrcoef(session.state[:, 0], trough)[0, 1]
    assert r < -0.8  # higher excitability -> deeper (more negative) trough
    flat = simulate_session(n_trials=400, n_channels=20, ipi_ms=30, seed=3, state_gain=0.0, state_shape=0.0,
                            drift=0.0, return_components=True)
    r0 = np.corrcoef(flat.state[:, 0], _site_trough(flat, n))[0, 1]
    assert abs(r0) < 0.2  # without state dependence only the pathway/overlap noise remains


def test_plasticity_drift_grows_the_response(session):
    early = _site_trough(session, np.arange(0, 100)) / (1 + 0.9 * session.state[:100, 0])
    late = _site_trough(session, np.arange(300, 400)) / (1 + 0.9 * session.state[300:, 0])
    assert session.plasticity[-1] == pytest.approx(1.25) and session.plasticity[0] == 1.0
    assert np.median(late) < 1.15 * np.median(early)  # troughs are negative: late ones are deeper


def test_paired_pulse_intervals_and_mixed_sessions():
    s = simulate_session(n_trials=60, n_channels=9, ipi_ms=[10, 100], seed=0)
    assert set(np.unique(s.ipi_ms)) == {10, 100}
    assert (s.gain[:, 1] != 0).all()
    with pytest.raises(ValueError, match="ipi_ms must be one of"):
        simulate_session(n_trials=10, n_channels=9, ipi_ms=20)
    sham = simulate_session(n_trials=200, n_channels=9, p_stim=0.5, seed=0)
    assert 0.3 < sham.stimulated.mean() < 0.7 and (sham.gain[~sham.stimulated] == 0).all()


def test_grids():
    assert electrode_grid(32).shape == (32, 2) and electrode_grid(32)[:, 0].max() == 7
    g96 = electrode_grid(96)
    assert g96.shape == (96, 2) and len({tuple(p) for p in g96}) == 96
    with pytest.raises(ValueError, match="n_channels"):
        electrode_grid(1)
