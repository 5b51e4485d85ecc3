"""A load test of the session service: many concurrent sessions driven over HTTP.

:func:`drive_sessions` starts ``n_sessions`` client threads against a running server; each
creates its own session from one online config and answers every asked stimulation from a
simulated subject (:func:`bump_subject`) until the session completes. Every request is timed
on the client side, so a figure includes HTTP, JSON, the server's queueing and the journal's
fsync: what a lab's rig software waits for. :func:`in_process` runs the same sessions through
:class:`~hardware.online.core.SessionCore` directly, with no server: the reference the HTTP
figures are divided by.

``python -m sweeps.launch +exp=serve_load`` (:mod:`sweeps.kinds.serve_load`) starts the
server, runs both and records the figures.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from hardware.online.config import OnlineConfig, StimulationPlan
from hardware.online.core import SessionCore, start_journal
from hardware.safety import SafetyLimits


def bump_subject(session: int, seed: int = 0, noise: float = 0.05) -> Callable[[dict], float]:
    """A simulated subject: a Gaussian bump over the coordinates of a query plus noise.

    The bump's centre and the noise depend on ``session`` and ``seed`` only, so a session's
    responses are the same whichever thread or process answers it.
    """
    rng = np.random.default_rng([seed, session])
    centre: dict[str, float] = {}

    def respond(ask: dict) -> float:
        coords = ask["coords"]
        for k, v in coords.items():
            centre.setdefault(k, float(v) + float(rng.uniform(-2, 2)))
        d2 = sum((float(v) - centre[k]) ** 2 for k, v in coords.items())
        return float(math.exp(-d2 / 8.0) + noise * rng.standard_normal())

    return respond


def drive_sessions(url: str, token: str, online: dict, n_sessions: int, seed: int = 0, timeout_s: float = 60.0) -> dict:
    """Run ``n_sessions`` sessions at once against the server at ``url``; returns the figures.

    Returns:
        ``session_ids``, ``sessions``, ``completed``, ``requests`` (asks + tells), ``errors`` (messages),
        ``wall_s`` (first create to last tell), ``requests_per_s``, ``queries_per_s``,
        ``ask_ms`` and ``tell_ms`` (every request's latency), and ``points`` (per session,
        the points asked in order).
    """
    from hardware.serve.client import SessionClient

    ask_ms: list[list[float]] = [[] for _ in range(n_sessions)]
    tell_ms: list[list[float]] = [[] for _ in range(n_sessions)]
    points: list[list[int]] = [[] for _ in range(n_sessions)]
    ids: list[str | None] = [None] * n_sessions
    errors: list[str] = []
    done = [False] * n_sessions
    start = threading.Barrier(n_sessions)

    def one(i: int) -> None:
        try:
            client = SessionClient(url, token, timeout=timeout_s)
            sid = ids[i] = client.create(online)
            respond = bump_subject(i, seed)
            start.wait()
            for _ in range(int(online["n_queries"])):
                t0 = time.perf_counter()
                ask = client.ask(sid)
                t1 = time.perf_counter()
                ask_ms[i].append((t1 - t0) * 1e3)
                points[i].append(int(ask["point"]))
                y = respond(ask)
                t2 = time.perf_counter()
                client.tell(sid, ask["query_id"], y)
                tell_ms[i].append((time.perf_counter() - t2) * 1e3)
            done[i] = True
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported, none stops the others
            errors.append(f"session {i}: {type(exc).__name__}: {exc}")
            try:
                start.abort()
            except threading.BrokenBarrierError:
                pass

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n_sessions)]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    asks = [x for xs in ask_ms for x in xs]
    tells = [x for xs in tell_ms for x in xs]
    return {
        "sessions": n_sessions,
        "completed": sum(done),
        "requests": len(asks) + len(tells),
        "errors": errors,
        "wall_s": wall,
        "requests_per_s": (len(asks) + len(tells)) / wall,
        "queries_per_s": len(tells) / wall,
        "ask_ms": asks,
        "tell_ms": tells,
        "points": points,
        "session_ids": ids,
    }


def wait_for_outputs(root: Path, session_ids: list, timeout_s: float = 300.0) -> float:
    """Seconds until every session's ``session.json`` is written (the server writes it after the
    last tell, off the request path); TimeoutError after ``timeout_s``."""
    t0 = time.perf_counter()
    for sid in session_ids:
        while sid is not None and not (Path(root) / sid / "session.json").exists():
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"session {sid}: no session.json {timeout_s:g} s after its last tell")
            time.sleep(0.05)
    return time.perf_counter() - t0


def in_process(online: dict, rig_cfg: dict, n_sessions: int, root: Path, seed: int = 0) -> dict:
    """The same sessions through :class:`SessionCore` in this process, one after another (the reference)."""
    cfg = OnlineConfig.from_dict(online)
    plan = StimulationPlan.for_rig(cfg, rig_cfg, SafetyLimits.from_dict(rig_cfg["limits"]))
    ask_ms, tell_ms, points = [], [], []
    t_start = time.perf_counter()
    for i in range(n_sessions):
        journal = start_journal(
            root / f"ref{i}", f"ref{i}", cfg, plan, {"name": rig_cfg.get("name"), "kind": "external"}, "none"
        )
        core, respond, mine = SessionCore(cfg, plan, journal, echo=lambda s: None), bump_subject(i, seed), []
        try:
            for _ in range(cfg.n_queries):
                t0 = time.perf_counter()
                ask = core.ask()
                ask_ms.append((time.perf_counter() - t0) * 1e3)
                mine.append(int(ask["point"]))
                y = respond(ask)
                t2 = time.perf_counter()
                core.tell(ask["query_id"], y)
                tell_ms.append((time.perf_counter() - t2) * 1e3)
        finally:
            journal.close()
        points.append(mine)
    wall = time.perf_counter() - t_start
    return {
        "sessions": n_sessions,
        "wall_s": wall,
        "queries_per_s": len(tell_ms) / wall,
        "ask_ms": ask_ms,
        "tell_ms": tell_ms,
        "points": points,
    }
