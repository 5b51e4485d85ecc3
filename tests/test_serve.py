"""The session service (hardware.serve) as a real server process on loopback, driven over HTTP."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from hardware.serve.client import ServiceError
from hardware.serve.process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
RIG = "conf/rig/external.yaml"


Server = ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve") / "root")
    yield s
    s.stop()


def online(n: int = 8, **kw) -> dict:
    with open(ROOT / "conf/online/example_rat.yaml") as fh:
        cfg = yaml.safe_load(fh)
    cfg.update(
        mode="autonomous",
        n_queries=n,
        save_windows=False,
        algorithm={"name": "gpbo", "kappa": 3.0, "n_random": 1, "fit_steps": 2},
    )
    cfg.update(kw)
    return cfg


def respond(q: dict) -> float:
    """A smooth map over the array, peaked at (6, 2)."""
    c = q["coords"]
    return 0.05 + math.exp(-((c["x"] - 6) ** 2 + (c["y"] - 2) ** 2) / 4.0)


def written(path: Path, within_s: float = 30.0) -> bool:
    """``path`` exists, or appears within ``within_s`` (the server writes outputs off the request path)."""
    deadline = time.monotonic() + within_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return path.exists()


def journal_of(server: Server, sid: str) -> Path:
    return server.root / sid / "journal.jsonl"


def records(path: Path, kind: str | None = None) -> list[dict]:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in recs if kind is None or r["kind"] == kind]


def post(server: Server, path: str, data=None, headers=None, **kw) -> requests.Response:
    h = {**server.auth, "Content-Type": "application/json", **(headers or {})}
    return requests.post(server.url + path, data=data, headers=h, timeout=30, **kw)


# ---- 1. the same decisions as the in-process path ----------------------------------------------------------
def test_http_session_matches_in_process_run(server, tmp_path):
    import torch

    from hardware.online import run_online
    from neuro_opt.threads import intra_op_threads

    with open(ROOT / "conf/rig/simulated.yaml") as fh:
        sim = yaml.safe_load(fh)
    sim["latency_s"] = 0.0
    sim["limits"]["min_interval_s"] = 0.0
    cfg = online(10, seed=3)
    # as in the service's process: torch's own default dtype (conftest sets float64), one intra-op thread
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with intra_op_threads(1):
            run_online(cfg, sim, run_dir=tmp_path / "inproc", use_actor=False, echo=lambda s: None)
    finally:
        torch.set_default_dtype(dtype)
    ref = records(tmp_path / "inproc" / "journal.jsonl", "query")
    assert len(ref) == 10

    c = server.client()
    sid = c.create(cfg)
    for k, r in enumerate(ref):
        q = c.ask(sid)
        assert (q["query"], q["point"]) == (k, r["point"]), f"query {k}"
        assert q["confirmation"] == "none" and q["n_done"] == k and q["n_queries"] == 10
        out = c.tell(sid, q["query_id"], r["response"], valid=r["valid"], reason=r["reason"])
        assert out["duplicate"] is False and out["n_done"] == k + 1
    got = records(journal_of(server, sid), "query")
    for key in ("point", "best_point", "exploration", "exploitation", "told"):
        assert [g[key] for g in got] == [r[key] for r in ref], key
    st = c.state(sid)
    assert st["status"] == "complete" and st["n_done"] == 10 and len(st["queries"]) == 10
    assert written(server.root / sid / "session.json") and written(server.root / sid / "estimated_map.json")
    with pytest.raises(ServiceError) as e:
        c.ask(sid)
    assert e.value.status == 409 and "complete" in e.value.message
    assert any(s["session_id"] == sid and s["status"] == "complete" for s in c.sessions())


# ---- 2. SIGKILL mid-session, restart, same query -----------------------------------------------------------
def test_killed_server_resumes_the_pending_query(server, tmp_path):
    cfg = online(8, seed=5)
    root = tmp_path / "root"
    s1 = Server(root, wait=False)  # starts while the uninterrupted run goes on
    ref = server.client()
    ref_sid = ref.create(cfg)
    ref.drive(ref_sid, respond)
    want = [r["point"] for r in records(journal_of(server, ref_sid), "query")]
    s1.wait()
    c = s1.client()
    sid = c.create(cfg)
    for _ in range(3):
        q = c.ask(sid)
        c.tell(sid, q["query_id"], respond(q))
    pending = c.ask(sid)
    s1.stop(signal.SIGKILL)
    s2 = Server(root)
    try:
        c2 = s2.client()
        assert s2.token == s1.token
        again = c2.ask(sid)
        assert again["query_id"] == pending["query_id"] and again["point"] == pending["point"]
        final = c2.drive(sid, respond)
        assert final["status"] == "complete" and final["n_done"] == 8
        # its figures were drawn by the server's drawing process, which must not outlive a killed server
        assert written(root / sid / "session.json")
        tasks = Path(f"/proc/{s2.proc.pid}/task").glob("*/children")  # a child belongs to the thread that started it
        children = [c for t in tasks for c in t.read_text().split()]
        assert children, "the server started no drawing process"
        s2.stop(signal.SIGKILL)
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{c}").exists() for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(Path(f"/proc/{c}").exists() for c in children), "the drawing process outlived the server"
    finally:
        s2.stop()
    got = records(root / sid / "journal.jsonl", "query")
    assert [r["query"] for r in got] == list(range(8))
    assert len({r["query_id"] for r in got}) == 8
    assert [r["point"] for r in got] == want
    assert records(root / sid / "journal.jsonl", "resume")


# ---- 3. authentication -------------------------------------------------------------------------------------
def test_requests_without_the_token_are_refused(server):
    c = server.client()
    sid = c.create(online(6))
    q = c.ask(sid)
    before = journal_of(server, sid).read_bytes()
    n_sessions = len(list(server.root.iterdir()))
    tell = json.dumps({"query_id": q["query_id"], "response": 1.0})
    calls = [
        ("post", "/api/sessions", json.dumps({"online": online(6)})),
        ("post", f"/api/sessions/{sid}/tell", tell),
        ("post", f"/api/sessions/{sid}/ask", None),
        ("post", f"/api/sessions/{sid}/stop", None),
        ("post", f"/api/sessions/{sid}/resume", None),
        ("get", f"/api/sessions/{sid}/state", None),
        ("get", f"/api/sessions/{sid}/events", None),
        ("get", "/api/sessions", None),
        ("get", "/", None),
        ("get", f"/sessions/{sid}", None),
    ]
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {server.token}"}]
    for method, path, body in calls:
        for headers in wrong:
            r = requests.request(method, server.url + path, data=body, headers=headers, timeout=10)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert "token" in r.json()["error"]
        r = requests.request(method, server.url + path, data=body, cookies={"neuro_opt_token": "nope"}, timeout=10)
        assert r.status_code == 401
    r = requests.get(server.url + "/?token=nope", allow_redirects=False, timeout=10)
    assert r.status_code == 401
    assert journal_of(server, sid).read_bytes() == before
    assert len(list(server.root.iterdir())) == n_sessions


def test_token_in_the_url_sets_a_cookie_and_redirects(server):
    sid = server.client().create(online(6))
    r = requests.get(f"{server.url}/sessions/{sid}?token={server.token}&x=1", allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["location"] == f"/sessions/{sid}?x=1"
    cookie = r.headers["set-cookie"]
    assert f"neuro_opt_token={server.token}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"neuro_opt_token": server.token}
    page = requests.get(f"{server.url}/", cookies=jar, timeout=10)
    assert page.status_code == 200 and sid in page.text
    assert requests.get(f"{server.url}/api/sessions/{sid}/state", cookies=jar, timeout=10).json()["session_id"] == sid
    js = requests.get(f"{server.url}/static/plotly.min.js", timeout=10)
    assert js.status_code == 200 and len(js.content) > 1_000_000
    assert requests.get(f"{server.url}/static/..%2Fapp.py", timeout=10).status_code == 404


# ---- 4. bad bodies -----------------------------------------------------------------------------------------
def test_bad_bodies_are_refused_and_journal_nothing(server):
    c = server.client()
    sid = c.create(online(6))
    q = c.ask(sid)
    qid = q["query_id"]
    path = f"/api/sessions/{sid}/tell"
    before = journal_of(server, sid).read_bytes()
    cases = [
        ({"response": 1.0}, 422, "query_id"),
        ({"query_id": qid}, 422, "response"),
        (f'{{"query_id": "{qid}", "response": NaN}}', 400, "NaN"),
        (f'{{"query_id": "{qid}", "response": Infinity}}', 400, "Infinity"),
        (f'{{"query_id": "{qid}", "response": -Infinity}}', 400, "Infinity"),
        (f'{{"query_id": "{qid}", "response": 1e999}}', 400, "1e999"),
        ({"query_id": qid, "response": "1.0"}, 422, "response"),
        ({"query_id": qid, "response": True}, 422, "response"),
        ({"query_id": qid, "response": 1.0, "valid": "yes"}, 422, "valid"),
        ({"query_id": 7, "response": 1.0}, 422, "query_id"),
        ({"query_id": qid, "response": 1.0, "extra": 1}, 422, "extra"),
        ({"query_id": qid, "response": 1.0, "readback": {"channel": 1}}, 422, "readback"),
        ({"query_id": qid, "response": 1.0, "readback": {"amplitude_uA": "x"}}, 422, "readback"),
        ([qid, 1.0], 422, "body"),
        ('{"query_id": ', 400, "JSON"),
        ("", 422, "body"),
        (json.dumps({"query_id": qid, "response": 1.0, "reason": "x" * 100 * 1024}), 413, "bytes"),
    ]
    for body, status, word in cases:
        data = body if isinstance(body, str) else json.dumps(body)
        r = post(server, path, data=data)
        assert r.status_code == status, (body if len(str(body)) < 200 else "big", r.status_code, r.text)
        assert word in r.json()["error"], (body if len(str(body)) < 200 else "big", r.json())
        assert journal_of(server, sid).read_bytes() == before
    # an oversized body without a Content-Length (chunked)
    big = (b'{"query_id": "%s", "response": 1.0, "reason": "' % qid.encode()) + b"x" * 100 * 1024 + b'"}'
    r = post(server, path, data=iter([big[i : i + 8192] for i in range(0, len(big), 8192)]))
    assert r.status_code == 413 and "bytes" in r.json()["error"]
    # bad online configs: 422 naming the key, no session folder
    n = len(list(server.root.iterdir()))
    for cfg, word in [
        (online(0), "n_queries"),
        (online(6, bogus=1), "bogus"),
        (online(6, algorithm={"name": "nope"}), "nope"),
        (
            online(
                6, stimulation={"amplitude_uA": 500.0, "frequency_hz": 333.0, "pulse_width_us": 200.0, "n_pulses": 13}
            ),
            "amplitude_uA",
        ),
    ]:
        r = post(server, "/api/sessions", data=json.dumps({"online": cfg}))
        assert r.status_code == 422 and word in r.json()["error"], r.text
    r = post(server, "/api/sessions", data=json.dumps({"online": online(6), "more": 1}))
    assert r.status_code == 422 and "more" in r.json()["error"]
    assert len(list(server.root.iterdir())) == n
    assert journal_of(server, sid).read_bytes() == before
    assert c.tell(sid, qid, respond(q))["n_done"] == 1  # the session still works


# ---- 5. idempotent tells -----------------------------------------------------------------------------------
def test_tell_is_idempotent_and_conflicts_are_refused(server):
    c = server.client()
    sid = c.create(online(6))
    q = c.ask(sid)
    assert c.ask(sid)["query_id"] == q["query_id"]  # asked again before the tell: the same query
    first = c.tell(sid, q["query_id"], 0.5)
    again = c.tell(sid, q["query_id"], 0.5)
    assert first["duplicate"] is False and again["duplicate"] is True and again["n_done"] == 1
    before = journal_of(server, sid).read_bytes()
    with pytest.raises(ServiceError) as e:
        c.tell(sid, q["query_id"], 0.7)
    assert e.value.status == 409 and q["query_id"] in e.value.message
    with pytest.raises(ServiceError) as e:
        c.tell(sid, "q9-deadbeef", 0.7)
    assert e.value.status == 404 and "q9-deadbeef" in e.value.message
    with pytest.raises(ServiceError) as e:
        c.ask("no-such-session")
    assert e.value.status == 404
    assert journal_of(server, sid).read_bytes() == before
    assert [r["query_id"] for r in records(journal_of(server, sid), "query")] == [q["query_id"]]


def test_operator_mode_asks_the_operator_before_each_stimulation(server):
    c = server.client()
    sid = c.create(online(6, mode="operator"))
    prompts, answers, delivered = [], iter(["", "maybe", "y", "q"]), []

    def operator(prompt):
        prompts.append(prompt)
        return next(answers)

    def deliver(q):
        delivered.append(q["query_id"])
        return respond(q)

    st = c.drive(sid, deliver, confirm=operator)
    # two stimulations confirmed ('' and 'y'; 'maybe' asked again), the third stopped at 'q' and left pending
    assert len(prompts) == 4 and "Enter to stimulate" in prompts[0] and len(delivered) == 2
    assert st["n_done"] == 2 and st["pending"] is not None and st["confirmation"] == "operator"
    assert st["pending"]["query_id"] not in delivered


# ---- readback, stop, resume, events ------------------------------------------------------------------------
def test_readback_mismatch_stops_and_resume_continues(server):
    c = server.client()
    sid = c.create(online(6))
    events = requests.get(f"{server.url}/api/sessions/{sid}/events", headers=server.auth, stream=True, timeout=30)
    lines = events.iter_lines(decode_unicode=True)

    def next_state() -> dict:
        for line in lines:
            if line.startswith("data: "):
                return json.loads(line[6:])
        raise AssertionError("the event stream ended")

    assert next_state()["n_done"] == 0
    q = c.ask(sid)
    ok = c.tell(sid, q["query_id"], respond(q), readback=dict(q["params"]))
    assert ok["n_done"] == 1 and next_state()["n_done"] == 1
    q = c.ask(sid)
    wrong = {**q["params"], "amplitude_uA": q["params"]["amplitude_uA"] * 2}
    with pytest.raises(ServiceError) as e:
        c.tell(sid, q["query_id"], respond(q), readback=wrong)
    assert e.value.status == 409 and "amplitude_uA" in e.value.message
    assert next_state()["status"] == "stopped"
    assert records(journal_of(server, sid), "safety")[0]["query_id"] == q["query_id"]
    assert written(server.root / sid / "session.json")
    with pytest.raises(ServiceError) as e:
        c.tell(sid, q["query_id"], respond(q))
    assert e.value.status == 409 and "stopped" in e.value.message
    assert c.resume(sid)["status"] == "active" and next_state()["status"] == "active"
    assert c.ask(sid)["query_id"] == q["query_id"]
    held = {
        "amplitude": 30.0,
        "period": 1000 / 333.333,
        "channel": q["params"]["channel"],
        "pulse_width": 200.0,
        "n_pulses": 13,
    }
    assert c.tell(sid, q["query_id"], respond(q), readback=held)["n_done"] == 2
    assert next_state()["n_done"] == 2
    assert c.stop(sid)["status"] == "stopped" and next_state()["status"] == "stopped"
    events.close()


# ---- 6. many sessions at once, a stalled client and a dead subscriber --------------------------------------
def test_concurrent_sessions_with_a_stalled_client_and_a_dead_subscriber(server):
    n = 8
    c = server.client()
    sids = [c.create(online(6, seed=i)) for i in range(n)]
    # a client that sends half a request and stalls
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(
        f"POST /api/sessions/{sids[0]}/tell HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n"
        f'Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{"query_id": '.encode()
    )
    # a subscriber that never reads, on a session being told
    dead = socket.socket()
    dead.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    dead.connect(("127.0.0.1", server.port))
    dead.sendall(
        f"GET /api/sessions/{sids[0]}/events HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {server.token}\r\n\r\n".encode()
    )
    results, errors, slowest = {}, [], [0.0]

    def run(sid):
        try:
            cl = server.client()
            while True:
                try:
                    q = cl.ask(sid)
                except ServiceError as exc:
                    assert exc.status == 409
                    break
                t = time.monotonic()
                cl.tell(sid, q["query_id"], respond(q))
                slowest[0] = max(slowest[0], time.monotonic() - t)
            results[sid] = cl.state(sid)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(sid,)) for sid in sids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wall = time.monotonic() - t0
    stalled.close()
    dead.close()
    assert not errors, errors
    assert sorted(results) == sorted(sids)
    for sid, st in results.items():
        assert st["status"] == "complete" and st["n_done"] == 6, sid
        assert [r["query"] for r in records(journal_of(server, sid), "query")] == list(range(6))
    assert slowest[0] < 20 and wall < 60, (slowest[0], wall)
    assert requests.get(f"{server.url}/api/sessions", headers=server.auth, timeout=10).status_code == 200


# ---- 7. the token file -------------------------------------------------------------------------------------
def test_token_file_is_private_and_a_readable_one_is_refused(server, tmp_path):
    assert stat.S_IMODE((server.root / "token").stat().st_mode) == 0o600
    tok = tmp_path / "token"
    tok.write_text("x" * 43 + "\n")
    os.chmod(tok, 0o644)
    cmd = [
        sys.executable,
        "-m",
        "hardware.serve",
        "--port",
        str(free_port()),
        "--root",
        str(tmp_path / "r"),
        "--token-file",
        str(tok),
    ]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "0644" in err[0] and "chmod 600" in err[0]


# ---- the load benchmark ------------------------------------------------------------------------------------
def test_serve_load_measures_http_sessions_against_their_in_process_twins(server, tmp_path):
    """+exp=serve_load's measurement on this server: 1 and 2 concurrent sessions over HTTP and the same
    sessions in-process; every HTTP session asks its twin's points; the figures are the rounds'."""
    from sweeps.kinds.serve_load import ServeLoadKind, measure, summarize
    from tests.test_config import composed

    params, cfg, rig = ServeLoadKind().plan(composed("+exp=serve_load", "params.sessions=[1,2]", "params.rounds=1",
                                                     "params.n_queries=3"))
    assert cfg["mode"] == "autonomous" and cfg["n_queries"] == 3 and "limits" in rig
    rows, refs = measure(server, params, cfg, rig, tmp_path / "reference", seed=0, say=lambda s: None)
    summary = summarize(params, rows, refs, tmp_path)
    groups = {g["params"]["sessions"]: g for g in summary["groups"]}
    assert set(groups) == {1, 2} and summary["decisions"] == {"sessions_compared": 3, "identical": True}
    for n, g in groups.items():
        (rnd,) = g["rounds"]
        m = {k: v[0] for k, v in g["metrics"].items()}
        assert m["completed"] == n and m["errors"] == 0 and g["n"] == 3 * n and g["same_points"] == n
        assert m["requests_per_s"] == pytest.approx(rnd["requests_per_s"]) and m["ask_p99_ms"] == rnd["ask_p99_ms"]
        assert 0 < m["ask_p50_ms"] <= m["ask_p99_ms"] and rnd["outputs_s"] >= 0
    for r in rows:  # measured sessions were driven to the end and their outputs written before the next
        assert all(written(server.root / sid / "session.json", 0) for sid in r["session_ids"])
    assert (tmp_path / "figures" / "serve_load.png").exists()
    assert summary["reference"]["rounds"] == 1 and summary["reference"]["tell_p50_ms"] > 0
