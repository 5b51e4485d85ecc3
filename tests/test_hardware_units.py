"""Unit tests of hardware/: safety limits, EMG processing, channel maps, the journal,
the online config, the simulated rig, and the runner on an in-process simulated rig
with a stand-in optimizer that follows the neuro_opt.algorithms ask/tell API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hardware.emg import EMGConfig, process
from hardware.journal import Journal, JournalError
from hardware.online import OnlineConfig, StimulationPlan, load_prior, run_online
from hardware.rig import ChannelMap
from hardware.safety import SafetyLimits, SafetyViolation, StimParams
from hardware.rig.simulated import SimulatedRig
from neuro_opt.datasets import load
from neuro_opt.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
LIMITS = dict(max_amplitude_uA=100.0, max_charge_nC=20.0, max_frequency_hz=500.0, max_pulse_width_us=500.0,
              max_n_pulses=50)
SAFE = StimParams(channel=5, amplitude_uA=30.0, frequency_hz=333.333, pulse_width_us=200.0, n_pulses=13)


def rig_cfg(**over) -> dict:
    cfg = yaml.safe_load((ROOT / "conf/rig/simulated.yaml").read_text())
    cfg.update(latency_s=0.0)
    cfg["limits"]["min_interval_s"] = 0.0
    cfg.update(over)
    return cfg


def online_cfg(**over) -> dict:
    cfg = yaml.safe_load((ROOT / "conf/online/example_rat.yaml").read_text())
    cfg.update(mode="autonomous", n_queries=8, save_windows=False)
    cfg.update(over)
    return cfg


class StandIn:
    """A tiny optimizer with the neuro_opt.algorithms API: a seeded permutation, then the best mean."""

    def __init__(self, space, n_reps=1, seed=0, prior=None, **kw):
        self.P, self.rng = space.n_points, np.random.default_rng(seed)
        self.order = list(self.rng.permutation(self.P)) if prior is None else list(np.argsort(-np.asarray(prior)))
        self.sums, self.counts, self.told = np.zeros(self.P), np.zeros(self.P), []
        self.prior = prior

    def ask(self):
        return np.array([self.order[len(self.told) % self.P]])

    def tell(self, idx, y):
        self.told.append((int(idx[0]), float(y[0])))
        self.sums[idx[0]] += y[0]
        self.counts[idx[0]] += 1

    def best(self):
        m = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), -np.inf)
        return np.array([int(np.argmax(m))])

    def posterior(self):
        """Like GP-BO's: ``1 x P`` mean on responses divided by the largest told (unseen: their average)."""
        top = max(y for _, y in self.told)
        m = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan) / top
        return np.where(np.isnan(m), np.nanmean(m), m)[None, :], np.ones((1, self.P))


def make_standin(name, space, n_reps=1, seed=0, prior=None, **kw):
    return StandIn(space, n_reps, seed, prior, **kw)


# ---- safety ------------------------------------------------------------------------------------
def test_safe_parameters_pass_and_every_limit_is_enforced():
    lim = SafetyLimits(**LIMITS, allowed_channels=(1, 2, 3, 4, 5))
    assert lim.check(SAFE) == SAFE
    assert SAFE.charge_nC == pytest.approx(6.0)
    cases = {
        "amplitude_uA": dict(amplitude_uA=150.0), "charge": dict(amplitude_uA=90.0, pulse_width_us=300.0),
        "frequency_hz": dict(frequency_hz=800.0), "pulse_width_us": dict(pulse_width_us=600.0),
        "n_pulses": dict(n_pulses=60), "channel 9": dict(channel=9),
    }
    for needle, change in cases.items():
        bad = StimParams(**{**SAFE.to_dict(), **change})
        with pytest.raises(SafetyViolation, match=needle):
            lim.check(bad)
    for nasty in (dict(amplitude_uA=float("nan")), dict(amplitude_uA=-5.0), dict(channel=True),
                  dict(frequency_hz=0.0), dict(channel=2.5)):
        with pytest.raises(SafetyViolation):
            lim.check({**SAFE.to_dict(), **nasty})
    with pytest.raises(SafetyViolation, match="unknown key"):
        lim.check({**SAFE.to_dict(), "volts": 3})
    assert 5 not in lim.without_channels([5]).channels
    with pytest.raises(ValueError, match="unknown key"):
        SafetyLimits.from_dict({**LIMITS, "max_volts": 1})
    with pytest.raises(ValueError, match="max_charge_nC"):
        SafetyLimits(**{**LIMITS, "max_charge_nC": float("inf")})


