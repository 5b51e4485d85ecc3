"""Each TBFM experiment runs at tiny scale through the launcher, Ray and MLflow."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.launching import launch, run_module

# ++ adds a params key the experiment file does not list, or overrides it
TINY = ["++params.n_channels=6", "++params.n_session=320", "++params.n_test=60", "++params.max_seconds=2",
        "++params.max_epochs=1", "progress=false"]
CASES = {
    "tbfm_sample_efficiency": (["grid.params.n_train=[100,200]", "grid.params.rep=[0]"], "test_r2", 4),
    "tbfm_compare": (["++params.n_train=200", "++params.latency_calls=20", "grid.params.rep=[0,1]"], "state_dependent_r2", 4),
    "tbfm_fsam": (["++params.n_train=200", "++params.max_bases=2", "grid.params.rep=[0]"], "val_r2", None),
    "tbfm_latency": (["++params.models=[tbfm]", "++params.n_calls=20", "++params.n_train=200", "grid.params.rank=[null]",
                      "grid.params.threads=[1]", "params.rounds=2"], "us_per_forecast", 6),
    "tbfm_control": (["++params.n_train=200", "grid.params.rep=[0]"], "auc", 2),
}

R2_CONTEXT = ("test_r2", "test_r2_beyond_evoked", "evoked_r2", "evoked_r2_beyond_evoked")


@pytest.mark.parametrize("exp", sorted(CASES))
def test_tbfm_experiment_tiny(tmp_path, exp):
    extra, metric, n_groups = CASES[exp]
    overrides = [f"+exp={exp}", *TINY, *extra, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    if exp == "tbfm_latency":  # latency builds its own small sessions
        overrides = [o for o in overrides if not o.startswith(("++params.n_session", "++params.n_test"))]
    proc = launch(tmp_path, *overrides)
    summary = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    groups = summary["groups"]
    assert groups and all(metric in g["metrics"] for g in groups)
    if n_groups is not None:
        assert len(groups) == n_groups
    if exp in ("tbfm_sample_efficiency", "tbfm_compare"):  # both R2s, and the evoked-response predictor's
        assert all(set(R2_CONTEXT) <= set(g["metrics"]) for g in groups)
        context = summary["findings"][-1]
        assert "evoked response" in context["finding"] and context["holds"] in (True, False)
        rows = pq.read_table(Path(summary["run_dir"]) / "results").to_pylist()
        assert context["holds"] == all(r["test_r2_beyond_evoked"] > 0 for r in rows if r["model"] == "tbfm")
        assert all(r["evoked_r2_beyond_evoked"] <= 1e-12 and r["evoked_r2"] > r["evoked_r2_beyond_evoked"]
                   for r in rows)
        assert any("evoked-response predictor" in line for line in summary["headline"])
    if exp == "tbfm_sample_efficiency":  # both training-set sizes of rep 0 ran on one session (one seed)
        rows = pq.read_table(Path(summary["run_dir"]) / "results").to_pylist()
        assert {r["n_train"] for r in rows} == {100, 200} and len({r["seed"] for r in rows}) == 1
        timing, state, curve, _ = summary["findings"]
        # 200 trials of 6 channels cannot decide the 5k-trial training target, and says so
        assert timing["holds"] is None and "5000" in timing["numbers"]["reason"]
        r2 = {(r["model"], r["n_train"]): r["test_r2"] for r in rows}
        assert state["holds"] == all(r2["tbfm", n] > r2["tbfm_sham", n] for n in (100, 200))
        assert curve["holds"] == (r2["tbfm", 200] > r2["tbfm", 100])
        assert curve["numbers"]["plateau_n_train"] in (100, 200)
    if exp == "tbfm_latency":
        assert {(g["params"]["compiled"], g["params"]["streaming"]) for g in groups} == \
            {(False, False), (True, False), (True, True)}
        assert all(("us_advance" in g["metrics"]) == g["params"]["streaming"] for g in groups)
        assert all(("us_read_floor" in g["metrics"]) == (g["params"]["compiled"] and not g["params"]["streaming"])
                   for g in groups)
        # 6 channels cannot decide the 94-channel targets, and the findings say so
        assert [f["holds"] for f in summary["findings"]] == [None, None, None]
        assert all("94" in f["numbers"]["reason"] for f in summary["findings"])
        assert (Path(summary["run_dir"]) / "figures" / "latency.png").stat().st_size > 0
        assert all(g["metrics"]["us_per_forecast"][0] > 0 for g in groups)
        assert all(g["metrics"]["meets_target"][0] in (0.0, 1.0) and g["metrics"]["speedup"][0] > 0 for g in groups)
        run_dir = Path(summary["run_dir"])
        _check_latency_rounds(pq.read_table(run_dir / "results").to_pylist(), groups, rounds=2)
        # the report reads the Parquet table only: it remakes the same summary
        again = run_module(tmp_path, "sweeps.report", f"run={run_dir}")
        assert again.returncode == 0, again.stderr[-3000:]
        remade = json.loads((run_dir / "summary.json").read_text())
        assert remade["groups"] == groups and remade["findings"] == summary["findings"]
    if exp == "tbfm_compare":
        assert {g["params"]["model"] for g in groups} == {"tbfm", "tbfm_sham", "lssm", "ae_lstm"}
        (block,) = summary["orderings"]["blocks"]
        pairs = [(p["better"], p["worse"]) for p in block["pairs"]]
        assert pairs == [("tbfm", "ae_lstm"), ("ae_lstm", "lssm"), ("tbfm", "tbfm_sham")]
        means = {g["params"]["model"]: g["metrics"]["test_r2"][0] for g in groups}
        for p in block["pairs"]:
            assert p["n_seeds"] == [2, 2] and p["spread_sd"] >= 0
            assert abs(p["gap"] - (means[p["better"]] - means[p["worse"]])) < 1e-9
            assert p["holds"] == (p["gap"] > p["spread_sd"])
            q = p["paired"]  # both models ran on both seeds' sessions: the mean paired gap is the gap of the means
            assert q["n"] == 2 and len(q["gaps"]) == 2 and abs(q["mean"] - p["gap"]) < 1e-9
            assert q["n_better"] == sum(x > 0 for x in q["gaps"])
            assert q["holds"] == (q["mean"] > q["sd"] and q["n_better"] == 2)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    children = client.search_runs([client.get_experiment_by_name(exp).experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{summary['mlflow_run_id']}'")
    assert len(children) == len(groups)


def _check_latency_rounds(rows: list[dict], groups: list[dict], rounds: int) -> None:
    """Every variant is timed in rounds 1..rounds; its group reports the lowest per-round median, the per-round
    medians and their spread; a compiled group's speedup is the ratio of the two sides' lowest medians."""
    keys = ("model", "compiled", "streaming", "horizon_ms")
    per: dict = {}
    for r in rows:
        per.setdefault(tuple(r[k] for k in keys), {})[r["round"]] = r["us_per_forecast"]
    assert all(sorted(v) == list(range(1, rounds + 1)) for v in per.values()) and len(per) == len(groups)
    best = {k: min(v.values()) for k, v in per.items()}
    for g in groups:
        key = tuple(g["params"][k] for k in keys)
        medians = [per[key][i] for i in range(1, rounds + 1)]
        spread = (max(medians) - min(medians)) / min(medians)
        assert g["metrics"]["us_per_forecast"][0] == pytest.approx(min(medians))
        assert g["rounds"]["us_per_forecast"] == pytest.approx(medians)
        assert g["rounds"]["spread"] == pytest.approx(spread)
        assert g["metrics"]["us_per_forecast_spread"][0] == pytest.approx(spread)
        uncompiled = best[(key[0], False, False, key[3])]
        assert g["metrics"]["speedup"][0] == pytest.approx(uncompiled / best[key])


def test_report_order_naming_an_unknown_model_stops_the_launch(tmp_path):
    proc = launch(tmp_path, "+exp=tbfm_compare", "progress=false", "report.order=[[tbfm,gru]]",
                  f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", check=False)
    assert proc.returncode != 0
    assert "report.order" in proc.stderr and "gru" in proc.stderr
    assert not list(tmp_path.glob("**/*.parquet"))


def test_a_params_device_that_names_no_torch_device_stops_the_launch(tmp_path):
    proc = launch(tmp_path, "+exp=tbfm_compare", "progress=false", "++params.device=gpu",
                  f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", check=False)
    assert proc.returncode != 0
    assert "params.device='gpu'" in proc.stderr and "cuda" in proc.stderr
    assert not list(tmp_path.glob("**/*.parquet"))


def test_an_unknown_analysis_stops_the_launch_before_any_work(tmp_path):
    proc = launch(tmp_path, "+exp=tbfm_sample_efficiency", "progress=false", "report.analysis=tbfm_nonesuch",
                  f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", check=False)
    assert proc.returncode != 0
    assert "report.analysis" in proc.stderr and "tbfm_sample_efficiency" in proc.stderr  # names the known ones
    assert not list(tmp_path.glob("**/*.parquet"))


def test_a_cells_seed_follows_its_session_not_its_training_settings():
    from sweeps.grid import Cell
    from sweeps.kinds.tbfm import seed_key

    def session_seed(payload):  # the seed run_cell draws from the launcher's seed sequence for this cell
        cell = Cell(key="0" * 20, coords={}, payload=payload, seed_key=seed_key(payload))
        return int(cell.seed_sequence(payload["seed"]).generate_state(1)[0])

    def seed(global_seed=0, **params):
        return session_seed({"seed": global_seed, "params": {"cell": "compare", "rep": 0, **params}})

    base = seed(n_channels=32, n_session=3000)
    # training settings leave the session (and the models' initial weights) alone
    assert seed(n_channels=32, n_session=3000, n_train=500, max_seconds=5, models=["tbfm"]) == base
    assert session_seed({"seed": 0, "params": {"cell": "fsam", "rep": 0, "n_channels": 32, "n_session": 3000,
                                               "max_bases": 3}}) == base
    # the replicate, the global seed and what the simulator makes give another session
    others = {seed(n_channels=32, n_session=3000, rep=1), seed(1, n_channels=32, n_session=3000),
              seed(n_channels=16, n_session=3000), seed(n_channels=32, n_session=3500),
              seed(n_channels=32, n_session=3000, sim={"drift": 0.0})}
    assert base not in others and len(others) == 5


def _latency_row(threads, compiled, streaming, us, horizon=164, advance=None):
    whole = compiled and not streaming
    return {"model": "tbfm", "rank": -1, "threads": threads, "compiled": compiled, "streaming": streaming,
            "horizon_ms": horizon, "n_usable": 94, "runway_ms": 20, "n_bases": 12, "us_per_forecast": us,
            "us_p10": us * 0.9, "us_p90": us * 1.1, "speedup": None, "us_advance": advance,
            "us_advance_p90": None if advance is None else advance * 1.2,
            "us_read_floor": us * 0.9 if whole else None, "us_bare_matvec": us * 0.8 if whole else None}


@pytest.mark.parametrize("batch_us, advance_us, expect", [(95.0, 400.0, [True, True, True]),
                                                           (190.0, 1600.0, [False, True, False])])
def test_tbfm_latency_findings_rules(tmp_path, batch_us, advance_us, expect):
    """The latency findings follow their stated rules on hand-built rows (best thread count; a streamed sample's
    push and advance within 1 ms)."""
    import pyarrow as pa

    from sweeps.analyses import Context, tbfm_latency

    rows = []
    for threads, scale in ((1, 2.0), (2, 1.0)):  # 2 threads is the faster: the findings take the best
        unc = _latency_row(threads, False, False, 3 * batch_us * scale)
        comp = _latency_row(threads, True, False, batch_us * scale)
        unc["speedup"], comp["speedup"] = 1.0, 3.0
        rows += [unc, comp, _latency_row(threads, True, True, 60.0, advance=advance_us * scale / 2)]
    ctx = Context(cfg=None, table=pa.Table.from_pylist(rows), figures=tmp_path, groups=[], comparisons=[], kind=None)
    findings = tbfm_latency.analyze(ctx)["findings"]
    assert [f["holds"] for f in findings] == expect
    assert findings[0]["numbers"]["best_us"] == batch_us
    # the floor beside the forecast: the faster read of the map (the bare product, 0.8 x the 2-thread forecast)
    assert findings[0]["numbers"]["best_floor_us"] == pytest.approx(0.8 * batch_us)
    assert findings[0]["numbers"]["forecast_over_floor"] == pytest.approx(1 / 0.8)
    assert findings[0]["numbers"]["floor_meets_target"] == (0.8 * batch_us <= 100)
    assert set(findings[0]["numbers"]["floor_by_threads"]) == {1, 2}
    assert findings[2]["numbers"]["threads_meeting"] == ([1, 2] if expect[2] else [])
    assert (tmp_path / "latency.png").exists()


def test_tbfm_latency_findings_take_the_lowest_round(tmp_path):
    """A stall in one round does not flip a finding: the report collapses each variant's rounds to its lowest
    per-round median (speedup from the two sides' lowest medians), and the findings give the spread beside it."""
    import pyarrow as pa

    from sweeps.analyses import Context, tbfm_latency
    from sweeps.kinds.tbfm import best_of_rounds_table

    rows = []
    for rnd, stall in ((1, 3.0), (2, 1.0), (3, 1.2)):  # round 1 ran while the machine was busy
        unc = _latency_row(1, False, False, 400.0)
        comp = _latency_row(1, True, False, 95.0 * stall)
        rows += [{**r, "round": rnd, "cell": "c0", "device": "cpu", "speedup": 0.0}
                 for r in (unc, comp, _latency_row(1, True, True, 60.0 * stall, advance=400.0))]
    table = best_of_rounds_table(pa.Table.from_pylist(rows))
    assert table.num_rows == 3 and "round" not in table.column_names
    ctx = Context(cfg=None, table=table, figures=tmp_path, groups=[], comparisons=[], kind=None)
    batch, speedup, streamed = tbfm_latency.analyze(ctx)["findings"]
    assert [batch["holds"], speedup["holds"], streamed["holds"]] == [True, True, True]
    assert batch["numbers"]["best_us"] == pytest.approx(95.0)
    assert batch["numbers"]["rounds_by_threads"][1]["us_per_forecast"] == pytest.approx([285.0, 95.0, 114.0])
    assert batch["numbers"]["rounds_by_threads"][1]["spread"] == pytest.approx((285.0 - 95.0) / 95.0)
    assert speedup["numbers"]["speedups"][0]["speedup"] == pytest.approx(400.0 / 95.0)


def _r2_row(model, seed, n_train, r2, beyond, evoked=0.4, evoked_beyond=-0.01):
    return {"model": model, "seed": seed, "n_train": n_train, "test_r2": r2, "test_r2_beyond_evoked": beyond,
            "evoked_r2": evoked, "evoked_r2_beyond_evoked": evoked_beyond}


def test_r2_context_finding_rules():
    """Both R2s beside the evoked-response predictor's, per training size; holds when TBFM's R2 beyond the evoked
    response is above 0 on every seed at every size."""
    from sweeps.analyses._tbfm_r2 import r2_context

    rows = [_r2_row("tbfm", s, n, 0.5 + 0.1 * s, 0.1 + 0.1 * s) for s in (0, 1) for n in (100, 200)]
    rows += [_r2_row("tbfm_sham", s, n, 0.3, -0.2) for s in (0, 1) for n in (100, 200)]
    f = r2_context(rows, by="n_train")
    assert f["holds"] is True and [g["n_train"] for g in f["numbers"]["groups"]] == [100, 200]
    g = f["numbers"]["groups"][-1]
    assert g["evoked_r2"] == 0.4 and g["evoked_r2_beyond_evoked"] == -0.01
    assert g["models"]["tbfm"] == {"test_r2": pytest.approx(0.55), "test_r2_beyond_evoked": pytest.approx(0.15),
                                   "n_seeds": 2, "beats_evoked": 2}
    assert g["models"]["tbfm_sham"]["beats_evoked"] == 0  # 0.3 < 0.4 on both seeds
    assert f["brief"] == "at n_train=200: tbfm test R2 0.55, 0.15 beyond the evoked response; " \
                         "evoked-response predictor 0.40"
    rows[0]["test_r2_beyond_evoked"] = -0.05  # one seed at one size: no better than the evoked response
    assert r2_context(rows, by="n_train")["holds"] is False
    pooled = r2_context(rows)  # no by column: all rows together
    assert pooled["holds"] is False and len(pooled["numbers"]["groups"]) == 1
    # results from before the columns were logged cannot decide, and say why
    old = r2_context([{k: v for k, v in r.items() if k != "evoked_r2"} for r in rows])
    assert old["holds"] is None and "evoked_r2" in old["numbers"]["reason"]
    assert r2_context(rows, model="lssm")["holds"] is None
