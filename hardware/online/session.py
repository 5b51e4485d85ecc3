"""One online session over its journal: ask, check, confirm, stimulate, tell, repeat.

The loop is :meth:`OnlineSession.run`; the mode in force and the confirmation it requires
are :func:`resolve_mode` and :func:`confirmation`; a stop on an error is :class:`SessionStopped`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from hardware.journal import Journal
from hardware.online.config import MODES, OnlineConfig, StimulationPlan
from hardware.online.core import SessionCore
from hardware.online.outputs import write_outputs
from hardware.rig import MAYBE_DELIVERED, NOT_SENT, SENT, delivery_of
from hardware.safety import StimParams

# journal kinds of a stimulation's outcome, by what reached the stimulator ("lost": older journals')
OUTCOME_KIND = {NOT_SENT: "not_sent", SENT: "no_response", MAYBE_DELIVERED: "maybe_delivered"}
OUTCOMES = ("trial", "no_response", "maybe_delivered", "lost", "not_sent", "refused")
USES_ATTEMPT = ("trial", "no_response", "maybe_delivered", "lost")  # a trigger went out, or may have
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class SessionPaused(Exception):
    """The operator stopped the session; resume it from its journal."""


class OperatorNeedsTerminal(ValueError):
    """Operator mode was asked for where no operator can answer; nothing was started."""


class SessionStopped(RuntimeError):
    """A started session stopped on an error; its journal holds everything up to it.

    Attributes:
        run_dir: the session folder (``resume=`` it to carry on).
        cause: the exception that stopped it.
    """

    def __init__(self, message: str, run_dir: str | Path | None = None, cause: BaseException | None = None):
        super().__init__(message)
        self.run_dir, self.cause = run_dir, cause


def resolve_mode(cfg_mode: str, override: str | None) -> str:
    """The mode in force: ``override`` (the command line's ``mode=``) unless null, else the online config's."""
    mode = cfg_mode if override is None else override
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    return mode


def confirmation(mode: str, confirm: Callable[[str], str] | None = None) -> Callable[[str], str] | None:
    """The confirmation the mode in force requires before each stimulation (None: none).

    Operator mode asks ``confirm`` (default: Enter on the terminal); with no terminal on stdin
    nobody could answer, so it refuses to start rather than stimulate unconfirmed.
    """
    if mode != "operator":
        return None
    if confirm is not None:
        return confirm
    if sys.stdin is None or sys.stdin.closed or not sys.stdin.isatty():
        raise OperatorNeedsTerminal(
            "operator mode asks for Enter before every stimulation, but standard input is "
            "not a terminal; run it from a terminal, or pass mode=autonomous to run without "
            "confirmation on purpose"
        )
    return input


def error_text(exc: BaseException) -> str:
    """``Type: message`` on one line, without terminal colour codes (journal and console)."""
    text = _ANSI.sub("", f"{type(exc).__name__}: {exc}")
    return " ".join(text.split())


class OnlineSession:
    """One session driven through a rig: the rig client of :class:`~hardware.online.core.SessionCore`.

    Per query it asks the core (checked and journaled ``ask``), confirms in operator mode,
    journals each attempt (``intent``, then ``trial`` or the failure by what reached the
    stimulator), repeats invalid trials up to ``max_retries``, and tells the core.

    Args:
        cfg: the online config.
        plan: space and stimulation mapping.
        rig: a rig session (:class:`hardware.actor.ActorRigSession` or ``LocalRigSession``).
        journal: the session's journal (header written).
        run_dir: the session folder.
        make_optimizer: ``make(name, space, n_reps, seed, prior, **hyper)``.
        confirm: ``prompt -> answer`` in operator mode ('' or 'y' go, 'q' pauses); see
            :func:`confirmation`.
        tracker: optional, with ``log_query(record)`` and ``log_summary(summary, artifacts)``.
        echo: progress printer.
    """

    def __init__(
        self,
        cfg: OnlineConfig,
        plan: StimulationPlan,
        rig,
        journal: Journal,
        run_dir: Path,
        make_optimizer: Callable | None = None,
        confirm: Callable[[str], str] | None = None,
        tracker=None,
        echo: Callable[[str], None] = print,
    ):
        self.cfg, self.plan, self.rig, self.journal, self.run_dir = cfg, plan, rig, journal, Path(run_dir)
        self.confirm = confirmation(cfg.mode, confirm)
        self.tracker, self.echo = tracker, echo
        if cfg.target_muscle not in rig.muscles:
            raise ValueError(
                f"online.target_muscle {cfg.target_muscle!r} is not recorded by rig {rig.name!r} "
                f"(muscles {list(rig.muscles)})"
            )
        self.core = SessionCore(cfg, plan, journal, make_optimizer=make_optimizer, echo=echo)

    @property
    def opt(self):
        """The optimizer (the core's)."""
        return self.core.opt

    def estimate(self) -> np.ndarray:
        """The model's estimated response map (:meth:`SessionCore.estimate`)."""
        return self.core.estimate()

    # ---- the loop --------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run the remaining queries; raises :class:`SessionStopped` when an error stops it."""
        core = self.core
        pending = self._recover_attempts() if core.pending is not None else {}
        if core.n_done or core.pending is not None or core.status in ("stopped", "paused"):
            core.resume()
        try:
            lease = self.rig.open()
        except Exception as exc:
            self.journal.append("rig_error", at_query=core.n_done, error=error_text(exc))
            raise SessionStopped(
                f"the rig could not be opened before query {core.n_done + 1}: {error_text(exc)}", self.run_dir, exc
            ) from exc
        if lease.get("taken_from"):
            self.journal.append("note", text=f"took over the rig lease from stale session {lease['taken_from']}")
        try:
            while core.status == "active":
                self._query(**pending)
                pending = {}
        except SessionPaused:
            core.pause()
            self.echo(f"session paused before query {core.n_done + 1}; resume with resume={self.run_dir}")
            return self.outputs(paused=True)
        except Exception as exc:
            last = self.journal.records[-1]["kind"]
            what = {
                "not_sent": "nothing was sent",
                "no_response": "the stimulation was sent, no valid response",
                "maybe_delivered": "the stimulation may have been delivered",
                "refused": "refused by the safety limits, nothing was sent",
            }.get(last, "")
            message = f"query {core.n_done + 1} failed{f' ({what})' if what else ''}: {error_text(exc)}"
            core.stop(message)
            try:
                self.outputs(stopped=message)
            except Exception as out_exc:  # noqa: BLE001 - the journal holds everything; report the first error
                self.echo(f"note: session.json not written: {error_text(out_exc)}")
            raise SessionStopped(message, self.run_dir, exc) from exc
        finally:
            self.rig.close()
        return self.outputs()

    def _recover_attempts(self) -> dict:
        """The pending query's attempts so far; an ``intent`` with no outcome is journaled ``maybe_delivered``."""
        ask = self.core.pending
        assert ask is not None
        q = ask["query"]
        mine = [r for r in self.journal.records if r.get("query") == q and r["kind"] in ("intent", "error", *OUTCOMES)]
        closed = {r["attempt"] for r in mine if r["kind"] in OUTCOMES and "attempt" in r}
        used = {r["attempt"] for r in mine if r["kind"] in USES_ATTEMPT}
        errors = {r["attempt"]: r["error"] for r in mine if r["kind"] == "error"}  # journals before outcome kinds
        for r in mine:
            if r["kind"] == "intent" and r["attempt"] not in closed:
                why = (
                    f"the rig failed during this stimulation ({errors[r['attempt']]})"
                    if r["attempt"] in errors
                    else "the process died during this stimulation"
                )
                self.journal.append(
                    "maybe_delivered",
                    query=q,
                    attempt=r["attempt"],
                    point=r["point"],
                    params=r["params"],
                    reason=why + "; it may have been delivered, its response is unknown",
                )
                closed.add(r["attempt"])
                used.add(r["attempt"])
        trials = [r for r in mine if r["kind"] == "trial"]
        return {"attempts_done": max(used) + 1 if used else 0, "last_trial": trials[-1] if trials else None}

    def _query(self, attempts_done: int = 0, last_trial: dict | None = None):
        cfg, m = self.cfg, self.cfg.target_muscle
        ask = self.core.ask()
        q, point = ask["query"], ask["point"]
        params = StimParams.coerce(ask["params"])
        trial, a = last_trial, attempts_done
        while (trial is None or not trial["valid"]) and a <= cfg.max_retries:
            if self.confirm is not None:
                self._confirm(q, a, point, params)
            self.journal.append("intent", query=q, attempt=a, point=point, params=params.to_dict())
            try:
                tr = self.rig.stimulate(params)
            except Exception as exc:
                readback = getattr(exc, "readback", None)
                self.journal.append(
                    OUTCOME_KIND[delivery_of(exc)],
                    query=q,
                    attempt=a,
                    point=point,
                    params=params.to_dict(),
                    error=error_text(exc),
                    **({"readback": readback} if readback else {}),
                )
                raise
            window = self._save_window(q, a, tr.window)
            feat = tr.features[tr.muscles.index(m)]
            trial = self.journal.append(
                "trial",
                query=q,
                attempt=a,
                point=point,
                params=tr.params,
                readback=tr.readback,
                response=feat["value"],
                valid=feat["valid"],
                reason=feat["reason"],
                feature=feat,
                responses={mm: f["value"] for mm, f in zip(tr.muscles, tr.features)},
                valid_by_muscle={mm: f["valid"] for mm, f in zip(tr.muscles, tr.features)},
                artefact_snr=feat["artefact_snr"],
                t_stim=tr.t_stim,
                t_done=tr.t_done,
                window=window,
                info=tr.info,
            )
            a += 1
            if not trial["valid"]:
                self.echo(
                    f"  q{q + 1} attempt {a}: invalid ({trial['reason']})"
                    + ("; repeating" if a <= cfg.max_retries else "; recorded invalid")
                )
        response = trial["response"] if trial else None
        valid = bool(trial and trial["valid"])
        rec = self.core.tell(
            ask["query_id"],
            response,
            valid=valid,
            reason=trial["reason"] if trial else "lost",
            attempts=a,
            readback=trial["readback"] if trial else None,
        )
        if self.tracker is not None:
            self.tracker.log_query(rec)
        best = rec["best_point"]
        best_txt = self.plan.coords(best) if best is not None else "-"
        self.echo(
            f"[q {q + 1}/{cfg.n_queries}] ch {params.channel} {self.plan.coords(point)}: {m} "
            f"{_fmt(response)}{'' if valid else ' (invalid)'} | best {best_txt} est {_fmt(rec['exploration'])}"
        )

    def _confirm(self, q: int, a: int, point: int, params: StimParams) -> None:
        prompt = (
            f"[q {q + 1}/{self.cfg.n_queries}{f' retry {a}' if a else ''}] channel {params.channel} "
            f"{self.plan.coords(point)} {params.amplitude_uA} uA {params.frequency_hz:.4g} Hz "
            f"{params.pulse_width_us} us x{params.n_pulses}: Enter to stimulate, q to pause: "
        )
        while True:
            ans = str(self.confirm(prompt)).strip().lower()
            if ans in ("", "y", "yes"):
                return
            if ans in ("q", "quit", "stop"):
                raise SessionPaused()

    def _save_window(self, q: int, a: int, window) -> str | None:
        if not self.cfg.save_windows or window is None:
            return None
        d = self.run_dir / "windows"
        d.mkdir(exist_ok=True)
        name = f"q{q:04d}_a{a}.npy"
        tmp = d / (name + ".tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(window))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, d / name)
        return f"windows/{name}"

    def outputs(self, paused: bool = False, stopped: str | None = None) -> dict:
        """Write the estimated map, figures and ``session.json``; return the summary
        (:func:`hardware.online.outputs.write_outputs`)."""
        return write_outputs(
            self.core,
            self.run_dir,
            rig={"name": self.rig.name, "kind": self.rig.kind},
            confirmation="operator" if self.confirm is not None else "none",
            paused=paused,
            stopped=stopped,
            tracker=self.tracker,
            artefact_min_snr=self.rig.emg.artefact_min_snr if self.cfg.mode == "dry_run" else None,
            echo=self.echo,
        )


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"