# ---- EMG ---------------------------------------------------------------------------------------
def _burst(cfg: EMGConfig, center_ms: float, amp_mV: float) -> np.ndarray:
    t = cfg.times_ms()
    return amp_mV / cfg.units_per_volt * np.exp(-0.5 * ((t - center_ms) / 7.0) ** 2) * np.sin(2 * np.pi * 180 * t / 1e3)


def test_emg_feature_tracks_response_and_flags_pre_stimulus_activity():
    cfg = EMGConfig()
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 10e-6, size=(3, cfg.n_samples))
    w = noise + np.stack([_burst(cfg, 25, 0.2), _burst(cfg, 25, 0.8), _burst(cfg, -60, 0.5) + _burst(cfg, 25, 0.8)])
    f = process(w, cfg)
    assert f[1].value == pytest.approx(4 * f[0].value, rel=0.1)  # linear in the response
    assert 0 <= f[1].peak_ms <= 50
    assert f[0].valid and f[1].valid
    assert not f[2].valid and "pre-stimulus activity" in f[2].reason
    sat = process(w * 1000, EMGConfig(saturation=0.5e-3 * 1000))
    assert not sat[1].valid and "saturated" in sat[1].reason
    with pytest.raises(ValueError, match="NaN"):
        process(np.where(np.arange(cfg.n_samples) == 50, np.nan, 0.0), cfg)
    with pytest.raises(ValueError, match="response_ms"):
        EMGConfig(response_ms=(0.0, 500.0))


def test_artefact_blanking_removes_pulse_artefacts():
    cfg = EMGConfig()
    rig = SimulatedRig(latency_s=0, saline=True, ch2xy=str(ROOT / "conf/rig/ch2xy_rat32.json"))
    w, info = rig.draw(SAFE)
    blanked = process(w, cfg, SAFE.pulse_times_ms())
    raw = process(w, EMGConfig(blank_ms=0.0), SAFE.pulse_times_ms())
    assert blanked[0].value < 0.02 < raw[0].value  # saline: nothing evoked once artefacts are blanked
    assert blanked[0].artefact_snr > cfg.artefact_min_snr  # but the artefact is there (dry-run check)
    quiet = process(rig.rng.normal(0, 10e-6, size=(1, cfg.n_samples)), cfg, SAFE.pulse_times_ms())
    assert quiet[0].artefact_snr < cfg.artefact_min_snr


# ---- channel map --------------------------------------------------------------------------------
def test_channel_map_checks_coverage_and_duplicates(tmp_path):
    space = SearchSpace({"x": range(1, 9), "y": range(1, 5)})
    shipped = ChannelMap.load("conf/rig/ch2xy_rat32.json")
    shipped.check_covers(space, ["x", "y"])
    assert shipped.coords_of(shipped.channel_of([3, 2])) == (3.0, 2.0)
    with pytest.raises(ValueError, match=r"channels 1 and 2 both map to \[1, 1\]"):
        ChannelMap([[1, 1], [1, 1]])
    p = tmp_path / "short.json"
    p.write_text(json.dumps({"ch2xy": shipped.to_list()[:30]}))
    with pytest.raises(ValueError, match="does not cover the search space: no channel for 2"):
        ChannelMap.load(p).check_covers(space, ["x", "y"])
    with pytest.raises(FileNotFoundError):
        ChannelMap.load(tmp_path / "missing.json")


