"""The one online loop's core: ask and tell over a session journal.

:class:`SessionCore` owns the optimizer, the safety check of every asked stimulation and the
journal records of the query lifecycle (``ask``, ``refused``, ``query``, ``resume``, ``end``,
``stop``). Its clients stimulate and answer:

- :class:`hardware.online.session.OnlineSession` drives a rig (the TDT ``SynapseRig`` or the
  simulated rig, through the pinned Ray actor) and journals each attempt between ask and tell;
- the session service (:mod:`hardware.serve`) hands the asked stimulation to any lab's rig
  software over HTTP and takes its answer back.

A query is asked once: asking again before the tell returns the same query (same ``query_id``),
and a resumed core hands out the query that was pending when the process died. A tell answers
one pending query; the same tell again returns the same record and counts once; another answer
to an answered query, or an unknown id, is refused (:class:`QueryConflict`, :class:`UnknownQuery`).
"""

from __future__ import annotations

import datetime as _dt
import math
import secrets
import time
from pathlib import Path
from typing import Callable

import numpy as np

from hardware.journal import Journal, JournalError, to_jsonable
from hardware.online.config import JOURNAL_NAME, RESUMABLE_CHANGES, OnlineConfig, StimulationPlan, load_prior
from hardware.safety import SafetyViolation


class SessionError(ValueError):
    """A request the session cannot take in its present state; nothing was journaled."""


class UnknownQuery(SessionError):
    """A tell for a query id this session never asked."""


class QueryConflict(SessionError):
    """A tell that contradicts the answer already journaled for that query."""


class SessionClosed(SessionError):
    """The session has ended (all queries answered, or stopped); resume it to carry on."""


def new_session_id(name: str) -> str:
    """``NAME-YYYYmmdd-HHMMSS-xxxxxx``: sortable by start time, unique."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(3)}"


def start_journal(
    run_dir: Path, session_id: str, cfg: OnlineConfig, plan: StimulationPlan, rig: dict, confirmation: str
) -> Journal:
    """A new session journal whose header holds everything a resume checks.

    Args:
        rig: ``{name, kind, muscles, config}`` of the rig the session stimulates through.
        confirmation: ``operator`` or ``none`` (what each stimulation waits for).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    return Journal.create(
        run_dir / JOURNAL_NAME,
        {
            "version": 1,
            "session_id": session_id,
            "online": cfg.to_dict(),
            "space": plan.describe(),
            "mode": cfg.mode,
            "confirmation": confirmation,
            "ch2xy": plan.chmap.to_list() if plan.chmap else None,
            "started": _dt.datetime.now().isoformat(),
            "rig": to_jsonable(rig),
        },
    )


def check_resumable(header: dict, cfg: OnlineConfig, plan: StimulationPlan) -> None:
    """Refuse to resume a journal under a config or space other than its own."""
    old = dict(header["online"])
    new = cfg.to_dict()
    diff = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if diff:
        raise ValueError(
            f"cannot resume {header['session_id']}: the online config differs in {diff} "
            f"(only {list(RESUMABLE_CHANGES)} may change on resume)"
        )
    if header["space"] != to_jsonable(plan.describe()):
        raise ValueError(
            f"cannot resume {header['session_id']}: its search space differs from this config's "
            f"(an online config made for another search space)"
        )
    if plan.chmap is not None and header.get("ch2xy") != plan.chmap.to_list():
        raise ValueError(f"cannot resume {header['session_id']}: the rig's ch2xy mapping changed")


