"""Loaders on small files written here in the published layouts; values must read back exactly."""

from __future__ import annotations

import base64
import os
import pickle
import re
import shlex
from collections import OrderedDict

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.io

from neuro_opt.datasets import load, safe_pickle, sample_responses, to_trials
from neuro_opt.datasets._common import DataFormatError

# ----------------------------------------------------------------------------- Dataset 1 writer

MACAQUE_ORDER = ["emgs", "emgsabr", "nChan", "stimProfile", "stim_channel", "evoked_emg", "response", "isvalid",
                 "sorted_isvalid", "sorted_resp", "sorted_evoked", "sampFreqEMG", "resp_region", "map", "ch2xy",
                 "sorted_respMean", "sorted_respSD"]
CEBUS_ORDER = ["emgs", "emgsabr", "nChan", "stimProfile", "stim_channel", "evoked_emg", "response", "isvalid",
               "sorted_isvalid", "sorted_resp", "sorted_respMean", "sorted_respSD", "sorted_evoked", "sampFreqEMG",
               "resp_region", "map", "ch2xy", "extra_cebus_field"]

# a 3 x 3 grid minus the (3, 3) corner: 8 channels listed in a scrambled order (1-based x, y)
CH2XY = np.array([[2, 3], [1, 1], [3, 1], [1, 2], [2, 1], [3, 2], [1, 3], [2, 2]], dtype=float)


def make_subject(rng, muscles, n_chan=8, lengths=(4, 6)):
    """Per-channel, per-muscle repetition vectors and 0/1 flags of varying length."""
    reps, flags = [], []
    for c in range(n_chan):
        n = int(rng.integers(lengths[0], lengths[1] + 1))
        reps.append([np.round(rng.uniform(0, 5, size=n), 3) for _ in muscles])
        f = []
        for _ in muscles:
            v = (rng.random(n) > 0.25).astype(float)
            v[0] = 1.0  # at least one valid
            f.append(v)
        flags.append(f)
    means = np.array([[r.mean() for r in row] for row in reps])  # includes outliers, as published
    return reps, flags, means


def cells(rows):
    out = np.empty((len(rows), len(rows[0])), dtype=object)
    for c, row in enumerate(rows):
        for m, v in enumerate(row):
            out[c, m] = np.asarray(v, dtype=float).reshape(-1, 1)  # MATLAB column vectors
    return out


def name_cell(names):
    out = np.empty((1, len(names)), dtype=object)
    for i, n in enumerate(names):
        out[0, i] = n
    return out


def write_cortical_mat(path, order, muscles, abbr, reps, flags, means, ch2xy=CH2XY, drop=(), extra=None):
    n_chan = len(reps)
    fields = {
        "emgs": name_cell(muscles), "emgsabr": name_cell(abbr), "nChan": float(n_chan),
        "stimProfile": np.zeros((1, 10)), "stim_channel": np.arange(1, n_chan + 1, dtype=float)[None, :],
        "evoked_emg": np.zeros((2, 3)), "response": np.zeros((2, 3)), "isvalid": np.ones((2, 3)),
        "sorted_isvalid": cells(flags), "sorted_resp": cells(reps), "sorted_evoked": np.zeros((2, 2)),
        "sampFreqEMG": 5000.0, "resp_region": np.array([[1.0, 5.0]]), "map": np.zeros((3, 3)), "ch2xy": ch2xy,
        "sorted_respMean": means, "sorted_respSD": np.ones_like(means), "extra_cebus_field": np.ones((1, 1)),
    }
    fields.update(extra or {})
    struct = {k: fields[k] for k in order if k not in drop}
    scipy.io.savemat(str(path), {path.stem: struct})


def expected_point_data(space, ch2xy, per_channel):
    """Map per-channel items onto the space's point order via the 1-based coordinates."""
    out = [None] * space.n_points
    for c, (x, y) in enumerate(ch2xy.astype(int)):
        out[space.point_of_index((x - 1, y - 1))] = per_channel[c]
    return out