# ---- journal ------------------------------------------------------------------------------------
def test_journal_survives_a_torn_write_and_refuses_corruption(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal.create(path, {"session_id": "s"})
    j.append("query", query=0, response=float("nan"), x=np.float32(1.5), v=np.arange(2))
    with pytest.raises(JournalError, match="in use"):
        Journal.open(path)
    j.close()
    with pytest.raises(JournalError, match="already exists"):
        Journal.create(path, {"session_id": "s"})
    with open(path, "ab") as fh:  # a process killed in the middle of a write
        fh.write(b'{"seq":2,"kind":"que')
    assert len(Journal.read(path)) == 2
    j = Journal.open(path)
    assert [r["kind"] for r in j.records] == ["header", "query"]
    assert j.records[1]["response"] is None and j.records[1]["v"] == [0, 1]
    assert (tmp_path / "j.jsonl.torn").read_bytes().startswith(b'{"seq":2')
    j.append("query", query=1)
    j.close()
    assert [r["seq"] for r in Journal.read(path)] == [0, 1, 2]
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([lines[0], b"garbage", lines[2]]) + b"\n")
    with pytest.raises(JournalError, match="line 2 is corrupt"):
        Journal.open(path)
    path.write_bytes(b"\n".join([lines[0], lines[2]]) + b"\n")
    with pytest.raises(JournalError, match="expected seq 1"):
        Journal.open(path)


# ---- online config -------------------------------------------------------------------------------
def test_online_config_schema_errors_name_the_key():
    cfg = OnlineConfig.load("conf/online/example_rat.yaml")
    assert cfg.algorithm["name"] == "gpbo" and cfg.n_queries == 32
    for change, needle in [({"kappa": 3.0}, "unknown key"), ({"mode": "yolo"}, "online.mode"),
                           ({"space": {"x": [1, 2], "y": [1], "volts": [1]}}, "volts"),
                           ({"stimulation": {"amplitude_uA": 30}}, "must fix"),
                           ({"space": {"x": [1, 2], "y": [1], "amplitude_uA": [10, 20]}}, "both search dimensions"),
                           ({"electrode_dims": ["z"]}, "electrode_dims")]:
        with pytest.raises(ValueError, match=needle):
            OnlineConfig.from_dict({**online_cfg(), **change})


def test_plan_masks_disabled_electrodes_and_preflight_refuses_unsafe_space():
    chmap = ChannelMap.load("conf/rig/ch2xy_rat32.json")
    cfg = OnlineConfig.from_dict(online_cfg(disabled_channels=[1, 2]))
    plan = StimulationPlan(cfg, chmap, SafetyLimits(**LIMITS))
    assert plan.space.n_points == 30
    assert {plan.params(p).channel for p in range(30)} == set(range(3, 33))
    plan.preflight()
    space = {"x": list(range(1, 9)), "y": [1, 2, 3, 4], "amplitude_uA": [30.0, 150.0]}
    stim = {"frequency_hz": 333.333, "pulse_width_us": 200.0, "n_pulses": 13}
    cfg = OnlineConfig.from_dict(online_cfg(space=space, stimulation=stim))
    with pytest.raises(SafetyViolation, match="32 of 64 points .* amplitude_uA 150"):
        StimulationPlan(cfg, chmap, SafetyLimits(**LIMITS)).preflight()


# ---- simulated rig -------------------------------------------------------------------------------
def test_simulated_rig_renders_the_dataset_and_its_outliers():
    rig = SimulatedRig(latency_s=0, ch2xy="conf/rig/ch2xy_rat32.json", seed=3)
    truth = load("synthetic_rat")["rat1/TA"]
    errs, flagged = [], []
    for rep in range(2):
        for ch in range(1, 33):
            t = rig.stimulate({**SAFE.to_dict(), "channel": ch})
            x, y = rig.chmap.coords_of(ch)
            assert t.info["point"] == truth.space.point_of_index([int(x) - 1, int(y) - 1])
            for m, ok in enumerate(t.info["rep_valid"]):
                flagged.append((ok, t.features[m]["valid"]))
                if ok:
                    errs.append(t.features[m]["value"] - t.info["drawn"][m])
    assert all(ok == seen for ok, seen in flagged)  # the dataset's invalid repetitions are flagged, no others
    assert any(not ok for ok, _ in flagged)
    assert abs(np.mean(errs)) < 0.02 and np.std(errs) < 0.03  # mV
    with pytest.raises(SafetyViolation):
        rig.stimulate({**SAFE.to_dict(), "amplitude_uA": 500.0})
    assert rig.n_stimulations == 64


