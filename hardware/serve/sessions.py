"""The registry of live sessions: one :class:`~hardware.online.core.SessionCore` per session id.

Each session lives in ``<root>/<session_id>/journal.jsonl``. The registry creates sessions,
reopens a session from disk the first time a request names it (after a server restart, say),
serializes the requests of one session with its own ``threading.Lock`` (sessions run side by
side), writes a session's outputs when it completes or stops, and fans its state out to the
server-sent-event subscribers of its live page.

A subscriber has a bounded queue: publishing never waits for it. A subscriber that falls behind
loses its oldest states (each event carries the full state, so the newest is enough), and one
that has not taken a single event for :data:`MAX_MISSED` publications is disconnected.
"""

from __future__ import annotations

import asyncio
import collections
import json
import multiprocessing
import os
import queue
import re
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from hardware.journal import Journal, to_jsonable
from hardware.online.config import JOURNAL_NAME, OnlineConfig, StimulationPlan, plain
from hardware.online.core import SessionCore, check_resumable, new_session_id, start_journal
from hardware.online.outputs import draw_figures, write_outputs
from hardware.safety import STIM_FIELDS, STIMULATOR_KEYS, SafetyLimits, StimParams, holds
from neuro_opt.threads import intra_op_threads

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
QUEUE_SIZE = 16  # states a subscriber may hold unread
MAX_MISSED = 256  # publications a subscriber may miss in a row before it is disconnected


class TurnLock:
    """A re-entrant lock handed out in arrival order.

    Written here because the standard library has no fair lock: ``threading.Lock`` lets a thread
    that just released take it again ahead of the waiters, so under load some requests wait many
    turns while others wait none.
    """

    def __init__(self):
        self._cv = threading.Condition()
        self._next = self._serving = self._depth = 0
        self._owner: int | None = None

    def __enter__(self) -> "TurnLock":
        me = threading.get_ident()
        with self._cv:
            if self._owner == me:
                self._depth += 1
                return self
            ticket, self._next = self._next, self._next + 1
            while self._serving != ticket:
                self._cv.wait()
            self._owner, self._depth = me, 1
        return self

    def __exit__(self, *exc) -> None:
        with self._cv:
            self._depth -= 1
            if self._depth == 0:
                self._owner, self._serving = None, self._serving + 1
                self._cv.notify_all()


_STEP = TurnLock()  # re-entrant: a create or reopen inside a request that holds it


@contextmanager
def optimizer_step():
    """One optimizer step at a time in this process, on one torch thread.

    Threads that interleave many small torch operations convoy on the GIL (each operation lets it
    go and takes it back); taking turns keeps every step's time its own compute, and the server's
    throughput that of one session.
    """
    with _STEP, intra_op_threads(1):
        yield


def exit_with_parent(parent: int) -> None:
    """In the drawing process: exit once the server that started it is gone (a killed server
    cannot shut its pool down, and the process would wait for work forever)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class UnknownSession(LookupError):
    """No session of that id, loaded or on disk."""


class Subscriber:
    """One server-sent-events stream: a bounded queue of state lines, filled from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: collections.deque[str] = collections.deque(maxlen=QUEUE_SIZE)
        self.wake = asyncio.Event()
        self.missed = 0
        self.closed = False

    def push(self, data: str) -> None:
        """Queue ``data`` (dropping the oldest if full); never blocks."""
        if len(self.queue) == self.queue.maxlen:
            self.missed += 1
            if self.missed >= MAX_MISSED:
                self.closed = True
        self.queue.append(data)
        try:
            self.loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:  # the event loop is gone (shutdown)
            self.closed = True

    def pop(self) -> str | None:
        try:
            data = self.queue.popleft()
        except IndexError:
            return None
        self.missed = 0
        return data


@dataclass
class Entry:
    """A session of the registry: its core (None until loaded), lock and subscribers."""

    session_id: str
    run_dir: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    core: SessionCore | None = None
    subscribers: set = field(default_factory=set)
    sub_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def confirmation(self) -> str:
        return self.core.journal.header.get("confirmation", "none")

    @property
    def rig(self) -> dict:
        r = self.core.journal.header.get("rig") or {}
        return {"name": r.get("name", "external"), "kind": r.get("kind", "external")}