class SessionCore:
    """Ask/tell over one session journal (see the module docstring).

    Construction replays the journal's answered queries into a fresh optimizer (same seed, same
    call sequence) and finds the pending query, if any.

    Args:
        cfg: the online config.
        plan: the space and the point -> stimulation mapping (with the rig's safety limits).
        journal: the session's journal (header written).
        make_optimizer: ``make(name, space, n_reps, seed, prior, **hyper)``
            (default ``neuro_opt.algorithms.make``).
        echo: progress printer.
    """

    def __init__(
        self,
        cfg: OnlineConfig,
        plan: StimulationPlan,
        journal: Journal,
        make_optimizer: Callable | None = None,
        echo: Callable[[str], None] = print,
    ):
        if make_optimizer is None:
            from neuro_opt.algorithms import make as make_optimizer
        self.cfg, self.plan, self.journal, self.echo = cfg, plan, journal, echo
        self.space = plan.space
        self.P = self.space.n_points
        algo = dict(cfg.algorithm)
        name = algo.pop("name")
        prior = None
        if cfg.prior:
            prior = load_prior(cfg.prior["path"], self.space)
            if name.startswith("gpbo"):
                if cfg.prior.get("scale") is not None:
                    algo["prior_scale"] = float(cfg.prior["scale"])
                if cfg.prior.get("fade") is not None:
                    algo["prior_fade"] = int(cfg.prior["fade"])
        self.opt = make_optimizer(name, self.space, n_reps=1, seed=cfg.seed, prior=prior, **algo)
        self.obs_sum, self.obs_cnt = np.zeros(self.P), np.zeros(self.P)
        self.max_told = -math.inf
        self.replay_mismatches = 0
        self._post: tuple[np.ndarray, np.ndarray] | None = None  # (mean, var), response units, at the last tell
        self.answered: dict[str, dict] = {}  # query_id -> its ``query`` record
        self.pending: dict | None = None  # the ``ask`` record of the query in flight
        self.last_readback: dict | None = None
        self._lifecycle = self._lifecycle_of(journal.records)
        self._replay()

    # ---- state ----------------------------------------------------------------------------------
    @property
    def n_done(self) -> int:
        """Queries answered so far."""
        return len(self.answered)

    @property
    def status(self) -> str:
        """``complete`` (every query answered), ``stopped``, ``paused`` or ``active``."""
        if self.n_done >= self.cfg.n_queries:
            return "complete"
        return self._lifecycle

    def _lifecycle_of(self, records: list[dict]) -> str:
        for r in reversed(records):
            if r["kind"] in ("stop", "end"):
                return "stopped"
            if r["kind"] == "pause":
                return "paused"
            if r["kind"] == "resume":
                break
        return "active"

    @property
    def session_id(self) -> str:
        return self.journal.header["session_id"]

    # ---- optimizer steps, identical live and in replay -------------------------------------------
    def _ask_optimizer(self) -> int:
        idx = np.asarray(self.opt.ask())
        if idx.shape != (1,) or not 0 <= int(idx[0]) < self.P:
            raise RuntimeError(f"optimizer asked {idx!r}; expected one point in 0..{self.P - 1}")
        return int(idx[0])

    def _finish(self, point: int, response: float | None, told: bool) -> dict:
        if told:
            self.opt.tell(np.array([point]), np.array([float(response)]))  # type: ignore[arg-type]
            self.obs_sum[point] += response
            self.obs_cnt[point] += 1
            self.max_told = max(self.max_told, float(response))  # type: ignore[arg-type]
        if self.obs_cnt.sum() == 0:
            return {"best_point": None, "exploration": None, "exploitation": None}
        best = int(np.asarray(self.opt.best())[0])
        self._post = self._posterior()
        est = self._post[0]
        e_best = est[best]
        ok = math.isfinite(e_best) and e_best > 0
        return {
            "best_point": best,
            "exploration": float(e_best) if math.isfinite(e_best) else None,
            "exploitation": float(est[point] / e_best) if ok and math.isfinite(est[point]) else None,
        }

    def _posterior(self) -> tuple[np.ndarray, np.ndarray]:
        post = getattr(self.opt, "posterior", None)
        if callable(post):
            mean, var = post()
            scale = self.max_told if self.max_told > 0 else 1.0
            mean = np.asarray(mean, dtype=np.float64).reshape(-1)[: self.P] * scale
            var = np.asarray(var, dtype=np.float64).reshape(-1)[: self.P]
            return mean, np.sqrt(np.clip(var, 0, None)) * scale
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.obs_cnt > 0, self.obs_sum / np.maximum(self.obs_cnt, 1), np.nan)
        return mean, np.full(self.P, np.nan)

    def estimate(self) -> np.ndarray:
        """The model's estimated response map (``P``, response units; NaN where unknown), as of the last tell.

        The GP posterior mean when the optimizer has one (GP-BO works on responses divided by
        the largest told so far: scaled back here), else the mean observed response per point.
        """
        return self._post[0] if self._post is not None else np.full(self.P, np.nan)

    def uncertainty(self) -> np.ndarray:
        """The posterior standard deviation (``P``, response units; NaN where the optimizer has none)."""
        return self._post[1] if self._post is not None else np.full(self.P, np.nan)

    # ---- replay ------------------------------------------------------------------------------------
    def _replay(self) -> None:
        recs = self.journal.records
        done = [r for r in recs if r["kind"] == "query"]
        for i, r in enumerate(done):
            if r["query"] != i:
                raise JournalError(f"journal {self.journal.path}: query records out of order at {i} ({r['query']})")
            if self._ask_optimizer() != r["point"]:
                self.replay_mismatches += 1
            self._finish(r["point"], r["response"], r["told"])
            self.answered[r.get("query_id") or f"q{i}"] = r
        for r in recs:
            if r["kind"] in ("trial", "query", "safety") and r.get("readback"):
                self.last_readback = r["readback"]
        q = len(done)
        if self.replay_mismatches:
            self.echo(
                f"note: on replay the optimizer asked differently at {self.replay_mismatches} of {q} queries; "
                f"the journal's points were told (they are what was stimulated)"
            )
        asks = [r for r in recs if r["kind"] == "ask" and r["query"] == q]
        attempts = [r for r in recs if r.get("query") == q and r["kind"] in ("intent", "trial")]
        if asks or attempts:
            asked = self._ask_optimizer()  # the pending query's optimizer call, as when it was asked
            if asks:
                self.pending = dict(asks[-1])
            else:  # a journal written before ask records: the attempts name the point
                points = {r["point"] for r in attempts}
                if len(points) != 1:
                    raise JournalError(f"journal {self.journal.path}: query {q} was attempted at points {points}")
                self.pending = self._journal_ask(q, points.pop(), asked, recovered=True)

    def _journal_ask(self, q: int, point: int, asked: int, recovered: bool = False) -> dict:
        params = self.plan.params(point)
        try:
            self.plan.limits.check(params)
        except SafetyViolation as exc:
            self.journal.append("refused", query=q, point=point, params=params.to_dict(), error=str(exc))
            raise
        return self.journal.append(
            "ask",
            query=q,
            query_id=f"q{q}-{secrets.token_hex(4)}",
            point=point,
            asked=asked,
            coords=self.plan.coords(point),
            params=params.to_dict(),
            **({"recovered": True} if recovered else {}),
        )

    # ---- ask / tell ----------------------------------------------------------------------------------
    def ask(self) -> dict:
        """The next stimulation, checked against the safety limits and journaled (``ask`` record).

        Returns the pending query again if it is not answered yet. Raises
        :class:`SessionClosed` once every query is answered or the session was stopped, and
        :class:`~hardware.safety.SafetyViolation` (journaled ``refused``, nothing asked) when the
        point breaks a limit.
        """
        if self.pending is not None:
            return self.pending
        if self.status != "active":
            raise SessionClosed(
                f"session {self.session_id} is {self.status} ({self.n_done} of {self.cfg.n_queries} queries answered)"
            )
        q = self.n_done
        asked = self._ask_optimizer()
        self.pending = self._journal_ask(q, asked, asked)
        return self.pending

    def tell(self, query_id: str, response: float | None, valid: bool = True, reason: str = "", **fields) -> dict:
        """Answer the pending query; returns its ``query`` record (journaled before returning).

        Args:
            query_id: the id :meth:`ask` returned.
            response: the target muscle's response (a finite number), or None when there is none.
            valid: False for a trial the rig flagged (told only if ``tell_invalid``).
            reason: why it is invalid.
            fields: more of the ``query`` record (``attempts``, ``readback``, ...).

        The same tell twice returns the first record (counted once); another answer to an
        answered query raises :class:`QueryConflict`; an unknown id :class:`UnknownQuery`.
        """
        if response is not None:
            if isinstance(response, bool) or not isinstance(response, (int, float)) or not math.isfinite(response):
                raise SessionError(f"response must be a finite number or null, got {response!r}")
            response = float(response)
        if query_id in self.answered:
            rec = self.answered[query_id]
            if rec["response"] == response and bool(rec["valid"]) == bool(valid and response is not None):
                return {**rec, "duplicate": True}
            raise QueryConflict(
                f"query {query_id} was already answered (response {rec['response']}, valid {rec['valid']}); "
                f"a different answer is refused"
            )
        if self.pending is None or self.pending["query_id"] != query_id:
            open_id = self.pending["query_id"] if self.pending else None
            raise UnknownQuery(
                f"no pending query {query_id!r} in session {self.session_id}"
                + (f"; the pending query is {open_id!r}" if open_id else "; ask first")
            )
        ask, q, point = self.pending, self.pending["query"], self.pending["point"]
        valid = bool(valid and response is not None)
        told = response is not None and (valid or self.cfg.tell_invalid)
        if fields.get("readback"):
            self.last_readback = fields["readback"]
        est = self._finish(point, response, told)
        best = est["best_point"]
        rec = self.journal.append(
            "query",
            query=q,
            query_id=query_id,
            point=point,
            asked=ask["asked"],
            coords=ask["coords"],
            channel=ask["params"]["channel"],
            params=ask["params"],
            response=response,
            valid=valid,
            reason=reason if reason or valid else "invalid",
            told=told,
            best_point=best,
            best_coords=self.plan.coords(best) if best is not None else None,
            exploration=est["exploration"],
            exploitation=est["exploitation"],
            t_ask=ask["t"],
            **{"attempts": 1, **fields},
            t_end=time.time(),
        )
        self.answered[query_id] = rec
        self.pending = None
        if self.n_done >= self.cfg.n_queries:
            self.journal.append("end", n_queries=self.n_done)
        return rec

    def resume(self) -> None:
        """Carry on a session that was reopened (journaled ``resume``; a stopped or paused session
        becomes active again)."""
        if self.status != "complete":
            self.journal.append("resume", at_query=self.n_done, mode=self.cfg.mode, mismatches=self.replay_mismatches)
            self._lifecycle = "active"

    def stop(self, reason: str = "stopped by the client") -> None:
        """End the session early (journaled ``stop``); a pending query stays unanswered."""
        if self.status in ("active", "paused"):
            self.journal.append("stop", at_query=self.n_done, error=reason)
            self._lifecycle = "stopped"

    def pause(self) -> None:
        """The operator paused the session (journaled ``pause``)."""
        if self.status == "active":
            self.journal.append("pause", at_query=self.n_done)
            self._lifecycle = "paused"

    def state(self) -> dict:
        """Queries so far, the pending one, the estimated best and the posterior (JSON-ready)."""
        queries = [self.answered[k] for k in self.answered]
        last = queries[-1] if queries else None
        best = last["best_point"] if last else None
        mean, std = self.estimate(), self.uncertainty()
        return to_jsonable(
            {
                "session_id": self.session_id,
                "name": self.cfg.name,
                "status": self.status,
                "mode": self.cfg.mode,
                "confirmation": self.journal.header.get("confirmation", "none"),
                "target_muscle": self.cfg.target_muscle,
                "n_queries": self.cfg.n_queries,
                "n_done": self.n_done,
                "stop_reason": self._stop_reason(),
                "pending": _public(self.pending) if self.pending else None,
                "space": {
                    "names": list(self.space.names),
                    "values": {d.name: list(d.values) for d in self.space.dims},
                    "electrode_dims": list(self.cfg.electrode_dims),
                    "shape": list(self.space.grid_shape),
                    "points": [list(self.space.index[p]) for p in range(self.P)],
                },
                "queries": [
                    {
                        k: r.get(k)
                        for k in (
                            "query",
                            "query_id",
                            "point",
                            "coords",
                            "response",
                            "valid",
                            "told",
                            "best_point",
                            "exploration",
                            "exploitation",
                            "params",
                            "readback",
                        )
                    }
                    for r in queries
                ],
                "best": None
                if best is None
                else {
                    "point": best,
                    "coords": self.plan.coords(best),
                    "params": self.plan.params(best).to_dict(),
                    "estimate": last["exploration"] if last else None,
                },
                "posterior": {"mean": mean, "std": std},
                "safety": {
                    "limits": self.plan.limits.to_dict(),
                    "last_params": (self.pending or last or {}).get("params"),
                    "last_readback": self.last_readback,
                    "refused": len(self.journal.of_kind("refused")),
                    "alerts": [r.get("error") for r in self.journal.of_kind("safety")][-3:],
                },
            }
        )

    def _stop_reason(self) -> str | None:
        if self.status not in ("stopped", "paused"):
            return None
        for r in reversed(self.journal.records):
            if r["kind"] in ("stop", "pause", "end"):
                return r.get("error") or {"pause": "paused by the operator"}.get(r["kind"], "ended early")
        return None


def _public(ask: dict) -> dict:
    return {k: ask[k] for k in ("query", "query_id", "point", "coords", "params")}


__all__ = [
    "SessionCore",
    "SessionError",
    "UnknownQuery",
    "QueryConflict",
    "SessionClosed",
    "new_session_id",
    "start_journal",
    "check_resumable",
]