# ---- runner on an in-process rig -----------------------------------------------------------------
def test_operator_mode_confirms_every_stimulation_and_pauses_and_resumes(tmp_path):
    prompts = []

    def operator(answers):
        it = iter(answers)

        def confirm(prompt):
            prompts.append(prompt)
            return next(it)
        return confirm

    run = tmp_path / "s"
    out = run_online(online_cfg(mode="operator", n_queries=5), rig_cfg(), run_dir=run, use_actor=False,
                     confirm=operator(["", "y", "", "q"]), make_optimizer=make_standin, echo=lambda s: None)
    recs = Journal.read(run / "journal.jsonl")
    assert out["paused"] and len(prompts) == 4 and recs[-1]["kind"] == "pause"
    assert "channel" in prompts[0] and "Enter to stimulate" in prompts[0]
    intents = [r for r in recs if r["kind"] == "intent"]
    assert len(intents) == 3  # one stimulation per Enter, none after the q
    # the query the operator paused at was asked (journaled) and stays pending: a resume stimulates it
    assert recs[-2]["kind"] == "ask" and recs[-3]["kind"] == "query"
    assert out["n_queries"] == recs[-3]["query"] + 1 == recs[-2]["query"] >= 2
    paused_at = recs[-2]
    assert sum("retry" in p for p in prompts) == sum(r["attempt"] > 0 for r in intents)
    out = run_online(online_cfg(mode="autonomous", n_queries=5), rig_cfg(), resume=run, use_actor=False,
                     make_optimizer=make_standin, echo=lambda s: None)
    recs = Journal.read(run / "journal.jsonl")
    assert [r["query"] for r in recs if r["kind"] == "query"] == [0, 1, 2, 3, 4]
    resumed = next(r for r in recs if r["kind"] == "query" and r["query"] == paused_at["query"])
    assert (resumed["query_id"], resumed["point"]) == (paused_at["query_id"], paused_at["point"])
    assert not out["paused"] and recs[-1]["kind"] == "end"
    assert (run / "session.json").exists() and (run / "figures" / "performance.png").exists()
    with pytest.raises(ValueError, match=r"differs in \['algorithm'\]"):
        run_online(online_cfg(algorithm={"name": "extensive"}), rig_cfg(), resume=run, use_actor=False,
                   make_optimizer=make_standin, echo=lambda s: None)


def test_invalid_trials_are_repeated_then_recorded_and_not_told(tmp_path):
    # every trial has spontaneous activity: outlier_rate 1 on a dataset without repetitions
    from neuro_opt.datasets import Dataset, Problem

    src = load("synthetic_rat")["rat1/TA"]
    ds = Dataset("norep", [Problem(key="r/TA", space=src.space, truth=src.truth)])
    from hardware.rig import simulated

    rig = simulated.SimulatedRig(dataset=ds, n_muscles=1, outlier_rate=1.0, latency_s=0,
                                 ch2xy="conf/rig/ch2xy_rat32.json")
    from hardware.actor import LocalRigSession
    from hardware.online import OnlineSession

    cfg = OnlineConfig.from_dict(online_cfg(n_queries=2, max_retries=2, tell_invalid=False))
    plan = StimulationPlan(cfg, ChannelMap.load("conf/rig/ch2xy_rat32.json"), rig.limits)
    j = Journal.create(tmp_path / "journal.jsonl", {"session_id": "inv", "online": cfg.to_dict()})
    s = OnlineSession(cfg, plan, LocalRigSession(rig), j, tmp_path, make_optimizer=make_standin, echo=lambda s: None)
    s.run()
    q = j.of_kind("query")
    assert [r["attempts"] for r in q] == [3, 3] and not any(r["valid"] or r["told"] for r in q)
    assert len(j.of_kind("trial")) == 6 and s.opt.told == []
    assert "pre-stimulus activity" in q[0]["reason"]