class Registry:
    """The sessions under ``root`` on the rig of ``rig_cfg`` (see the module docstring).

    Args:
        root: the folder of the session folders.
        rig_cfg: the rig config (``conf/rig/external.yaml``: name, ch2xy, electrode_dims, muscles, limits).
        make_optimizer: optimizer factory for :class:`SessionCore` (default ``neuro_opt.algorithms.make``).
        echo: progress printer.
    """

    def __init__(self, root: Path, rig_cfg: Mapping, make_optimizer: Callable | None = None, echo=print):
        self.root = Path(root)
        self.rig_cfg = plain(dict(rig_cfg))
        if "limits" not in self.rig_cfg:
            raise ValueError("rig config: missing key 'limits' (the safety limits every stimulation must pass)")
        self.limits = SafetyLimits.from_dict(self.rig_cfg["limits"])
        self.make_optimizer, self.echo = make_optimizer, echo
        self._entries: dict[str, Entry] = {}
        self._mu = threading.Lock()
        self._to_write: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None
        self._drawer: ProcessPoolExecutor | None = None

    # ---- finding sessions ------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Every session id, loaded or on disk, oldest first."""
        on_disk = {p.parent.name for p in self.root.glob(f"*/{JOURNAL_NAME}")} if self.root.exists() else set()
        with self._mu:
            return sorted(on_disk | set(self._entries))

    def exists(self, session_id: str) -> bool:
        return bool(SESSION_ID.match(session_id)) and (
            session_id in self._entries or (self.root / session_id / JOURNAL_NAME).exists()
        )

    def entry(self, session_id: str) -> Entry:
        """The entry of ``session_id`` (not necessarily loaded); :class:`UnknownSession` if there is none."""
        if not self.exists(session_id):
            raise UnknownSession(f"no session {session_id!r} under {self.root}")
        with self._mu:
            if session_id not in self._entries:
                self._entries[session_id] = Entry(session_id, self.root / session_id)
            return self._entries[session_id]

    def loaded(self, entry: Entry, resume: bool = True) -> SessionCore:
        """``entry``'s core, reopened from its journal if not loaded (call under ``entry.lock``).

        A reopened session that was active with progress journals a ``resume`` (unless ``resume``
        is False: the caller resumes it itself).
        """
        if entry.core is None:
            journal = Journal.open(entry.run_dir / JOURNAL_NAME)
            try:
                cfg = OnlineConfig.from_dict(journal.header["online"])
                plan = StimulationPlan.for_rig(cfg, self.rig_cfg, self.limits)
                check_resumable(journal.header, cfg, plan)
                with optimizer_step():
                    core = SessionCore(cfg, plan, journal, make_optimizer=self.make_optimizer, echo=self.echo)
            except BaseException:
                journal.close()
                raise
            if resume and core.status == "active" and (core.n_done or core.pending is not None):
                core.resume()
            entry.core = core
            if core.status in ("complete", "stopped") and not (entry.run_dir / "session.json").exists():
                self.outputs(entry)  # ended while the server was down before its outputs were written
        return entry.core

    # ---- lifecycle -----------------------------------------------------------------------------------
    def create(self, online: Mapping) -> Entry:
        """A new session of the online config ``online``; ValueError/SafetyViolation before anything is written."""
        cfg = OnlineConfig.from_dict(plain(dict(online)))
        muscles = self.rig_cfg.get("muscles")
        if muscles is not None and cfg.target_muscle not in muscles:
            raise ValueError(f"online.target_muscle {cfg.target_muscle!r} is not a muscle of the rig {list(muscles)}")
        plan = StimulationPlan.for_rig(cfg, self.rig_cfg, self.limits)
        plan.preflight()
        session_id = new_session_id(cfg.name)
        run_dir = self.root / session_id
        rig = {
            "name": self.rig_cfg.get("name", "external"),
            "kind": self.rig_cfg.get("kind", "external"),
            "muscles": muscles,
            "config": to_jsonable(self.rig_cfg),
        }
        confirmation = "operator" if cfg.mode == "operator" else "none"
        journal = start_journal(run_dir, session_id, cfg, plan, rig, confirmation)
        try:
            with optimizer_step():
                core = SessionCore(cfg, plan, journal, make_optimizer=self.make_optimizer, echo=self.echo)
        except BaseException:
            journal.close()
            shutil.rmtree(run_dir, ignore_errors=True)  # only its header: the session never started
            raise
        entry = Entry(session_id, run_dir, core=core)
        with self._mu:
            self._entries[session_id] = entry
        return entry

    def outputs(self, entry: Entry, stopped: str | None = None) -> None:
        """Queue ``entry``'s session.json, estimated map and figures for the writer thread.

        The figures take a while (pyplot, one at a time); written off the request path, the tell
        that completes a session answers at once, and sessions completing together do not queue
        behind each other's figures.
        """
        with self._mu:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_outputs, name="outputs", daemon=True)
                self._writer.start()
        self._to_write.put((entry, stopped))

    def _write_outputs(self) -> None:
        while True:
            item = self._to_write.get()
            try:
                if item is None:
                    return
                entry, stopped = item
                with entry.lock:
                    if entry.core is None:
                        continue
                    write_outputs(
                        entry.core,
                        entry.run_dir,
                        rig=entry.rig,
                        confirmation=entry.confirmation,
                        stopped=stopped,
                        echo=self.echo,
                        draw=self._draw,
                    )
            except Exception as exc:  # noqa: BLE001 - the journal holds everything; say it and carry on
                self.echo(f"note: the outputs of {item[0].session_id} were not written: {type(exc).__name__}: {exc}")
            finally:
                self._to_write.task_done()

    def _draw(self, data: dict, run_dir: Path) -> list[str]:
        # pyplot in this process would hold the GIL for most of a second per session and slow every
        # request's torch steps (each takes the GIL back once per operation): a drawing process does it
        if self._drawer is None:
            self._drawer = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=exit_with_parent,
                initargs=(os.getpid(),),
            )
        return self._drawer.submit(draw_figures, data, run_dir).result()

    def flush(self) -> None:
        """Wait until every queued output is written."""
        self._to_write.join()

    def close(self) -> None:
        """Write the queued outputs, then close every journal (server shutdown)."""
        self.flush()
        if self._drawer is not None:
            self._drawer.shutdown()
        with self._mu:
            entries = list(self._entries.values())
        for e in entries:
            with e.lock:
                if e.core is not None:
                    e.core.journal.close()
                    e.core = None
            with e.sub_lock:
                for s in e.subscribers:
                    s.closed = True
                    s.push("")

    # ---- events --------------------------------------------------------------------------------------
    def subscribe(self, entry: Entry, loop: asyncio.AbstractEventLoop) -> Subscriber:
        sub = Subscriber(loop)
        with entry.sub_lock:
            entry.subscribers.add(sub)
        return sub

    def unsubscribe(self, entry: Entry, sub: Subscriber) -> None:
        with entry.sub_lock:
            entry.subscribers.discard(sub)

    def publish(self, entry: Entry) -> None:
        """Send ``entry``'s state to its subscribers (call under ``entry.lock``); never blocks."""
        with entry.sub_lock:
            subs = [s for s in entry.subscribers if not s.closed]
        if subs:
            data = state_line(entry.core)
            for s in subs:
                s.push(data)


