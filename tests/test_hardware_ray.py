"""The rig as one pinned Ray actor on a local Ray, driving the Synapse emulator over HTTP with
the real tdt client: a full online session, two concurrent sessions that never interleave, a
refused second session, and unsafe queries that never reach the stimulator."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml

from hardware.actor import ActorRigSession, RigBusy, get_rig_actor
from hardware.emulator import build, serve
from hardware.journal import Journal
from hardware.local_ray import init_local
from hardware.online import SessionStopped, run_online
from hardware.safety import SafetyViolation

ROOT = Path(__file__).resolve().parents[1]
SAFE = dict(channel=5, amplitude_uA=30.0, frequency_hz=333.333, pulse_width_us=200.0, n_pulses=13)


@pytest.fixture(scope="module")
def cluster():
    emu = build(ch2xy="conf/rig/ch2xy_rat32.json", latency_s=0.02)
    server, _ = serve(emu, 0)
    ray.shutdown()  # this module needs a Ray with the rig's resource, not the in-process launches' shared one
    init_local(num_cpus=2, resources={"tdt_rig": 1}, include_dashboard=False, log_to_driver=False,
               namespace="test_hardware")
    yield {"emu": emu, "port": server.server_address[1]}
    ray.shutdown()
    server.shutdown()
    server.server_close()


def rig_cfg(port: int, **actor) -> dict:
    cfg = yaml.safe_load((ROOT / "conf/rig/synapse.yaml").read_text())
    cfg.update(host="127.0.0.1", port=port, read={"delay_s": 0.01, "poll_s": 0.005, "timeout_s": 2.0})
    cfg["limits"]["min_interval_s"] = 0.0
    cfg["actor"].update(detached=False, poll_s=0.05, **actor)
    return cfg


def online_cfg(**over) -> dict:
    cfg = yaml.safe_load((ROOT / "conf/online/example_rat.yaml").read_text())
    cfg.update(mode="autonomous", save_windows=False, **over)
    return cfg


class ListTracker:
    def __init__(self):
        self.queries, self.summaries = [], []

    def log_query(self, rec):
        self.queries.append(rec)

    def log_summary(self, summary, artifacts):
        self.summaries.append((summary, [Path(a) for a in artifacts]))


def test_full_online_session_through_the_pinned_actor(cluster, tmp_path):
    emu, port = cluster["emu"], cluster["port"]
    n0 = len(emu.stimulations)
    tracker = ListTracker()
    algo = {"name": "gpbo", "kappa": 3.0, "n_random": 1, "fit_steps": 3}
    out = run_online(online_cfg(n_queries=10, algorithm=algo), rig_cfg(port), run_dir=tmp_path / "s",
                     tracker=tracker, echo=lambda s: None)
    assert ray.available_resources().get("tdt_rig", 0) == 0  # the actor holds the rig's only unit
    recs = Journal.read(tmp_path / "s" / "journal.jsonl")
    queries = [r for r in recs if r["kind"] == "query"]
    trials = [r for r in recs if r["kind"] == "trial"]
    assert [r["query"] for r in queries] == list(range(10)) and recs[-1]["kind"] == "end"
    for r in queries:
        assert {"point", "coords", "channel", "params", "response", "valid", "best_point", "exploration",
                "exploitation", "t_ask", "t_end", "t"} <= set(r)
        assert r["t_ask"] <= r["t_end"] <= r["t"]
    # the stimulator saw exactly the journal's stimulations, in order
    stims = emu.stimulations[n0:]
    assert [s["channel"] for s in stims] == [t["params"]["channel"] for t in trials]
    assert [t["t_stim"] for t in trials] == sorted(t["t_stim"] for t in trials)
    # the tracker (MLflow in the launcher) got every query and the summary with its artifacts
    assert [r["seq"] for r in tracker.queries] == [r["seq"] for r in queries]
    summary, artifacts = tracker.summaries[-1]
    assert summary["n_queries"] == 10 and all(a.exists() for a in artifacts)
    assert {a.name for a in artifacts} >= {"estimated_map.png", "performance.png", "estimated_map.json"}
    # the final map estimates the subject's true map (rat1/TA through the same ch2xy)
    est = json.loads((tmp_path / "s" / "estimated_map.json").read_text())
    truth = np.asarray(emu.rig.problems[0].truth)
    space = emu.rig.space
    t = [truth[space.point_of_index([int(x) - 1, int(y) - 1])] for x, y in est["points"]]
    assert np.corrcoef(t, est["mean"])[0, 1] > 0.5
    assert out["best"]["point"] == queries[-1]["best_point"]
    assert out["best"]["coords"] == {"x": est["points"][out["best"]["point"]][0],
                                     "y": est["points"][out["best"]["point"]][1]}


def test_two_concurrent_sessions_never_interleave(cluster, tmp_path):
    emu, port = cluster["emu"], cluster["port"]
    n0 = len(emu.stimulations)
    waits, results, errors = [], {}, []

    def session(name, amp):
        try:
            results[name] = run_online(
                online_cfg(name=name, n_queries=6, algorithm={"name": "extensive"},
                           stimulation={**online_cfg()["stimulation"], "amplitude_uA": amp}),
                rig_cfg(port, busy="wait"), run_dir=tmp_path / name,
                echo=lambda s: waits.append((name, s)) if "in use" in s else None)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=session, args=("a", 25.0)), threading.Thread(target=session, args=("b", 35.0))]
    for th in threads:
        th.start()
        time.sleep(0.05)
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    assert results["a"]["n_queries"] == results["b"]["n_queries"] == 6
    assert len(waits) == 1  # the later session found the rig busy and waited
    amps = [s["amplitude_uA"] for s in emu.stimulations[n0:]]
    switches = sum(a != b for a, b in zip(amps, amps[1:]))
    assert switches == 1 and len(amps) == sum(results[k]["n_stimulations"] for k in "ab")
    first, second = ("a", "b") if amps[0] == 25.0 else ("b", "a")
    assert waits[0][0] == second
    # and by time: the second session's first stimulation follows the first's last
    tj = {k: [r["t_stim"] for r in Journal.read(tmp_path / k / "journal.jsonl") if r["kind"] == "trial"] for k in "ab"}
    assert max(tj[first]) < min(tj[second])
    # one actor served both, leasing the rig to one session after the other
    ids = {k: results[k]["session_id"] for k in "ab"}
    events = ray.get(get_rig_actor(rig_cfg(port)).session_events.remote())
    mine = [(e["event"], e["session"]) for e in events if e["session"] in ids.values()]
    assert mine == [("open", ids[first]), ("close", ids[first]), ("open", ids[second]), ("close", ids[second])]


def test_second_session_refused_and_unsafe_queries_never_sent(cluster, tmp_path):
    emu, port = cluster["emu"], cluster["port"]
    handle = get_rig_actor(rig_cfg(port))
    assert ray.get(handle.open_session.remote("someone-else"))["granted"]
    n_stims, n_writes = len(emu.stimulations), len(emu.writes)
    try:
        with pytest.raises(SessionStopped, match="in use by session 'someone-else'; refused") as info:
            run_online(online_cfg(n_queries=2, algorithm={"name": "extensive"}), rig_cfg(port, busy="refuse"),
                       run_dir=tmp_path / "r", echo=lambda s: None)
        assert isinstance(info.value.cause, RigBusy)
        with pytest.raises(RigBusy, match="does not hold rig"):  # no lease, no stimulation
            ray.get(handle.stimulate.remote("intruder", SAFE))
    finally:
        assert ray.get(handle.close_session.remote("someone-else"))
    # an unsafe query through the actor: refused in the rig, raised through Ray as the same exception
    sess = ActorRigSession(handle, "safety-test", busy="refuse")
    sess.open()
    try:
        for bad in ({"amplitude_uA": 120.0}, {"channel": 0}, {"frequency_hz": float("nan")}):
            with pytest.raises(SafetyViolation, match="nothing sent"):
                sess.stimulate({**SAFE, **bad})
    finally:
        sess.close()
    # a session whose space holds unsafe points is refused before its journal exists
    space = {"x": list(range(1, 9)), "y": [1, 2, 3, 4], "amplitude_uA": [30.0, 150.0]}
    stim = {"frequency_hz": 333.333, "pulse_width_us": 200.0, "n_pulses": 13}
    with pytest.raises(SafetyViolation, match="break the rig's safety limits"):
        run_online(online_cfg(n_queries=2, space=space, stimulation=stim, algorithm={"name": "extensive"}),
                   rig_cfg(port), run_dir=tmp_path / "u", echo=lambda s: None)
    assert not (tmp_path / "u" / "journal.jsonl").exists()
    assert len(emu.stimulations) == n_stims and len(emu.writes) == n_writes


def _descendants(root: int) -> set[int]:
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in out]
        out.update(kids)
        todo.extend(kids)
    return out


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket in LISTEN state held by ``pids``."""
    inode_pid = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inode_pid[link[8:-1]] = pid
        except OSError:
            pass
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inode_pid:
                raw, port = cols[1].split(":")
                addr = (socket.inet_ntop(socket.AF_INET, bytes.fromhex(raw)[::-1]) if len(raw) == 8 else
                        socket.inet_ntop(socket.AF_INET6, b"".join(bytes.fromhex(raw[i:i + 8])[::-1]
                                                                  for i in range(0, 32, 8))))
                out.append((inode_pid[cols[9]], addr, int(port, 16)))
    return out


def test_local_ray_listens_on_loopback_only(cluster):
    """The local Ray the launcher and the online runner start (hardware.local_ray) serves its GCS, raylet,
    workers and agents on 127.0.0.1 only, never on every interface."""
    ray.get([ray.remote(lambda: os.getpid()).remote() for _ in range(2)])  # workers up
    socks = _listening(_descendants(os.getpid()))
    assert len({pid for pid, _, _ in socks}) >= 3  # GCS, raylet, workers, agents: a real Ray was looked at
    assert {addr for _, addr, _ in socks} <= {"127.0.0.1", "::ffff:127.0.0.1"}, socks