def test_prior_from_a_previous_session_and_a_lost_electrode(tmp_path):
    first = run_online(online_cfg(n_queries=6), rig_cfg(), run_dir=tmp_path / "a", use_actor=False,
                       make_optimizer=make_standin, echo=lambda s: None)
    emap = json.loads(Path(first["estimated_map"]).read_text())
    assert emap["dims"] == ["x", "y"] and len(emap["points"]) == 32
    seen = {}

    def spy(name, space, n_reps=1, seed=0, prior=None, **kw):
        seen.update(prior=prior, kw=kw, n=space.n_points)
        return StandIn(space, n_reps, seed, prior)

    prior = {"path": first["estimated_map"], "scale": 0.5, "fade": 3}
    run_online(online_cfg(n_queries=2, prior=prior, disabled_channels=[7]), rig_cfg(), run_dir=tmp_path / "b",
               use_actor=False, make_optimizer=spy, echo=lambda s: None)
    assert seen["n"] == 31 and seen["kw"]["prior_scale"] == 0.5 and seen["kw"]["prior_fade"] == 3
    known = [v for v in emap["mean"] if v is not None]
    assert np.nanmax(seen["prior"]) == pytest.approx(max(known))
    recs = Journal.read(tmp_path / "b" / "journal.jsonl")
    assert all(r["params"]["channel"] != 7 for r in recs if r["kind"] == "intent")
    other = SearchSpace({"x": [1, 2], "y": [1, 2], "frequency_hz": [100, 200]})
    with pytest.raises(ValueError, match="another search space"):
        load_prior(first["estimated_map"], other)


def test_dry_run_checks_artefacts_on_every_channel(tmp_path):
    out = run_online(online_cfg(mode="dry_run", n_queries=4), rig_cfg(saline=True), run_dir=tmp_path / "d",
                     use_actor=False, make_optimizer=make_standin, echo=lambda s: None)
    assert out["dry_run"]["ok"] and len(out["dry_run"]["channels_tested"]) == 4
    out = run_online(online_cfg(mode="dry_run", n_queries=2), rig_cfg(saline=True, artefact_uV=0.0),
                     run_dir=tmp_path / "e", use_actor=False, make_optimizer=make_standin, echo=lambda s: None)
    assert not out["dry_run"]["ok"] and len(out["dry_run"]["channels_without_artefact"]) == 2


def test_resume_replays_gpbo_to_the_same_state(tmp_path):
    """The journal's completed queries, replayed into a fresh GP-BO (same seed, same calls), leave it
    in the state the killed process had: it asks the very point the original run asked next."""
    online = online_cfg(n_queries=5, algorithm={"name": "gpbo", "kappa": 3.0, "n_random": 1, "fit_steps": 2})
    run_online(online, rig_cfg(), run_dir=tmp_path / "full", use_actor=False, echo=lambda s: None)
    recs = Journal.read(tmp_path / "full" / "journal.jsonl")
    cut = [i for i, r in enumerate(recs) if r["kind"] == "query"][2]
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:cut + 1]))
    out = run_online(online, rig_cfg(), resume=tmp_path / "cut", use_actor=False, echo=lambda s: None)
    assert out["replay_mismatches"] == 0 and out["n_queries"] == 5
    full_q = [r for r in recs if r["kind"] == "query"]
    resumed_q = [r for r in Journal.read(tmp_path / "cut" / "journal.jsonl") if r["kind"] == "query"]
    assert resumed_q[3]["asked"] == full_q[3]["asked"]