def state_line(core: SessionCore) -> str:
    """``core.state()`` as one line of JSON."""
    return json.dumps(core.state(), allow_nan=False, separators=(",", ":"))


def readback_problem(asked: Mapping, readback: Mapping, limits: SafetyLimits) -> str | None:
    """Why ``readback`` (what the lab's stimulator holds) is not the asked stimulation, or None.

    ``readback`` names the asked ``params`` keys (``channel``, ``amplitude_uA``, ``frequency_hz``,
    ``pulse_width_us``, ``n_pulses``) or a stimulator's (``amplitude``, ``period`` in ms,
    ``channel``, ``pulse_width``, ``n_pulses``). Raises ValueError if it is neither.
    """
    keys = set(readback)
    if keys == set(STIMULATOR_KEYS):
        held = StimParams.from_stimulator(readback)
    elif keys == set(STIM_FIELDS):
        held = StimParams.coerce(readback)
    else:
        raise ValueError(
            f"readback keys {sorted(keys)}: expected exactly {list(STIM_FIELDS)} (as in the asked params) "
            f"or {list(STIMULATOR_KEYS)} (as a stimulator holds them)"
        )
    asked_p = StimParams.coerce(asked)
    diffs = [
        f"{k} reads back {getattr(held, k)!r}, {getattr(asked_p, k)!r} was asked"
        for k in STIM_FIELDS
        if not holds(getattr(held, k), getattr(asked_p, k))
    ]
    bad = limits.violations(held)
    if diffs or bad:
        return (
            "the stimulator's readback is not the asked stimulation: "
            + "; ".join(diffs + [f"breaks a safety limit: {b}" for b in bad])
            + "; the session is stopped (resume it once the stimulator holds the asked values)"
        )
    return None


__all__ = ["optimizer_step", "Registry", "Entry", "Subscriber", "UnknownSession", "readback_problem", "state_line"]
