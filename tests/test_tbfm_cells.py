"""Sweep cells: plain Arrow tables, expected columns, determinism, parameter errors (tiny scale)."""

import pyarrow as pa
import pytest

from neuro_opt.tbfm import cell_setup, cells

TINY = dict(n_channels=8, n_session=260, n_train=150, n_test=60, horizon_ms=60, max_seconds=10.0, max_epochs=2)


def _plain(table: pa.Table) -> None:
    assert isinstance(table, pa.Table) and table.num_rows > 0
    for field in table.schema:
        assert pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_boolean(field.type) \
            or pa.types.is_string(field.type) or pa.types.is_list(field.type), field


def test_sample_efficiency_and_compare():
    t = cells.run_compare({**TINY, "max_bases": 2, "latency_calls": 20,
                           "models": ["tbfm", "tbfm_sham", "tbfm_adamw", "tbfm_fsam", "lssm", "ae_lstm",
                                      "tbfm_rank4", "ae_lstm_w20_h8"]}, seed=0)
    _plain(t)
    rows = {r["model"]: r for r in t.to_pylist()}
    assert set(rows) == {"tbfm", "tbfm_sham", "tbfm_adamw", "tbfm_fsam", "lssm", "ae_lstm", "tbfm_rank4",
                         "ae_lstm_w20_h8"}
    assert rows["tbfm_rank4"]["rank"] == 4 and rows["tbfm"]["rank"] == -1
    for col in ("test_r2", "test_r2_beyond_evoked", "evoked_r2", "evoked_r2_beyond_evoked", "state_dependent_r2",
                "test_r2_mean", "train_s", "us_per_forecast", "r2_h10", "r2_h40"):
        assert col in t.column_names
    # the evoked-response predictor is scored once per session: the same on every model's row, <= 0 beyond itself
    assert len({(r["evoked_r2"], r["evoked_r2_beyond_evoked"]) for r in rows.values()}) == 1
    assert rows["tbfm"]["evoked_r2_beyond_evoked"] <= 0 < rows["tbfm"]["test_r2_beyond_evoked"]
    assert rows["tbfm"]["test_r2_beyond_evoked"] < rows["tbfm"]["test_r2"]
    assert rows["tbfm"]["test_r2"] > rows["tbfm_sham"]["test_r2"]
    assert all(r["us_per_forecast"] > 0 and r["n_train"] == 150 for r in rows.values())
    again = cells.run_sample_efficiency({**TINY, "models": ["tbfm"]}, seed=0).to_pylist()[0]
    assert again["test_r2"] == rows["tbfm"]["test_r2"]  # deterministic for a seed
    other = cells.run_sample_efficiency({**TINY, "models": ["tbfm"]}, seed=1).to_pylist()[0]
    assert other["test_r2"] != again["test_r2"]


def test_ae_lstm_variant_names():
    assert cell_setup.ae_variant("ae_lstm") is None and cell_setup.ae_variant("lssm") is None
    assert cell_setup.ae_variant("ae_lstm_w164") == {"window": 164, "hidden": None}
    assert cell_setup.ae_variant("ae_lstm_h128") == {"window": None, "hidden": 128}
    assert cell_setup.ae_variant("ae_lstm_w20_h8") == {"window": 20, "hidden": 8}
    assert cell_setup.ae_variant("ae_lstm_h8_w20") is None  # one order only: the window first
    p = cell_setup.resolve_params({**TINY, "max_epochs": 1}, {})
    train, val, _ = cell_setup.cell_split(p, cell_setup.cell_session(p, 0)[1])
    model, _ = cell_setup.build_and_fit("ae_lstm_w20_h8", train, val, p, seed=0)
    assert (model.window, model.hidden) == (20, 8)
    model, _ = cell_setup.build_and_fit("ae_lstm", train, val, {**p, "ae_hidden": 16}, seed=0)
    assert (model.window, model.hidden) == (40, 16)


def test_fsam_cell():
    t = cells.run_fsam({**TINY, "max_bases": 3, "patience": 3}, seed=0)
    _plain(t)
    assert t.column("n_bases").to_pylist() == [1, 2, 3]
    assert sum(t.column("is_chosen").to_pylist()) == 1
    assert len(set(t.column("chosen").to_pylist())) == 1


def test_latency_cell():
    t = cells.run_latency({**TINY, "n_channels": 10, "models": ["tbfm", "lssm"], "horizons": [40], "n_calls": 30,
                           "warmup": 5, "rounds": 2}, seed=0)
    _plain(t)
    rows = t.to_pylist()
    keys = [(r["model"], r["compiled"], r["streaming"], r["device"], r["horizon_ms"]) for r in rows]
    variants = [("lssm", False, False, "cpu", 40), ("tbfm", False, False, "cpu", 40),
                ("tbfm", True, False, "cpu", 40), ("tbfm", True, True, "cpu", 40)]
    assert sorted(keys) == sorted(variants * 2)
    # interleaved rounds: every variant in round 1, then every variant again in round 2
    assert [r["round"] for r in rows] == [1] * 4 + [2] * 4 and keys[:4] == keys[4:]
    # the speedup pairs the compiled forecast with the uncompiled one of the same round
    for r in rows:
        unc = next(u for u in rows if u["round"] == r["round"] and u["model"] == r["model"] and not u["compiled"])
        assert r["speedup"] == pytest.approx(unc["us_per_forecast"] / r["us_per_forecast"])
    assert all(r["us_per_forecast"] > 0 and r["us_p10"] <= r["us_per_forecast"] <= r["us_p90"] for r in rows)
    # the streaming row times the work between samples too; the others have none
    assert all((r["us_advance"] is not None and r["us_advance"] > 0) == r["streaming"] for r in rows)
    # the compiled forecast given the whole runway is timed beside its floor: its weight map read once
    whole = [r for r in rows if r["compiled"] and not r["streaming"]]
    assert all((r["us_read_floor"] is not None) == (r in whole) for r in rows)
    for r in whole:
        assert r["us_read_floor"] > 0 and r["us_bare_matvec"] > 0
        assert r["map_mb"] == pytest.approx(4 * r["n_bases"] * r["n_usable"] ** 2 * r["runway_ms"] / 1e6)


def test_control_cell():
    t = cells.run_control(TINY, seed=0)
    _plain(t)
    assert t.column("demo").to_pylist() == ["target_ranges", "reference_tracking"]
    assert all(0.0 <= a <= 1.0 for a in t.column("auc").to_pylist())


def test_unknown_or_inconsistent_params():
    for bad in (0, -1, "x", 1.5, True):
        with pytest.raises(ValueError, match="rounds="):
            cells.run_latency({**TINY, "rounds": bad}, seed=0)
    with pytest.raises(ValueError, match="unknown parameter 'n_trains'"):
        cells.run_sample_efficiency({"n_trains": 10}, seed=0)
    with pytest.raises(ValueError, match="raise n_session"):
        cells.run_sample_efficiency({**TINY, "n_train": 250}, seed=0)
    with pytest.raises(ValueError, match="unknown model 'gru'"):
        cells.run_sample_efficiency({**TINY, "models": ["gru"]}, seed=0)
