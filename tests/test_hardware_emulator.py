"""The real tdt.SynapseAPI client against the Synapse emulator over loopback HTTP:
the SynapseRig's checks of every answer, safety refusals that send nothing, and an
online runner killed mid-session and resumed without losing or repeating a query."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hardware.journal import Journal
from hardware.online import SessionStopped
from hardware.rig import LateResponse, RigError
from hardware.safety import SafetyViolation
from hardware.rig.synapse import SynapseRig

ROOT = Path(__file__).resolve().parents[1]
SAFE = dict(channel=5, amplitude_uA=30.0, frequency_hz=333.333, pulse_width_us=200.0, n_pulses=13)


def _start_emulator(tmp: Path, *extra: str):
    log = tmp / "stims.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "hardware.emulator", "--port", "0", "--dataset", "synthetic_rat",
                             "--ch2xy", "conf/rig/ch2xy_rat32.json", "--latency-s", "0.03", "--log", str(log), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "listening on http://127.0.0.1:" not in line:
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line!r} {proc.stderr.read()}")
    return proc, int(line.split("127.0.0.1:")[1].split()[0]), log


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    proc, port, log = _start_emulator(tmp_path_factory.mktemp("emu"))
    yield {"port": port, "pid": proc.pid, "log": log}
    proc.terminate()
    proc.wait(timeout=10)


def emu(port: int, method: str, path: str, body: dict | None = None) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, json.dumps(body) if body is not None else None)
    out = json.loads(c.getresponse().read())
    c.close()
    return out


def rig_cfg(port: int, **over) -> dict:
    cfg = yaml.safe_load((ROOT / "conf/rig/synapse.yaml").read_text())
    cfg.update(host="127.0.0.1", port=port, read={"delay_s": 0.02, "poll_s": 0.01, "timeout_s": 1.0})
    cfg["limits"]["min_interval_s"] = 0.0
    cfg["actor"]["detached"] = False
    for k, v in over.items():
        cfg[k] = v
    return cfg


def make(port: int, **over) -> SynapseRig:
    return SynapseRig.from_config(rig_cfg(port, **over))


@pytest.fixture
def fresh(emulator):
    emu(emulator["port"], "PUT", "/emulator/reset", {})
    emu(emulator["port"], "PUT", "/emulator/latency", {"seconds": 0.03})
    return emulator


def test_emulator_listens_on_loopback_only(fresh):
    port = fresh["port"]
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.split(":")[1], 16) == port:
                    listening.append(local.split(":")[0])
    assert listening == ["0100007F"]  # 127.0.0.1, and nothing else (no 0.0.0.0, no ::)


def test_synapse_rig_stimulates_over_http_and_reads_the_evoked_window(fresh):
    port = fresh["port"]
    rig = make(port)
    health = rig.connect()  # the emulator starts Idle: the rig switches it to Preview
    assert health["mode"] == "Preview" and health["n_samples"] == rig.emg.n_samples
    trials = [rig.stimulate({**SAFE, "channel": ch}) for ch in (1, 12, 27)]
    stims = emu(port, "GET", "/emulator/stimulations")["stimulations"]
    assert [s["channel"] for s in stims] == [1, 12, 27]
    assert all(s["amplitude_uA"] == 30.0 and s["period_ms"] == pytest.approx(3.0, rel=1e-5) for s in stims)
    for t, s in zip(trials, stims):
        for m, muscle in enumerate(t.muscles):
            if s["rep_valid"][m]:
                assert t.response(muscle) == pytest.approx(s["drawn"][m], abs=0.03 + 0.1 * s["drawn"][m])
            assert t.valid(muscle) == s["rep_valid"][m]
    writes = emu(port, "GET", "/emulator/writes")["writes"]
    assert [w["param"] for w in writes[:6]] == ["Button1.Go", "eStim1.AmpA", "eStim1.PeriodA", "eStim1.ChanA",
                                                "Button1.Go", "Button1.Go"]
    logged = [json.loads(x) for x in fresh["log"].read_text().splitlines()]
    assert [x["channel"] for x in logged][-3:] == [1, 12, 27]
    rig.close()


@pytest.mark.parametrize("fault, error, where", [
    ("nan_buffer", RigError, "getParameterValues('buffer_1', 'array') returned NaN"),
    ("null_value", RigError, "getParameterValue('eStim1', 'AmpA') returned None"),
    ("string_value", RigError, "getParameterValue('eStim1', 'AmpA') returned 'n/a'"),
    ("misread", RigError, "eStim1.AmpA reads back 31.0 after writing 30.0"),
    ("error", RigError, "setParameterValue('eStim1', 'AmpA', 30.0) returned 0"),
    ("late", LateResponse, "no new EMG window"),
    ("hang", RigError, "setParameterValue('eStim1', 'AmpA', 30.0) returned 0"),
])
def test_every_bad_hardware_answer_is_an_error_naming_the_call(fresh, fault, error, where):
    port = fresh["port"]
    rig = make(port, http_timeout_s=0.4)
    rig.connect()
    before = len(emu(port, "GET", "/emulator/stimulations")["stimulations"])
    emu(port, "PUT", "/emulator/fault", {"kind": fault, "seconds": 1.0})
    with pytest.raises(error) as info:
        rig.stimulate(SAFE)
    assert where in str(info.value)
    stims = emu(port, "GET", "/emulator/stimulations")["stimulations"]
    # a failed write, read-back or pre-trigger buffer read never reaches the trigger; a late window comes
    # after a delivered stimulation
    assert len(stims) - before == (1 if fault == "late" else 0)
    if fault == "hang":
        time.sleep(0.7)  # let the hung reply drain before the next test
    rig.close()


def test_connect_errors_not_running_wrong_mode_bad_circuit(fresh, tmp_path):
    port = fresh["port"]
    with pytest.raises(RigError, match=r"getMode\(\) returned -1 .* is it running"):
        make(port + 1 if port < 65535 else port - 1).connect()  # nothing listens there
    assert emu(port, "PUT", "/system/mode", {"mode": "Idle"}) == {}
    with pytest.raises(RigError, match="is in Idle mode; expected Preview or Record"):
        make(port, mode=None).connect()
    with pytest.raises(RigError, match=r"lacks gizmo\(s\) \['buffer_9'\]"):
        make(port, buffers=["buffer_1", "buffer_2", "buffer_9"]).connect()
    emg = yaml.safe_load((ROOT / "conf/rig/synapse.yaml").read_text())["emg"]
    with pytest.raises(RigError, match="EMG buffers hold 1831 samples but rig.emg .* expects 1526"):
        make(port, emg={**emg, "post_ms": 150.0}).connect()
    emu(port, "PUT", "/emulator/fault", {"kind": "bad_size"})
    with pytest.raises(RigError, match=r"getParameterSize\('buffer_1', 'array'\) returned -1 .* positive buffer size"):
        make(port).connect()
    with pytest.raises(ValueError, match="not 'auto'"):
        make(port, ch2xy="auto")


def test_unsafe_stimulation_is_refused_and_nothing_is_sent(fresh):
    port = fresh["port"]
    rig = make(port)
    rig.connect()
    n_writes = len(emu(port, "GET", "/emulator/writes")["writes"])
    for bad, needle in [({"amplitude_uA": 150.0}, "amplitude_uA 150"), ({"channel": 40}, "channel 40"),
                        ({"amplitude_uA": 90.0, "pulse_width_us": 300.0}, "charge per phase"),
                        ({"pulse_width_us": 100.0}, "circuit's pulse_width_us is fixed at 200")]:
        with pytest.raises(SafetyViolation, match=needle):
            rig.stimulate({**SAFE, **bad})
    assert len(emu(port, "GET", "/emulator/writes")["writes"]) == n_writes
    assert emu(port, "GET", "/emulator/stimulations")["stimulations"] == []
    rig.close()


def test_killed_session_resumes_without_losing_or_repeating_a_query(fresh, tmp_path):
    from hardware.online import run_online

    port, n = fresh["port"], 10
    online = yaml.safe_load((ROOT / "conf/online/example_rat.yaml").read_text())
    online.update(mode="autonomous", n_queries=n, save_windows=True, algorithm={"name": "extensive"})
    rig = rig_cfg(port)
    (tmp_path / "online.yaml").write_text(yaml.safe_dump(online))
    (tmp_path / "rig.yaml").write_text(yaml.safe_dump(rig))
    emu(port, "PUT", "/emulator/latency", {"seconds": 0.15})  # a stimulation in flight is likely when killed
    run = tmp_path / "session"
    proc = subprocess.Popen([sys.executable, "-m", "hardware.online", "--online", str(tmp_path / "online.yaml"),
                             "--rig", str(tmp_path / "rig.yaml"), "--no-actor", "--run-dir", str(run)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = run / "journal.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it mid-stimulation: after an intent, before its trial
        recs = Journal.read(journal) if journal.exists() else []
        if sum(r["kind"] == "query" for r in recs) >= 3 and recs[-1]["kind"] == "intent":
            os.kill(proc.pid, signal.SIGKILL)
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.wait(timeout=10)
    before = Journal.read(journal)
    done_before = [r["query"] for r in before if r["kind"] == "query"]
    assert 3 <= len(done_before) < n  # killed mid-session

    emu(port, "PUT", "/emulator/latency", {"seconds": 0.03})
    out = run_online(online, rig, resume=run, use_actor=False, echo=lambda s: None)
    recs = Journal.read(journal)
    assert recs[:len(before)] == before  # append-only: nothing recorded was lost or rewritten
    queries = [r for r in recs if r["kind"] == "query"]
    assert [r["query"] for r in queries] == list(range(n)) and out["n_queries"] == n
    assert any(r["kind"] == "resume" for r in recs)
    trials = [r for r in recs if r["kind"] == "trial"]
    lost = [r for r in recs if r["kind"] == "maybe_delivered"]
    assert len(lost) == 1 and lost[0]["query"] == len(done_before)
    assert len({(r["query"], r["attempt"]) for r in trials + lost}) == len(trials) + len(lost)  # no repeat
    # the stimulator saw exactly the journal's stimulations, in order: each trial, plus at most the
    # one in flight when the process died (journaled as lost)
    stims = emu(port, "GET", "/emulator/stimulations")["stimulations"]
    attempts = [r for r in recs if r["kind"] in ("trial", "maybe_delivered")]
    order = sorted(attempts, key=lambda r: (r["query"], r["attempt"]))
    assert attempts == order
    delivered = [s["channel"] for s in stims]
    with_lost = [r["params"]["channel"] for r in attempts]
    trials_only = [r["params"]["channel"] for r in attempts if r["kind"] == "trial"]
    assert delivered in (with_lost, trials_only)  # the lost one was delivered, or died before its trigger
    for r in queries:
        last = [t for t in trials if t["query"] == r["query"]][-1]
        assert r["point"] == last["point"] and r["response"] == last["response"]
    assert all((run / t["window"]).exists() for t in trials)


def test_a_rig_fault_mid_session_stops_it_and_resume_carries_on(fresh, tmp_path):
    from hardware.online import run_online

    port = fresh["port"]
    online = yaml.safe_load((ROOT / "conf/online/example_rat.yaml").read_text())
    online.update(mode="autonomous", n_queries=4, save_windows=False, algorithm={"name": "extensive"})
    emu(port, "PUT", "/emulator/fault", {"kind": "late"})  # the first window never arrives
    with pytest.raises(SessionStopped, match="no new EMG window") as info:
        run_online(online, rig_cfg(port), run_dir=tmp_path / "s", use_actor=False, echo=lambda s: None)
    assert isinstance(info.value.cause, LateResponse) and info.value.run_dir == tmp_path / "s"
    recs = Journal.read(tmp_path / "s" / "journal.jsonl")
    assert [r["kind"] for r in recs] == ["header", "ask", "intent", "no_response", "stop"]
    assert "LateResponse" in recs[3]["error"] and "sent, no valid response" in recs[4]["error"]
    stopped = json.loads((tmp_path / "s" / "session.json").read_text())
    assert stopped["n_stimulations"] == 1 and "no new EMG window" in stopped["stopped"]
    out = run_online(online, rig_cfg(port), resume=tmp_path / "s", use_actor=False, echo=lambda s: None)
    recs = Journal.read(tmp_path / "s" / "journal.jsonl")
    lost = [r for r in recs if r["kind"] == "no_response"]
    assert len(lost) == 1 and not [r for r in recs if r["kind"] in ("maybe_delivered", "not_sent")]
    first = [r for r in recs if r["kind"] == "query"][0]
    assert first["point"] == lost[0]["point"] and first["attempts"] >= 2  # the same point, next attempt
    assert out["n_queries"] == 4
    assert len(emu(port, "GET", "/emulator/stimulations")["stimulations"]) == out["n_stimulations"]
