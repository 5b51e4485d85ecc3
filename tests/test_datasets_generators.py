"""Generators: determinism and each structural claim of the published scenario."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from neuro_opt.datasets import NonStationaryProblem, accepted_keys, available, load, sample_responses
from neuro_opt.datasets.frequency import STAR_FACTORS, STAR_FREQUENCIES_HZ
from neuro_opt.datasets.gamma import PRIOR_QUALITIES, gamma_profile, marginal_reference
from neuro_opt.datasets.spinal import SPINAL_MUSCLES

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"

SMALL = {
    "synthetic_nhp": {"n_subjects": 2, "n_muscles": 2},
    "synthetic_rat": {"n_subjects": 1, "n_muscles": 2},
    "synthetic_spinal": {"n_subjects": 1, "n_muscles": 4},
    "gamma_smoothness": {"n_subjects": 2},
    "prior_quality": {"n_subjects": 1, "prior_dims": 3, "prior_r": 0.5},
    "spinal4d": {"n_subjects": 2},
    "synthetic_cortical5d": {"n_subjects": 1, "n_repetitions": 2},
    "frequency_augmented": {"base_kwargs": {"n_subjects": 1, "n_muscles": 1}},
    "nonstationary": {"n_subjects": 2, "scenario": "drift"},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_generators_are_deterministic_by_seed(name):
    seed_key = "seed" if name != "frequency_augmented" else None
    a = load(name, **SMALL[name], **({seed_key: 3} if seed_key else {}))
    b = load(name, **SMALL[name], **({seed_key: 3} if seed_key else {}))
    assert a.keys() == b.keys() and len(a) >= 1
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.truth, pb.truth)
        if pa.repetitions is not None:
            np.testing.assert_array_equal(pa.repetitions, pb.repetitions)
        if pa.prior is not None:
            np.testing.assert_array_equal(pa.prior, pb.prior)
    if seed_key:
        c = load(name, **SMALL[name], seed=4)
        assert any(not np.array_equal(pa.truth, pc.truth) for pa, pc in zip(a, c))


def test_every_config_names_a_registered_dataset_with_accepted_keys():
    files = sorted(CONF.glob("*.yaml"))
    assert len(files) >= 16
    for f in files:
        cfg = OmegaConf.to_container(OmegaConf.load(f))
        name = cfg.pop("name")
        assert name in available(), f
        keys = accepted_keys(name)
        assert keys is not None and set(cfg) <= set(keys), (f, set(cfg) - set(keys or []))


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['n_muscle'\].*n_muscles"):
        load("synthetic_spinal", n_muscle=3)
    with pytest.raises(ValueError, match="unknown dataset 'spinal9'"):
        load("spinal9")


# ----------------------------------------------------------------------------- cortical


def test_cortical_arrays_states_dead_columns_outliers_and_artefacts():
    nhp = load("synthetic_nhp", n_subjects=2, n_muscles=3, seed=1)
    rat = load("synthetic_rat", n_subjects=1, n_muscles=2, seed=1)
    p = nhp["nhp1/FCR"]
    assert p.space.n_points == 96 and p.space.grid_shape == (10, 10)
    assert not p.space.mask[0, 0] and not p.space.mask[9, 9] and not p.space.mask[0, 9] and not p.space.mask[9, 0]
    assert rat["rat1/TA"].space.n_points == 32 and rat["rat1/TA"].space.grid_shape == (8, 4)
    assert [nhp[f"nhp{s}/FCR"].meta["state"] for s in (1, 2)] == ["sedated", "awake"]
    assert rat["rat1/TA"].meta["state"] == "awake"

    def cv(problem):
        r = np.where(problem.valid & ~problem.meta["artefact"], problem.repetitions, np.nan)
        return np.nanmedian(np.nanstd(r, axis=1) / np.nanmean(r, axis=1))

    sedated, awake = nhp.subjects
    cv_awake = np.mean([cv(q) for q in nhp if q.subject == awake])
    assert cv_awake > 1.3 * np.mean([cv(q) for q in nhp if q.subject == sedated])
    # dead columns: awake NHP, 2 adjacent x columns at 3 % in every muscle (same seed without them to compare)
    alive = load("synthetic_nhp", n_subjects=2, n_muscles=3, seed=1, n_dead_columns=0)
    for q in nhp:
        dead = q.meta["dead_columns"]
        if q.subject == sedated:
            assert dead == []
            continue
        assert len(dead) == 2 and dead[1] == dead[0] + 1
        in_dead = np.isin(q.space.index[:, 0], dead)
        ref = alive[q.key]
        clean = q.valid & ~q.meta["artefact"]
        np.testing.assert_allclose(q.repetitions[in_dead][clean[in_dead]],
                                   0.03 * ref.repetitions[in_dead][clean[in_dead]], rtol=1e-12)
        np.testing.assert_array_equal(q.repetitions[~in_dead], ref.repetitions[~in_dead])
    # outliers flagged invalid are large; artefacts are large and flagged valid
    for q in nhp:
        reps, valid, art = q.repetitions, q.valid, q.meta["artefact"]
        clean = valid & ~art
        assert (~valid).any() and art.any() and np.all(valid[art])
        ratio_out = np.nanmean(np.where(~valid, reps, np.nan) / q.truth[:, None])
        ratio_art = np.nanmean(np.where(art, reps, np.nan) / q.truth[:, None])
        ratio_clean = np.nanmean(np.where(clean, reps, np.nan) / q.truth[:, None])
        assert ratio_out > 1.5 * ratio_clean and ratio_art > 1.5 * ratio_clean
        np.testing.assert_allclose(q.truth, np.nanmean(np.where(valid, reps, np.nan), axis=1))


# ----------------------------------------------------------------------------- spinal


def test_spinal_layout_lateralization_and_lost_electrode():
    ds = load("synthetic_spinal", n_subjects=2, seed=2)
    assert len(ds) == 20 and [p.muscle for p in ds][:10] == list(SPINAL_MUSCLES)
    for p in ds:
        sp = p.space
        assert sp.n_points == 60 and sp.grid_shape == (8, 8)
        assert not any(sp.mask[i, j] for i in (0, 7) for j in (0, 7))
        counts = np.isfinite(p.repetitions).sum(axis=1)
        assert counts.min() >= 10 and counts.max() <= 15
        right = sp.index[:, 0] >= 4
        diff = p.truth[right].mean() - p.truth[~right].mean()
        assert np.sign(diff) == (1 if p.meta["side"] == "right" else -1)
        assert abs(diff) > 0.3 * p.truth.mean()
        # the lost electrode responds at ~5 % from half of its repetitions on
        lp = p.meta["lost_point"]
        k = p.meta["lost_from_rep"][lp]
        r = np.where(p.valid[lp], p.repetitions[lp], np.nan)
        assert np.nanmean(r[k:]) < 0.2 * np.nanmean(r[:k])
        np.testing.assert_allclose(p.truth, np.nanmean(np.where(p.valid, p.repetitions, np.nan), axis=1))
    # excitability drift: the session gain varies over repetitions
    gain = np.asarray(ds["spinal1/R_Bi"].meta["gain"])
    assert gain.max() - gain.min() > 0.2


# ----------------------------------------------------------------------------- gamma (Fig. S5)


def test_gamma_profile_calibration_and_sizes():
    for beta in (0.01, 0.5, 3.95):
        prof = gamma_profile(7, beta, peak=2)
        assert prof[2] == 1.0 and np.sort(prof)[-2] == pytest.approx(np.exp(-beta))
    assert np.sort(gamma_profile(7, 0.01, 3))[-2] >= 0.99
    assert np.sort(gamma_profile(7, 3.95, 3))[-2] < 0.02
    alpha3 = gamma_profile(7, 1.0, peak=4, alpha=3.0)
    assert alpha3.argmax() == 4 and np.all(np.diff(alpha3[4:]) < 0) and np.all(np.diff(alpha3[:5]) > 0)

    ds = load("gamma_smoothness", n_subjects=3, seed=5)
    for p in ds:
        assert p.space.n_points == 2401 and p.space.grid_shape == (7, 7, 7, 7)
        assert p.truth.max() == 1.0
        b = np.asarray(p.meta["betas"])
        assert b.shape == (4,) and np.all((b >= 0.01) & (b <= 3.95))
        peak = tuple(p.meta["peaks"])
        assert tuple(p.space.index[p.truth.argmax()]) == peak


def test_smoothness_is_ordered_by_beta():
    def similarity(g, d):
        """Mean ratio (smaller / larger) of the responses of neighbours along axis d: 1 = flat."""
        a, b = np.moveaxis(g, d, 0)[1:], np.moveaxis(g, d, 0)[:-1]
        return float(np.mean(np.minimum(a, b) / np.maximum(a, b)))

    betas = [0.01, 0.3, 1.0, 2.0, 3.95]
    smooth, second = [], []
    for b in betas:
        p = next(iter(load("gamma_smoothness", n_subjects=1, betas=[b] * 4, seed=1)))
        g = p.space.to_grid(p.truth)
        smooth.append(np.mean([similarity(g, d) for d in range(4)]))
        second.append(np.sort(p.truth)[-2])
    assert all(a > b for a, b in zip(smooth, smooth[1:]))
    assert all(a > b for a, b in zip(second, second[1:]))
    assert second[0] >= 0.99 and second[-1] < 0.02
    # per dimension too: the smaller its beta, the more alike neighbours along it
    p = next(iter(load("gamma_smoothness", n_subjects=1, betas=[0.05, 3.0, 0.5, 1.5], seed=2)))
    g = p.space.to_grid(p.truth)
    along = [similarity(g, d) for d in range(4)]
    assert np.argsort(along)[::-1].tolist() == [0, 2, 3, 1]


# ----------------------------------------------------------------------------- prior quality (Fig. S7)


@pytest.mark.parametrize("r", PRIOR_QUALITIES)
def test_prior_correlation_matches_requested_quality(r):
    full = next(iter(load("prior_quality", n_subjects=1, prior_dims=6, prior_r=r, seed=7)))
    assert full.space.n_points == 32 * 7**4 and full.space.names == ("x", "y", "g1", "g2", "g3", "g4")
    assert full.prior.shape == full.truth.shape and 0 <= full.prior.min() and full.prior.max() <= 1
    assert abs(np.corrcoef(full.prior, full.truth)[0, 1] - r) <= 0.05
    part = next(iter(load("prior_quality", n_subjects=1, prior_dims=2, prior_r=r, seed=7)))
    dims = [part.space.names.index(n) for n in part.meta["prior_dims"]]
    assert len(dims) == 2
    ref = marginal_reference(part.space.to_grid(part.truth), dims)[tuple(part.space.index.T)]
    assert abs(np.corrcoef(part.prior, ref)[0, 1] - r) <= 0.05
    # the prior only varies along the informed dimensions
    pg = part.space.to_grid(part.prior)
    other = [d for d in range(6) if d not in dims]
    assert all(np.all(np.ptp(pg, axis=d) == 0) for d in other)
    assert all(np.ptp(pg, axis=d).max() > 0 for d in dims)


def test_prior_quantity_zero_and_named_dims():
    none = next(iter(load("prior_quality", n_subjects=1, prior_dims=0, seed=1)))
    assert none.prior is None and none.meta["prior_dims"] == []
    named = next(iter(load("prior_quality", n_subjects=1, prior_dims=["x", "g2"], prior_r=0.66, seed=1)))
    assert named.meta["prior_dims"] == ["x", "g2"]


# ----------------------------------------------------------------------------- spinal locomotion (Fig. 7)


def test_spinal4d_space_and_caps_never_exceeded():
    ds = load("spinal4d", n_subjects=4, seed=0, amplitude_cap_ua=300.0, charge_cap_nc=600.0)
    for p in ds:
        sp = p.space
        assert sp.n_points == 672 and sp.grid_shape == (2, 6, 8, 7)
        assert sp.dims[0].values == ("lumbar", "sacral")
        amp, charge, n = (np.asarray(p.meta[k]) for k in ("amplitude_ua", "charge_nc", "n_pulses"))
        assert np.all(amp <= 300.0 + 1e-9) and np.all(charge <= 600.0 + 1e-9)
        assert np.isclose(amp.max(), 300.0) and np.isclose(charge.max(), 600.0)  # both caps bind somewhere
        assert amp.min() < 100.0  # long, fast trains lose amplitude
        np.testing.assert_allclose(charge, amp * 200.0 * n / 1000.0)
        lumbar = sp.index[:, 0] == 0
        assert p.truth[lumbar].mean() > p.truth[~lumbar].mean()
        assert sp.values_of(int(p.truth.argmax()))["site"] == "lumbar"
    tight = next(iter(load("spinal4d", n_subjects=1, amplitude_cap_ua=150.0, charge_cap_nc=100.0)))
    assert max(tight.meta["amplitude_ua"]) <= 150.0 and max(tight.meta["charge_nc"]) <= 100.0 + 1e-9


# ----------------------------------------------------------------------------- 5-D cortical (Fig. 8)


def test_cortical5d_space_and_repetitions():
    ds = load("synthetic_cortical5d", n_subjects=2, n_repetitions=3, seed=1)
    p = next(iter(ds))
    assert p.space.n_points == 10976 and p.space.grid_shape == (8, 4, 7, 7, 7)
    assert p.space.dims[2].values == (20, 40, 80, 100, 150, 200, 250)
    assert p.space.dims[3].values == (25, 50, 100, 200, 300, 400, 500)
    assert p.space.dims[4].values == (50, 100, 150, 200, 300, 400, 500)
    assert p.repetitions.shape == (10976, 3)
    np.testing.assert_allclose(p.truth, p.repetitions.mean(axis=1))
    peaks = [q.meta["freq_peak_hz"] for q in ds]
    assert all(120 < f < 520 for f in peaks)


# ----------------------------------------------------------------------------- frequency augmentation


def test_frequency_augmentation_multiplies_by_star_factors():
    base = load("synthetic_rat", n_subjects=1, n_muscles=1, seed=2)
    aug = load("frequency_augmented", base="synthetic_rat", base_kwargs={"n_subjects": 1, "n_muscles": 1, "seed": 2})
    b, a = next(iter(base)), next(iter(aug))
    assert a.space.names == ("x", "y", "frequency") and a.space.dims[2].values == STAR_FREQUENCIES_HZ
    assert a.space.n_points == 32 * 5
    for j, (fr, fac) in enumerate(zip(STAR_FREQUENCIES_HZ, STAR_FACTORS)):
        for p in (0, 13, 31):
            i = a.space.point_of_index(tuple(b.space.index[p]) + (j,))
            assert a.truth[i] == pytest.approx(b.truth[p] * fac, rel=1e-12)
            np.testing.assert_allclose(a.repetitions[i], b.repetitions[p] * fac, rtol=1e-12)
    i300 = [a.space.point_of_index(tuple(b.space.index[p]) + (2,)) for p in range(32)]
    np.testing.assert_array_equal(a.truth[i300], b.truth)


# ----------------------------------------------------------------------------- non-stationary


def test_electrode_loss_at_the_stated_query():
    ds = load("nonstationary", scenario="electrode_loss", n_subjects=2, loss_query=17, seed=1)
    for p in ds:
        assert isinstance(p, NonStationaryProblem) and p.stationary is False
        best = int(np.argmax(p.truth))
        assert p.meta["lost_point"] == best
        assert p.truth_at(0)[best] == p.truth[best] and p.truth_at(16)[best] == p.truth[best]
        assert p.truth_at(17)[best] == 0.0 and p.truth_at(500)[best] == 0.0
        others = np.arange(p.space.n_points) != best
        np.testing.assert_array_equal(p.truth_at(17)[others], p.truth[others])
        assert int(np.argmax(p.truth_at(17))) != best


def test_drift_and_plasticity_change_with_the_query():
    drift = next(iter(load("nonstationary", scenario="drift", n_subjects=1, drift_amplitude=0.3, seed=2)))
    gains = np.array([drift.truth_at(t).sum() / drift.truth.sum() for t in range(120)])
    assert gains.max() - gains.min() > 0.3 and gains.min() > 0.5
    tp = drift.meta["transient_point"]
    rel = np.array([drift.truth_at(t)[tp] / drift.truth[tp] for t in range(120)]) / gains
    assert rel.max() > 1.5 and rel[-1] == pytest.approx(1.0, abs=1e-6)

    plast = next(iter(load("nonstationary", scenario="plasticity", n_subjects=1, n_sessions=4,
                           queries_per_session=8, growth=1.0, seed=3)))
    np.testing.assert_array_equal(plast.truth_at(0), plast.truth_at(7))
    assert not np.array_equal(plast.truth_at(7), plast.truth_at(8))
    assert [plast.session_of(t) for t in (0, 8, 23, 24, 999)] == [0, 1, 2, 3, 3]
    assert plast.truth_at(24).max() > 1.5 * plast.truth_at(0).max()
    rng = np.random.default_rng(0)
    y = sample_responses(plast, np.array([1, 2]), rng, noise=0.0, truth=plast.truth_at(30))
    np.testing.assert_array_equal(y, plast.truth_at(30)[[1, 2]])


def test_nonstationary_problems_pickle():
    for scenario in ("drift", "plasticity", "electrode_loss"):
        p = next(iter(load("nonstationary", scenario=scenario, kind="spinal", n_subjects=1, seed=4)))
        q = pickle.loads(pickle.dumps(p))
        assert type(q) is NonStationaryProblem and q.space.n_points == 60
        for t in (0, 9, 30, 100):
            np.testing.assert_array_equal(q.truth_at(t), p.truth_at(t))