@pytest.fixture
def nhp_root(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "osf"
    (root / "nhp").mkdir(parents=True)
    subjects = {}
    for stem, order, muscles, abbr in (
        ("Macaque1_M1_181212", MACAQUE_ORDER, ["FDI", "ECR"], ["fdi", "ecr"]),
        ("Cebus1_M1_190221", CEBUS_ORDER, ["FCU", "EDC", "OP"], ["fcu", "edc", "op"]),
    ):
        reps, flags, means = make_subject(rng, muscles)
        write_cortical_mat(root / "nhp" / f"{stem}.mat", order, muscles, abbr, reps, flags, means)
        subjects[stem] = (muscles, reps, flags, means)
    return root, subjects


def test_dataset1_field_order_differs_and_values_read_back_exactly(nhp_root):
    root, subjects = nhp_root
    orders = [list(scipy.io.loadmat(str(root / "nhp" / f"{s}.mat"), struct_as_record=False)[s][0, 0]._fieldnames)
              for s in subjects]
    assert orders[0] != orders[1] and orders[0].index("ch2xy") != orders[1].index("ch2xy")

    ds = load("neuromosaics_nhp", path=str(root))
    assert ds.keys() == ["Cebus1_M1_190221/FCU", "Cebus1_M1_190221/EDC", "Cebus1_M1_190221/OP",
                         "Macaque1_M1_181212/FDI", "Macaque1_M1_181212/ECR"]
    for stem, (muscles, reps, flags, means) in subjects.items():
        for m, muscle in enumerate(muscles):
            p = ds[f"{stem}/{muscle}"]
            assert p.space.grid_shape == (3, 3) and p.space.n_points == 8
            assert not p.space.mask[2, 2] and p.space.mask.sum() == 8
            exp_reps = expected_point_data(p.space, CH2XY, [row[m] for row in reps])
            exp_flags = expected_point_data(p.space, CH2XY, [row[m] for row in flags])
            exp_chan = expected_point_data(p.space, CH2XY, list(range(1, 9)))
            assert p.meta["channel_of_point"] == exp_chan
            for i in range(8):
                n = exp_reps[i].size
                np.testing.assert_array_equal(p.repetitions[i, :n], exp_reps[i])
                assert np.all(np.isnan(p.repetitions[i, n:]))
                np.testing.assert_array_equal(p.valid[i, :n], exp_flags[i] == 1)
                assert p.truth[i] == pytest.approx(exp_reps[i][exp_flags[i] == 1].mean(), rel=1e-12)


def test_dataset1_truth_options_and_muscle_selection(nhp_root):
    root, subjects = nhp_root
    muscles, reps, flags, means = subjects["Cebus1_M1_190221"]
    stored = load("neuromosaics_nhp", path=str(root), truth="stored", subjects=["Cebus1_M1_190221"])
    p = stored["Cebus1_M1_190221/EDC"]
    np.testing.assert_array_equal(p.truth, expected_point_data(p.space, CH2XY, means[:, 1]))
    all_mean = load("neuromosaics_nhp", path=str(root / "nhp" / "Cebus1_M1_190221.mat"), truth="all_mean")
    np.testing.assert_allclose(all_mean["Cebus1_M1_190221/EDC"].truth, p.truth, rtol=1e-12)

    by_abbr = load("neuromosaics_nhp", path=str(root), muscles=["op"], subjects=["Cebus1_M1_190221"])
    assert by_abbr.keys() == ["Cebus1_M1_190221/OP"]
    with pytest.raises(ValueError, match=r"no muscle named 'BIC'.*FCU"):
        load("neuromosaics_nhp", path=str(root), muscles=["BIC"])
    with pytest.raises(ValueError, match="no file for subject"):
        load("neuromosaics_nhp", path=str(root), subjects=["Macaque9"])
    first = load("neuromosaics_nhp", path=str(root), n_subjects=1, n_muscles=2)
    assert first.keys() == ["Cebus1_M1_190221/FCU", "Cebus1_M1_190221/EDC"]
    assert len(load("neuromosaics_nhp", path=str(root), n_muscles=6)) == 5  # at most 6 per subject
    with pytest.raises(ValueError, match=r"n_subjects=3 but only 2 available"):
        load("neuromosaics_nhp", path=str(root), n_subjects=3)


def test_dataset1_errors_name_file_and_field(tmp_path):
    rng = np.random.default_rng(0)
    reps, flags, means = make_subject(rng, ["A"])
    f = tmp_path / "rat1_M1_190716.mat"
    write_cortical_mat(f, MACAQUE_ORDER, ["A"], ["a"], reps, flags, means, drop=("sorted_isvalid",))
    with pytest.raises(DataFormatError, match=r"rat1_M1_190716\.mat.*missing field 'sorted_isvalid'"):
        load("neuromosaics_rat", path=str(f))

    bad_xy = CH2XY.copy()
    bad_xy[2, 1] = np.nan
    write_cortical_mat(f, MACAQUE_ORDER, ["A"], ["a"], reps, flags, means, ch2xy=bad_xy)
    with pytest.raises(DataFormatError, match=r"rat1_M1_190716\.mat.*ch2xy has NaN.*rows \[2\]"):
        load("neuromosaics_rat", path=str(f))

    write_cortical_mat(f, MACAQUE_ORDER, ["A"], ["a"], reps, flags, means, ch2xy=CH2XY[:, :1])
    with pytest.raises(DataFormatError, match=r"ch2xy has shape \(8, 1\), expected \(8, 2\)"):
        load("neuromosaics_rat", path=str(f))

    dup = CH2XY.copy()
    dup[1] = dup[0]
    write_cortical_mat(f, MACAQUE_ORDER, ["A"], ["a"], reps, flags, means, ch2xy=dup)
    with pytest.raises(DataFormatError, match="same grid point"):
        load("neuromosaics_rat", path=str(f))

    no_valid = [[np.zeros_like(v) for v in row] for row in flags]
    write_cortical_mat(f, MACAQUE_ORDER, ["A"], ["a"], reps, no_valid, means)
    with pytest.raises(DataFormatError, match=r"no valid repetition.*channel 1.*truth='all_mean'"):
        load("neuromosaics_rat", path=str(f))

    short = [[v[:-1] for v in row] for row in flags]
    write_cortical_mat(f, MACAQUE_ORDER, ["A"], ["a"], reps, short, means)
    with pytest.raises(DataFormatError, match="sorted_isvalid has"):
        load("neuromosaics_rat", path=str(f))

    nan_mean = means.copy()
    nan_mean[4, 0] = np.nan
    write_cortical_mat(f, MACAQUE_ORDER, ["A"], ["a"], reps, flags, nan_mean)
    with pytest.raises(DataFormatError, match=r"stored mean is NaN/inf at \['channel 5'\]"):
        load("neuromosaics_rat", path=str(f), truth="stored")

    with pytest.raises(ValueError, match="dataset.path is required"):
        load("neuromosaics_rat")
    with pytest.raises(ValueError, match="does not exist"):
        load("neuromosaics_rat", path=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['muscle'\]"):
        load("neuromosaics_rat", path=str(f), muscle="A")


def test_dataset1_baseline_corrected_responses_from_traces(tmp_path):
    rng = np.random.default_rng(8)
    reps, flags, means = make_subject(rng, ["TA", "GM"])
    n_t, onset, fs = 100, 40, 1000.0  # 30 ms baseline = samples 10..39; response region [50, 80)
    profile = np.zeros((1, n_t))
    profile[0, onset:onset + 5] = 1.0
    traces = [[rng.uniform(0, 1, size=(r.size, n_t)) + rng.uniform(0, 2, size=(r.size, 1)) for r in row]
              for row in reps]
    evoked = np.empty((8, 2), dtype=object)
    for c in range(8):
        for m in range(2):
            evoked[c, m] = traces[c][m]
    f = tmp_path / "rat2_M1_190617.mat"
    write_cortical_mat(f, CEBUS_ORDER, ["TA", "GM"], ["ta", "gm"], reps, flags, means,
                       extra={"sorted_evoked": evoked, "stimProfile": profile, "sampFreqEMG": fs,
                              "resp_region": np.array([[50.0, 80.0]])})
    p = load("neuromosaics_rat", path=str(f), response="baseline_corrected")["rat2_M1_190617/GM"]
    expected = [(t[1][:, 50:80] - t[1][:, 10:40].mean(axis=1, keepdims=True)).max(axis=1) for t in traces]
    for c, (x, y) in enumerate(CH2XY.astype(int)):
        i = p.space.point_of_index((x - 1, y - 1))
        np.testing.assert_allclose(p.repetitions[i, : expected[c].size], expected[c], rtol=1e-12)
        np.testing.assert_array_equal(p.valid[i, : expected[c].size], flags[c][1] == 1)
    with pytest.raises(DataFormatError, match=r"a 50 ms baseline needs 50 samples before the onset"):
        load("neuromosaics_rat", path=str(f), response="baseline_corrected", baseline_ms=50)
    with pytest.raises(ValueError, match="response must be one of"):
        load("neuromosaics_rat", path=str(f), response="peak")


def test_repetition_sampling_valid_only_or_all(nhp_root):
    root, _ = nhp_root
    p = load("neuromosaics_nhp", path=str(root))["Cebus1_M1_190221/FCU"]
    rng = np.random.default_rng(0)
    pts = np.repeat(np.arange(8), 200)
    valid_draws = sample_responses(p, pts, rng, mode="repetition_valid")
    all_draws = sample_responses(p, pts, rng, mode="repetition_all")
    for i in range(8):
        ok = p.repetitions[i][p.valid[i]]
        bad = p.repetitions[i][np.isfinite(p.repetitions[i]) & ~p.valid[i]]
        assert np.all(np.isin(valid_draws[pts == i], ok))
        assert np.all(np.isin(all_draws[pts == i], np.concatenate([ok, bad])))
    flagged = np.isfinite(p.repetitions) & ~p.valid
    assert flagged.any()
    assert np.isin(all_draws, p.repetitions[flagged]).any()
    assert not np.isin(valid_draws, np.setdiff1d(p.repetitions[flagged], p.repetitions[p.valid])).any()


# ----------------------------------------------------------------------------- Dataset 2 (spinal pickles)


def write_spinal_pickle(path, rng, muscles=("R Bi", "L Bi", "R Tr"), n_reps=(10, 15), drop=()):
    """An 8-channel placement, 0-based ch2xy, channel 4 unused (NaN position, NaN responses)."""
    ch2xy = np.array([[0, 0], [1, 0], [0, 1], [np.nan, np.nan], [1, 1], [2, 0], [2, 1], [0, 2]])
    C, M, R = len(ch2xy), len(muscles), n_reps[1]
    resp = np.full((C, M, R), np.nan)
    valid = np.zeros((C, M, R))
    for c in range(C):
        if c == 3:
            continue
        n = int(rng.integers(n_reps[0], n_reps[1] + 1))
        resp[c, :, :n] = np.round(rng.uniform(0, 12, size=(M, n)), 4)
        valid[c, :, :n] = rng.random((M, n)) > 0.1
        valid[c, :, 0] = 1
    use = (valid == 1) & np.isfinite(resp)
    means = np.where(use, resp, 0.0).sum(axis=2) / np.maximum(use.sum(axis=2), 1)
    data = {"ch2xy": ch2xy, "emgs": np.array(muscles), "evoked_emg": np.zeros(3), "filtered_emg": np.zeros(3),
            "map": np.zeros((8, 8)), "parameters": {"nChan": np.array([C])}, "resp_region": np.array([10, 60]),
            "sampFreqEMG": 6000.0, "sorted_evoked": np.zeros(2), "sorted_filtered": np.zeros(2),
            "sorted_resp": resp, "sorted_isvalid": valid, "sorted_respMean": means, "sorted_respSD": np.ones((C, M)),
            "stim_channel": np.arange(1, C + 1), "stimProfile": np.zeros(5)}
    for k in drop:
        del data[k]
    with open(path, "wb") as fh:
        pickle.dump(data, fh)
    return data


def test_spinal_pickle_reads_back_exactly(tmp_path):
    (tmp_path / "spinal").mkdir()
    data = write_spinal_pickle(tmp_path / "spinal" / "rat0_C5_500uA.pkl", np.random.default_rng(1))
    ds = load("neuromosaics_spinal", path=str(tmp_path))
    assert ds.keys() == ["rat0_C5_500uA/R Bi", "rat0_C5_500uA/L Bi", "rat0_C5_500uA/R Tr"]
    p = ds["rat0_C5_500uA/L Bi"]
    assert p.meta["excluded_channels"] == [4] and p.meta["nChan"] == 8
    assert p.space.grid_shape == (3, 3) and p.space.n_points == 7
    for c, (x, y) in enumerate(data["ch2xy"]):
        if c == 3:
            continue
        i = p.space.point_of_index((int(x), int(y)))
        r = data["sorted_resp"][c, 1]
        np.testing.assert_array_equal(p.repetitions[i, : np.isfinite(r).sum()], r[np.isfinite(r)])
        np.testing.assert_array_equal(p.valid[i], (data["sorted_isvalid"][c, 1] == 1) & np.isfinite(r))
        assert p.truth[i] == pytest.approx(data["sorted_respMean"][c, 1], rel=1e-12)
        assert p.meta["channel_of_point"][i] == c + 1
    # baseline-corrected responses from C x M x R x T traces (NaN rows = no repetition)
    n_t = 60
    ev = np.where(np.isfinite(data["sorted_resp"])[..., None],
                  np.random.default_rng(9).uniform(0, 3, size=data["sorted_resp"].shape + (n_t,)), np.nan)
    data.update(sorted_evoked=ev, stimProfile=np.r_[np.zeros(35), np.ones(25)], sampFreqEMG=1000.0,
                resp_region=np.array([40, 55]))
    with open(tmp_path / "spinal" / "rat0_C5_500uA.pkl", "wb") as fh:
        pickle.dump(data, fh)
    bc = load("neuromosaics_spinal", path=str(tmp_path), response="baseline_corrected")["rat0_C5_500uA/L Bi"]
    for c, (x, y) in enumerate(data["ch2xy"]):
        if c == 3:
            continue
        i = bc.space.point_of_index((int(x), int(y)))
        tr = ev[c, 1][np.isfinite(data["sorted_resp"][c, 1])]
        np.testing.assert_allclose(bc.repetitions[i, : tr.shape[0]],
                                   (tr[:, 40:55] - tr[:, 5:35].mean(axis=1, keepdims=True)).max(axis=1), rtol=1e-12)
        assert np.all(np.isnan(bc.repetitions[i, tr.shape[0]:]))
    stored = load("neuromosaics_spinal", path=str(tmp_path), truth="stored", muscles=["L Bi"])
    np.testing.assert_allclose(stored["rat0_C5_500uA/L Bi"].truth, p.truth, rtol=1e-12)


def test_spinal_pickle_errors(tmp_path):
    f = tmp_path / "rat1_C4_300uA.pkl"
    write_spinal_pickle(f, np.random.default_rng(2), drop=("sorted_isvalid",))
    with pytest.raises(DataFormatError, match=r"rat1_C4_300uA\.pkl.*missing key 'sorted_isvalid'"):
        load("neuromosaics_spinal", path=str(f))
    data = write_spinal_pickle(f, np.random.default_rng(2))
    data["sorted_resp"] = data["sorted_resp"][:, :2]
    with open(f, "wb") as fh:
        pickle.dump(data, fh)
    with pytest.raises(DataFormatError, match=r"sorted_resp has shape \(8, 2, 15\), expected \(8, 3, n_repetitions\)"):
        load("neuromosaics_spinal", path=str(f))
    write_spinal_pickle(f, np.random.default_rng(2))
    with pytest.raises(DataFormatError, match=r"rat1_C4_300uA\.pkl: ch2xy must be 1-based, found coordinate 0"):
        load("neuromosaics_spinal", path=str(f), ch2xy_base=1)
    f.write_bytes(f.read_bytes()[:200])  # truncated: the generic message, not a refusal
    with pytest.raises(DataFormatError, match=r"rat1_C4_300uA\.pkl: not a readable pickle \("):
        load("neuromosaics_spinal", path=str(f))


class Payload:
    """Unpickles by calling ``func(*args)``, as a crafted file does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# each writes the file ``marker`` when called
PAYLOADS = {
    "os.system": lambda marker: Payload(os.system, f"echo pwned > {shlex.quote(str(marker))}"),
    "builtins.eval": lambda marker: Payload(eval, f"open({str(marker)!r}, 'w').write('pwned')"),
    "numpy.savetxt": lambda marker: Payload(np.savetxt, str(marker), [1.0]),
}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_spinal_pickle_refuses_code(tmp_path, kind):
    (tmp_path / "spinal").mkdir()
    f, marker = tmp_path / "spinal" / "rat0_C5_500uA.pkl", tmp_path / "pwned"
    data = write_spinal_pickle(f, np.random.default_rng(3))
    payload = PAYLOADS[kind](marker)
    data["parameters"]["note"] = payload  # hidden inside an otherwise valid file
    with open(f, "wb") as fh:
        pickle.dump(data, fh)
    refused = f"{payload.func.__module__}.{payload.func.__qualname__}"  # os.system is posix.system on POSIX
    with pytest.raises(DataFormatError, match=r"rat0_C5_500uA\.pkl: refused: the pickle asks for "
                       rf"{re.escape(refused)}, which is not a numpy array or a plain Python container or scalar"):
        load("neuromosaics_spinal", path=str(tmp_path))
    assert not marker.exists()
    pickle.loads(f.read_bytes())  # the payload is live: a plain pickle.load runs it
    assert marker.exists()


def assert_same(got, want, where="value"):
    """Same types, dtypes, shapes and values, recursing into object arrays and containers."""
    assert type(got) is type(want), f"{where}: {type(got)} != {type(want)}"
    if isinstance(want, np.ndarray):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), f"{where}: {got.dtype}{got.shape}"
        if want.dtype == object:
            for i, (g, w) in enumerate(zip(got.flat, want.flat)):
                assert_same(g, w, f"{where}[{i}]")
        else:
            np.testing.assert_array_equal(got, want, err_msg=where)
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    else:
        assert got == want, where


def object_cells():
    """A 2 x 2 object array of vectors, lists and nested cells, as NeuroMOSAICS cell fields are."""
    c = np.empty((2, 2), dtype=object)
    c[0, 0], c[0, 1], c[1, 0] = np.arange(3.0), [1, 2.5, None], np.array(["R Bi", "L Tr"])
    c[1, 1] = np.array([np.arange(2), np.ones(3, dtype=bool)], dtype=object)
    return c


SAFE_VALUES = {
    "float": np.linspace(0, 1, 5), "int": np.arange(-3, 3, dtype=np.int16), "bool": np.array([True, False]),
    "unicode": np.array(["R Bi", "L Tr"]), "bytes": np.array([b"a", b"bc"]), "cells": object_cells(),
    "zero_d": np.array(2.5), "empty": np.zeros((0, 3)), "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "scalars": [np.float64(1.0), np.int32(-2), np.bool_(True), np.complex128(1 - 2j), np.str_("x")],
    "python": [{1, 2}, frozenset({"a"}), 1 + 2j, bytearray(b"\x00\xff"), slice(1, None, 2), OrderedDict(a=1),
               b"", (1, 2.0, None, "s")],
}


@pytest.mark.parametrize("protocol", range(6))
def test_safe_pickle_round_trips_arrays_and_containers(tmp_path, protocol):
    f = tmp_path / "values.pkl"
    f.write_bytes(pickle.dumps(SAFE_VALUES, protocol=protocol))
    assert_same(safe_pickle.load(f), SAFE_VALUES)


# written by numpy 1.26 (numpy.core.* names): [cells with a vector, a list and None, np.float64(1.5),
# int8 0-d array, unicode array, empty array] with protocol 2, and [np.arange(3.0), np.float64(1.5)] with protocol 5
NUMPY1_PROTOCOL2 = (
    "gAJdcQAoY251bXB5LmNvcmUubXVsdGlhcnJheQpfcmVjb25zdHJ1Y3QKcQFjbnVtcHkKbmRhcnJheQpxAksAhXEDY19jb2RlY3MKZW5jb2RlCnEE"
    "WAEAAABicQVYBgAAAGxhdGluMXEGhnEHUnEIh3EJUnEKKEsBSwOFcQtjbnVtcHkKZHR5cGUKcQxYAgAAAE84cQ2JiIdxDlJxDyhLA1gBAAAAfHEQ"
    "Tk5OSv////9K/////0s/dHERYoldcRIoaAFoAksAhXETaAiHcRRScRUoSwFLAoVxFmgMWAIAAABmOHEXiYiHcRhScRkoSwNYAQAAADxxGk5OTkr/"
    "////Sv////9LAHRxG2KJaARYEQAAAAAAAAAAAAAAAAAAAAAAw7A/cRxoBoZxHVJxHnRxH2JdcSAoSwFHQAQAAAAAAABlTmV0cSFiY251bXB5LmNv"
    "cmUubXVsdGlhcnJheQpzY2FsYXIKcSJoGWgEWAkAAAAAAAAAAADDuD9xI2gGhnEkUnElhnEmUnEnaAFoAksAhXEoaAiHcSlScSooSwEpaAxYAgAA"
    "AGkxcSuJiIdxLFJxLShLA2gQTk5OSv////9K/////0sAdHEuYoloBFgBAAAAA3EvaAaGcTBScTF0cTJiaAFoAksAhXEzaAiHcTRScTUoSwFLAoVx"
    "NmgMWAIAAABVMnE3iYiHcThScTkoSwNoGk5OTksISwRLCHRxOmKJaARYEAAAAGEAAABiAAAAYwAAAAAAAABxO2gGhnE8UnE9dHE+YmgBaAJLAIVx"
    "P2gIh3FAUnFBKEsBSwCFcUJoGYljX19idWlsdGluX18KYnl0ZXMKcUMpUnFEdHFFYmUu")
NUMPY1_PROTOCOL5 = (
    "gAWVwwAAAAAAAABdlCiMEm51bXB5LmNvcmUubnVtZXJpY5SMC19mcm9tYnVmZmVylJOUKJYYAAAAAAAAAAAAAAAAAAAAAAAAAAAA8D8AAAAAAAAA"
    "QJSMBW51bXB5lIwFZHR5cGWUk5SMAmY4lImIh5RSlChLA4wBPJROTk5K/////0r/////SwB0lGJLA4WUjAFDlHSUUpSMFW51bXB5LmNvcmUubXVs"
    "dGlhcnJheZSMBnNjYWxhcpSTlGgKQwgAAAAAAAD4P5SGlFKUZS4=")


@pytest.mark.filterwarnings("ignore:numpy.core.numeric is deprecated:DeprecationWarning")  # numpy 2 reading 1.x
def test_safe_pickle_reads_numpy1_files(tmp_path):
    f = tmp_path / "numpy1.pkl"
    f.write_bytes(base64.b64decode(NUMPY1_PROTOCOL2))
    cell = np.empty(3, dtype=object)
    cell[:] = [np.arange(2.0), [1, 2.5], None]
    assert_same(safe_pickle.load(f), [cell, np.float64(1.5), np.array(3, dtype=np.int8), np.array(["ab", "c"]),
                                      np.zeros(0)])
    f.write_bytes(base64.b64decode(NUMPY1_PROTOCOL5))
    assert_same(safe_pickle.load(f), [np.arange(3.0), np.float64(1.5)])


# ----------------------------------------------------------------------------- 5-D .mat


def write_five_d(path, rng, n_reps=5, n_emg=2, names=None):
    """2 x 2 electrodes x 2 durations x 2 frequencies x 3 pulse widths, one combination missing, rows shuffled."""
    rows = []
    for x in (1, 2):
        for y in (3, 4):
            for d in (40, 100):
                for fr in (50, 300):
                    for pw in (100, 200, 500):
                        rows.append([pw, fr, d, np.ceil(d * fr / 1000), (x - 1) * 4 + y, x, y])
    rows = np.array(rows[:-1], dtype=float)  # drop (2, 4, 100, 300, 500)
    rows = rows[rng.permutation(len(rows))]
    resp = np.round(rng.uniform(0, 3, size=(n_reps, n_emg, len(rows), 4)), 5)
    resp[-1, 0, 3, 0] = np.nan  # a missing repetition
    out = {"emg_response": resp, "stim_combinations": rows}
    if names:
        out["emgs"] = name_cell(names)
    scipy.io.savemat(str(path), out)
    return rows, resp


def test_five_d_mat_reads_back_exactly(tmp_path):
    rows, resp = write_five_d(tmp_path / "rCer1.5_5D.mat", np.random.default_rng(4), names=["ECR", "FCU"])
    ds = load("rat_5d", path=str(tmp_path))
    assert ds.keys() == ["rCer1.5_5D/ECR", "rCer1.5_5D/FCU"]
    p = ds["rCer1.5_5D/ECR"]
    assert p.space.names == ("x", "y", "duration", "frequency", "pulse_width")
    assert p.space.grid_shape == (2, 2, 2, 2, 3) and p.space.n_points == 47
    assert p.space.dims[4].values == (100, 200, 500)
    for k, (pw, fr, d, _, _, x, y) in enumerate(rows):
        gi = (int(x) - 1, int(y) - 3, [40, 100].index(d), [50, 300].index(fr), [100, 200, 500].index(pw))
        i = p.space.point_of_index(gi)
        r = resp[:, 0, k, 0]
        np.testing.assert_array_equal(p.repetitions[i][np.isfinite(p.repetitions[i])], r[np.isfinite(r)])
        assert p.truth[i] == pytest.approx(np.nanmean(r), rel=1e-12)
    with pytest.raises(ValueError, match="masked out"):
        p.space.point_of_index((1, 1, 1, 1, 2))
    m2 = load("rat_5d", path=str(tmp_path), metric=2, muscles=["FCU"])["rCer1.5_5D/FCU"]
    k = 0
    gi = (int(rows[k, 5]) - 1, int(rows[k, 6]) - 3, [40, 100].index(rows[k, 2]), [50, 300].index(rows[k, 1]),
          [100, 200, 500].index(rows[k, 0]))
    np.testing.assert_array_equal(m2.repetitions[m2.space.point_of_index(gi)], resp[:, 1, k, 2])


def test_five_d_errors_and_default_names(tmp_path):
    f = tmp_path / "BCI00_5D.mat"
    rows, resp = write_five_d(f, np.random.default_rng(5))
    assert load("rat_5d", path=str(f)).keys() == ["BCI00_5D/emg1", "BCI00_5D/emg2"]
    assert load("rat_5d", path=str(f), emg_names=["ECR", "biceps"]).keys() == ["BCI00_5D/ECR", "BCI00_5D/biceps"]
    bad = rows.copy()
    bad[7, 2] = np.nan
    scipy.io.savemat(str(f), {"emg_response": resp, "stim_combinations": bad})
    with pytest.raises(DataFormatError, match=r"BCI00_5D\.mat.*stim_combinations has NaN at row 7.*'duration'"):
        load("rat_5d", path=str(f))
    scipy.io.savemat(str(f), {"emg_response": resp[:, :, :-1], "stim_combinations": rows})
    with pytest.raises(DataFormatError, match=r"emg_response has shape \(5, 2, 46, 4\)"):
        load("rat_5d", path=str(f))
    scipy.io.savemat(str(f), {"emg_response": resp})
    with pytest.raises(DataFormatError, match="missing variable 'stim_combinations'"):
        load("rat_5d", path=str(f))


# ----------------------------------------------------------------------------- lab tables


def test_lab_table_csv_and_parquet(tmp_path):
    rng = np.random.default_rng(6)
    rows = []
    for site in ("lumbar", "sacral"):
        for freq in (40, 20, 80):
            for muscle in ("TA", "MG"):
                for t in range(int(rng.integers(2, 5))):
                    rows.append({"site": site, "frequency": freq, "muscle": muscle,
                                 "response": round(float(rng.uniform(0, 2)), 6), "valid": int(t != 1), "trial": t})
    df = pd.DataFrame(rows)
    df.to_csv(tmp_path / "ratA.csv", index=False)
    df.assign(subject="ratB").to_parquet(tmp_path / "more.parquet")
    ds = load("lab_table", path=str(tmp_path))
    assert ds.keys() == ["ratB/TA", "ratB/MG", "ratA/TA", "ratA/MG"]  # files sorted: more.parquet, ratA.csv
    for key in ("ratA/MG", "ratB/MG"):
        p = ds[key]
        assert p.space.names == ("site", "frequency") and p.space.dims[1].values == (20, 40, 80)
        assert p.space.dims[0].values == ("lumbar", "sacral")
        for (site, freq), g in df[df.muscle == "MG"].groupby(["site", "frequency"]):
            i = p.space.point_of_index((["lumbar", "sacral"].index(site), [20, 40, 80].index(freq)))
            n = len(g)
            np.testing.assert_array_equal(p.repetitions[i, :n], g.response.to_numpy())
            np.testing.assert_array_equal(p.valid[i, :n], g.valid.to_numpy() == 1)
            assert p.truth[i] == pytest.approx(g.response[g.valid == 1].mean(), rel=1e-12)
    (tmp_path / "sub").mkdir()
    df[df.muscle == "TA"].assign(valid=df.valid == 1).to_parquet(tmp_path / "sub" / "ta.parquet")  # index kept
    ta = load("lab_table", path=str(tmp_path / "sub"))
    assert ta.keys() == ["ta/TA"] and ta["ta/TA"].space.names == ("site", "frequency")
    np.testing.assert_array_equal(ta["ta/TA"].truth, ds["ratA/TA"].truth)
    assert load("lab_table", path=str(tmp_path), n_subjects=1, n_muscles=1).keys() == ["ratB/TA"]
    with pytest.raises(ValueError, match=r"n_subjects=3 but only 2 available"):
        load("lab_table", path=str(tmp_path), n_subjects=3)
    df.to_csv(tmp_path / "ratB.csv", index=False)
    with pytest.raises(DataFormatError, match=r"ratB\.csv: subject 'ratB' also appears in an earlier file"):
        load("lab_table", path=str(tmp_path))


def test_lab_table_errors(tmp_path):
    f = tmp_path / "lab.csv"
    pd.DataFrame({"x": [1, 2, 1], "muscle": ["A", "A", "B"], "response": [0.1, 0.2, 0.3]}).to_csv(f, index=False)
    with pytest.raises(DataFormatError, match=r"lab\.csv: subject 'lab', muscle 'B' has no trial at 1"):
        load("lab_table", path=str(f))
    pd.DataFrame({"x": [1, 2], "muscle": ["A", "A"], "amplitude": [0.1, 0.2]}).to_csv(f, index=False)
    with pytest.raises(DataFormatError, match=r"lab\.csv: missing column 'response'"):
        load("lab_table", path=str(f))
    pd.DataFrame({"x": [1, 2], "muscle": ["A", "A"], "response": [0.1, np.nan]}).to_csv(f, index=False)
    with pytest.raises(DataFormatError, match=r"column 'response' has NaN/inf at rows \[1\]"):
        load("lab_table", path=str(f))
    pd.DataFrame({"x": [1, 2], "muscle": ["A", "A"], "response": [0.1, 0.2], "valid": [1, 2]}).to_csv(f, index=False)
    with pytest.raises(DataFormatError, match="column 'valid' must be 0/1"):
        load("lab_table", path=str(f))
    with pytest.raises(DataFormatError, match=r"missing parameter column\(s\) \['y'\]"):
        load("lab_table", path=str(f), params=["x", "y"])


def test_trials_round_trip_through_parquet(tmp_path):
    src = load("synthetic_spinal", n_subjects=1, n_muscles=2, seed=3)
    pq.write_table(to_trials(src), tmp_path / "trials.parquet")
    back = load("lab_table", path=str(tmp_path / "trials.parquet"), params=["x", "y"])
    assert back.keys() == src.keys()
    for a in src:
        b = back[a.key]
        assert b.space.grid_shape == a.space.grid_shape and np.array_equal(b.space.mask, a.space.mask)
        np.testing.assert_array_equal(b.repetitions, a.repetitions)
        np.testing.assert_array_equal(b.valid, a.valid)
        np.testing.assert_allclose(b.truth, a.truth, rtol=1e-12)
