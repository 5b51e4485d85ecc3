"""The rig cannot be talked past its safety limits: each hole found by trying the rig as a new user
would gets a test here, against the real parts (the Synapse emulator over loopback HTTP, the real
tdt client, the launcher with its local Ray and pinned rig actor).

- the stimulator's own values are read back before every trigger: a circuit whose pulse width or
  pulse count differs from what was checked sends nothing;
- operator mode with no terminal to confirm on refuses to start, whatever says "operator";
- a failure is journaled by what reached the stimulator, and ``session.json`` counts exactly the
  stimulations the stimulator received, under every fault the emulator can inject;
- an online launch that the rig stops ends with one plain line saying how to resume.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hardware.journal import Journal
from hardware.online import SessionStopped, confirmation, run_online
from hardware.rig import NOT_SENT, ReadbackMismatch, delivery_of
from tests.launching import launch
from tests.test_hardware_emulator import ROOT, SAFE, _start_emulator, emu, make, rig_cfg


@pytest.fixture(scope="module")
def wide_circuit(tmp_path_factory):
    """An emulator whose circuit holds 300 us pulses and 20-pulse trains (the rig config says 200 and 13)."""
    proc, port, _ = _start_emulator(tmp_path_factory.mktemp("emu_circuit"), "--circuit-pulse-width-us", "300",
                                    "--circuit-n-pulses", "20")
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    proc, port, _ = _start_emulator(tmp_path_factory.mktemp("emu_faults"))
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def stimulations(port: int) -> list[dict]:
    return emu(port, "GET", "/emulator/stimulations")["stimulations"]


def test_a_circuit_other_than_the_checked_one_sends_nothing(wide_circuit):
    port = wide_circuit
    rig = make(port)
    rig.connect()
    with pytest.raises(ReadbackMismatch) as info:
        rig.stimulate(SAFE)
    msg = str(info.value)
    assert "eStim1.DurA reads back 300.0 but 200.0 was checked" in msg
    assert "eStim1.CountA reads back 20.0 but 13.0 was checked" in msg and "not delivered" in msg
    assert info.value.readback["pulse_width"] == 300.0 and info.value.readback["n_pulses"] == 20.0
    assert delivery_of(info.value) == NOT_SENT and rig.n_stimulations == 0
    # the written values are read back too: change the amplitude behind the rig's back between write and read
    emu(port, "PUT", "/emulator/fault", {"kind": "misread", "param": "eStim1.AmpA"})
    with pytest.raises(ReadbackMismatch, match=r"eStim1.AmpA reads back 31.0 after writing 30.0"):
        rig.stimulate(SAFE)
    assert stimulations(port) == []
    rig.close()


def test_read_back_values_are_checked_against_the_limits(wide_circuit):
    """A config that declares the circuit's real values still cannot exceed a limit: the charge limit is
    checked on the pulse width the stimulator reports (300 us x 60 uA = 18 nC > 15 nC)."""
    port = wide_circuit
    cfg = rig_cfg(port, circuit={"pulse_width_us": 300.0, "n_pulses": 20})
    cfg["limits"]["max_charge_nC"] = 15.0
    from hardware.rig.synapse import SynapseRig

    rig = SynapseRig.from_config(cfg)
    rig.connect()
    with pytest.raises(Exception, match="charge per phase 18 nC"):
        rig.stimulate({**SAFE, "amplitude_uA": 60.0, "pulse_width_us": 300.0, "n_pulses": 20})
    trial = rig.stimulate({**SAFE, "amplitude_uA": 40.0, "pulse_width_us": 300.0, "n_pulses": 20})
    assert trial.readback == {"amplitude": 40.0, "period": pytest.approx(3.0, rel=1e-5), "channel": 5.0,
                              "pulse_width": 300.0, "n_pulses": 20.0}
    assert [s["pulse_width_us"] for s in stimulations(port)] == [300.0]
    rig.close()


def test_operator_mode_needs_a_terminal_or_an_explicit_confirmation():
    assert confirmation("autonomous") is None and confirmation("dry_run") is None
    answer = (lambda prompt: "")
    assert confirmation("operator", answer) is answer
    with open("/dev/null") as devnull:
        saved, sys.stdin = sys.stdin, devnull
        try:
            with pytest.raises(ValueError, match="standard input is not a terminal.*mode=autonomous"):
                confirmation("operator")
        finally:
            sys.stdin = saved


def _session(port: int, run: Path, resume: bool = False, **rig_over) -> dict:
    online = yaml.safe_load((ROOT / "conf/online/example_rat.yaml").read_text())
    online.update(mode="autonomous", n_queries=3, save_windows=False, algorithm={"name": "extensive"})
    kw = {"resume": run} if resume else {"run_dir": run}
    return run_online(online, rig_cfg(port, **rig_over), use_actor=False, echo=lambda s: None, **kw)


# (fault, what the journal must say of the failed attempt; rig_error: the rig failed to open, before any query)
FAULTS = [
    ({"kind": "error"}, "rig_error"),  # the first request of the session (connect) fails
    ({"kind": "error", "param": "eStim1.AmpA"}, "not_sent"),  # a parameter write fails
    ({"kind": "hang", "seconds": 2.0, "param": "eStim1.AmpA"}, "not_sent"),  # a write's reply is lost
    ({"kind": "misread", "param": "eStim1.PeriodA"}, "not_sent"),  # read-back differs from what was written
    ({"kind": "null_value", "param": "eStim1.DurA"}, "not_sent"),
    ({"kind": "string_value", "param": "eStim1.CountA"}, "not_sent"),
    ({"kind": "nan_buffer", "param": "buffer_2.array"}, "not_sent"),  # the buffer snapshot before the trigger
    # the trigger (after the Go=0 written at connect): refused, so Go reads back 0
    ({"kind": "error", "param": "Button1.Go", "after": 1}, "not_sent"),
    ({"kind": "hang", "seconds": 2.0, "param": "Button1.Go", "after": 1}, "no_response"),  # taken, reply lost
    ({"kind": "error", "param": "Button1.Go", "after": 1, "count": 2}, "maybe_delivered"),  # Go unreadable too
    ({"kind": "late"}, "no_response"),  # sent, the window never arrives
]


@pytest.mark.parametrize("fault, outcome", FAULTS, ids=lambda f: f if isinstance(f, str) else
                         "-".join(str(v) for k, v in f.items() if k not in ("seconds", "after")))
def test_journal_and_session_count_what_the_stimulator_received(emulator, tmp_path, fault, outcome):
    port = emulator
    emu(port, "PUT", "/emulator/reset", {})
    emu(port, "PUT", "/emulator/fault", fault)
    run = tmp_path / "s"
    with pytest.raises(SessionStopped) as info:
        _session(port, run, http_timeout_s=1.0)
    assert info.value.run_dir == run
    recs = Journal.read(run / "journal.jsonl")
    failed = [r for r in recs if r["kind"] in ("not_sent", "no_response", "maybe_delivered", "rig_error")]
    assert [r["kind"] for r in failed] == [outcome] and recs[-1]["kind"] in ("stop", "rig_error")
    assert "\x1b" not in failed[0]["error"] and "\n" not in failed[0]["error"]
    if outcome != "rig_error":
        stopped = json.loads((run / "session.json").read_text())
        assert stopped["n_stimulations"] == len(stimulations(port))  # the failed one counted iff it went out
    if fault.get("kind") == "hang":
        import time
        time.sleep(1.2)  # let the hung reply drain
    out = _session(port, run, resume=True)
    recs = Journal.read(run / "journal.jsonl")
    got = stimulations(port)
    assert out["n_queries"] == 3 and out["n_stimulations"] == len(got)
    sent = [r for r in recs if r["kind"] in ("trial", "no_response")]
    assert [r["params"]["channel"] for r in sent] == [s["channel"] for s in got]
    assert out["n_maybe_delivered"] == (outcome == "maybe_delivered")
    assert out["n_not_sent"] == (outcome == "not_sent")
    # a failure before the trigger uses no retry: attempt 0 is tried again; one after it used attempt 0
    first = [r for r in recs if r.get("query") == 0 and r["kind"] in ("trial", "no_response", "maybe_delivered")]
    assert [r["attempt"] for r in first] == list(range(len(first)))
    assert first[0]["kind"] == ("trial" if outcome in ("not_sent", "rig_error") else outcome)
    assert all(r["readback"]["amplitude"] == r["params"]["amplitude_uA"] for r in recs if r["kind"] == "trial")


def test_fault_count_zero_injects_nothing(emulator):
    port = emulator
    emu(port, "PUT", "/emulator/reset", {})
    assert emu(port, "PUT", "/emulator/fault", {"kind": "error", "count": 0}) == {}
    assert emu(port, "PUT", "/emulator/fault", {"kind": "error", "count": -1})["_return_code_"] == 400
    rig = make(port)
    rig.connect()
    rig.stimulate(SAFE)  # no injected error fires
    assert len(stimulations(port)) == 1
    rig.close()


def test_online_launch_refuses_unsafe_circuits_and_unconfirmable_operator_mode(wide_circuit, tmp_path):
    """Through the launcher, the rig actor and the real client: nothing reaches the stimulator, and each
    refusal is one plain line."""
    port = wide_circuit
    before = len(stimulations(port))
    common = ["+exp=online", "rig=synapse", "rig.host=127.0.0.1", f"rig.port={port}", "n_queries=2",
              "rig.read.delay_s=0.02", "rig.limits.min_interval_s=0.0", "rig.actor.detached=false",
              f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "progress=false"]
    # mode=null: the online config's mode (operator) is in force; stdin is no terminal: refused
    proc = launch(tmp_path, *common, "mode=null", check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "operator mode" in err[0] and "mode=autonomous" in err[0]
    # the declared pulse width (100 us, so 100 uA x 100 us passes a 15 nC limit) is not the circuit's
    proc = launch(tmp_path, *common, "rig.circuit.pulse_width_us=100", "online.stimulation.pulse_width_us=100",
                  "online.stimulation.amplitude_uA=100", "rig.limits.max_charge_nC=15", check=False,
                  stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "eStim1.DurA reads back 300.0 but 100.0 was checked" in err[0]
    assert "nothing was sent" in err[0] and "resume=" in err[0]
    run = Path(err[0].split("session folder ")[1].split(";")[0])
    recs = Journal.read(run / "journal.jsonl")
    assert recs[0]["mode"] == "autonomous"
    bad = [r for r in recs if r["kind"] == "not_sent"]
    assert len(bad) == 1 and bad[0]["readback"]["pulse_width"] == 300.0
    assert "\x1b" not in bad[0]["error"] and "ray::" not in bad[0]["error"]
    assert json.loads((run / "session.json").read_text())["n_stimulations"] == 0
    assert len(stimulations(port)) == before
