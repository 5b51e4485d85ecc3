"""The online session: ask the optimizer, check safety, stimulate through the rig, tell, repeat.

Entry points:

- :func:`run_online` (what ``python -m sweeps.launch +exp=online online=NAME
  rig=simulated|synapse`` calls) runs or resumes a session from an online
  config (``conf/online/*.yaml``) and a rig config (``conf/rig/*.yaml``);
- ``python -m hardware.online --online FILE --rig FILE [...]``, the same
  without Hydra (dry runs on the bench).

The online config schema is :class:`OnlineConfig` (shared with the promotion
step that writes ``conf/online/NAME.yaml`` from a calibration).

Per query ``q`` the runner:

1. asks the optimizer for a point; maps it to stimulation parameters (the
   electrode coordinates through the rig's ``ch2xy`` to a channel; the other
   dimensions by name; the rest fixed by ``stimulation``);
2. checks them against the rig's safety limits (minus disabled electrodes); a
   violation is journaled and raised, and nothing is sent (the whole space is
   also checked before the session starts);
3. in ``operator`` mode, waits for Enter (``q`` pauses the session); the mode in
   force is resolved once before the session starts (:func:`resolve_mode`), and
   operator mode without a terminal refuses to start (:func:`confirmation`);
4. journals an ``intent``, stimulates through the rig (its Ray actor: the rig
   reads every safety-relevant value back from the stimulator before the
   trigger), saves the raw window, journals the ``trial`` with the read-back
   values; a trial with pre-stimulus activity is repeated up to
   ``max_retries`` times, else recorded invalid. A rig failure is journaled by
   what reached the stimulator (:func:`hardware.rig.delivery_of`):
   ``not_sent`` (before the trigger; no retry used), ``no_response`` (sent, no
   valid response) or ``maybe_delivered``; then the session stops
   (:class:`SessionStopped`) and ``resume=`` carries on;
5. tells the optimizer (invalid trials only if ``tell_invalid``), computes
   exploration and exploitation without ground truth (STAR Protocols: the
   model's estimate at its believed-best point, and the estimate at the queried
   point relative to it), journals the ``query`` and hands it to the tracker.

Every record is on disk (fsync) before the next step starts. A killed session
resumes from its journal (``resume=``): completed queries are replayed into a
fresh optimizer (same seed, same call sequence), an interrupted query carries on
with the attempts it has left, and an ``intent`` with no outcome (the process
died during a stimulation, whose response is lost) is journaled as
``maybe_delivered``. No completed query is lost or repeated. ``session.json``
counts as stimulations only triggers that were sent.

At the end: ``estimated_map.json`` (the posterior mean, loadable as the next
session's prior), ``figures/estimated_map.png``, ``figures/performance.png``
and ``session.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from hardware.journal import Journal, JournalError, to_jsonable
from hardware.rig import MAYBE_DELIVERED, NOT_SENT, SENT, ChannelMap, RigError, delivery_of, resolve_path
from hardware.safety import STIM_FIELDS, SafetyLimits, SafetyViolation, StimParams, _check_keys
from neuro_opt.space import SearchSpace

MODES = ("operator", "autonomous", "dry_run")
JOURNAL_NAME = "journal.jsonl"
# journal kinds of a stimulation's outcome, by what reached the stimulator ("lost": older journals')
OUTCOME_KIND = {NOT_SENT: "not_sent", SENT: "no_response", MAYBE_DELIVERED: "maybe_delivered"}
OUTCOMES = ("trial", "no_response", "maybe_delivered", "lost", "not_sent", "refused")
USES_ATTEMPT = ("trial", "no_response", "maybe_delivered", "lost")  # a trigger went out, or may have
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# keys that may change when a session is resumed; any other difference is refused
RESUMABLE_CHANGES = ("n_queries", "mode", "max_retries", "save_windows", "provenance", "name")


# ---------------------------------------------------------------------------------------------
# the online config
# ---------------------------------------------------------------------------------------------
@dataclass
class OnlineConfig:
    """An online session's configuration (``conf/online/NAME.yaml``).

    Attributes:
        name: the config's name (session folders and ids start with it).
        space: ``{dimension: [values]}`` in dimension order. Electrode
            dimensions hold array coordinates; any other dimension must be a
            stimulation parameter (``amplitude_uA``, ``frequency_hz``,
            ``pulse_width_us``, ``n_pulses``).
        electrode_dims: the dimensions mapped to a channel through ``ch2xy``.
        stimulation: fixed stimulation parameters (those not in ``space``).
        target_muscle: the muscle whose response is optimized.
        algorithm: ``{name: gpbo, kappa: ..., ...}`` for ``neuro_opt.algorithms.make``.
        n_queries: queries in the session.
        seed: the optimizer's seed.
        mode: ``operator`` (Enter per stimulation), ``autonomous`` or ``dry_run``
            (the saline test: artefacts are checked on every channel).
        max_retries: repetitions of a trial flagged invalid before it is recorded invalid.
        tell_invalid: tell the optimizer the response of a trial left invalid.
        save_windows: save every raw EMG window as ``windows/qNNNN_aN.npy``.
        prior: ``{path: estimated_map.json of an earlier session, scale, fade}`` or null.
        disabled_channels: electrodes removed from the space and the allowed set.
        provenance: free-form (source run, dataset, objective, date, code version).
    """

    name: str
    space: dict
    target_muscle: str
    algorithm: dict
    n_queries: int
    electrode_dims: list = field(default_factory=lambda: ["x", "y"])
    stimulation: dict = field(default_factory=dict)
    seed: int = 0
    mode: str = "operator"
    max_retries: int = 2
    tell_invalid: bool = False
    save_windows: bool = True
    prior: dict | None = None
    disabled_channels: list = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping) -> "OnlineConfig":
        names = [f.name for f in fields(cls)]
        required = ("name", "space", "target_muscle", "algorithm", "n_queries")
        _check_keys(d, names, "online config", required=required)
        kw = {k: _plain(v) for k, v in d.items()}
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "OnlineConfig":
        import yaml

        p = resolve_path(path, "online config")
        with open(p) as fh:
            d = yaml.safe_load(fh)
        try:
            return cls.from_dict(d)
        except ValueError as exc:
            raise ValueError(f"{p}: {exc}") from None

    def to_dict(self) -> dict:
        return to_jsonable(asdict(self))

    def validate(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("online.name must be a non-empty string")
        if not isinstance(self.space, dict) or not self.space:
            raise ValueError("online.space must map dimension names to value lists")
        for d, vals in self.space.items():
            if not isinstance(vals, list) or not vals:
                raise ValueError(f"online.space.{d} must be a non-empty list of values")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
                raise ValueError(f"online.space.{d} must hold finite numbers, got {vals}")
            if len(set(vals)) != len(vals):
                raise ValueError(f"online.space.{d} has duplicate values {vals}")
        if not isinstance(self.electrode_dims, list) or any(d not in self.space for d in self.electrode_dims):
            raise ValueError(f"online.electrode_dims {self.electrode_dims} must be dimensions of online.space "
                             f"{list(self.space)}")
        other = [d for d in self.space if d not in self.electrode_dims]
        bad = [d for d in other if d not in STIM_FIELDS or d == "channel"]
        if bad:
            raise ValueError(f"online.space dimension(s) {bad} are neither electrode dimensions nor stimulation "
                             f"parameters {[f for f in STIM_FIELDS if f != 'channel']}")
        _check_keys(self.stimulation, STIM_FIELDS, "online.stimulation")
        both = sorted(set(other) & set(self.stimulation))
        if both:
            raise ValueError(f"online: {both} are both search dimensions and fixed in online.stimulation")
        have = set(other) | set(self.stimulation) | ({"channel"} if self.electrode_dims else set())
        missing = [f for f in STIM_FIELDS if f not in have]
        if missing:
            raise ValueError(f"online.stimulation must fix {missing} (not searched)")
        if self.electrode_dims and "channel" in self.stimulation:
            raise ValueError("online.stimulation.channel is fixed but electrode_dims are searched; drop one")
        if not isinstance(self.algorithm, dict) or not isinstance(self.algorithm.get("name"), str):
            raise ValueError("online.algorithm must be a mapping with a 'name' (gpbo, extensive, greedy, ...)")
        for k in ("tell_invalid", "save_windows"):
            if not isinstance(getattr(self, k), bool):
                raise ValueError(f"online.{k} must be true or false, got {getattr(self, k)!r}")
        for k in ("n_queries", "seed", "max_retries"):
            v = getattr(self, k)
            if not (isinstance(v, int) and not isinstance(v, bool)) or v < (1 if k == "n_queries" else 0):
                raise ValueError(f"online.{k} must be an integer >= {1 if k == 'n_queries' else 0}, got {v!r}")
        if self.mode not in MODES:
            raise ValueError(f"online.mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.target_muscle, str):
            raise ValueError(f"online.target_muscle must be a muscle label, got {self.target_muscle!r}")
        if self.prior is not None:
            _check_keys(self.prior, ("path", "scale", "fade"), "online.prior")
            if self.prior.get("path") is None:
                self.prior = None
        if not all(isinstance(c, int) and c >= 1 for c in self.disabled_channels):
            raise ValueError(f"online.disabled_channels must be channel numbers >= 1, got {self.disabled_channels}")
        if not isinstance(self.provenance, dict):
            raise ValueError("online.provenance must be a mapping")


def _plain(v):
    """OmegaConf containers and tuples -> plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(v, (DictConfig, ListConfig)):
            return OmegaConf.to_container(v, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


# ---------------------------------------------------------------------------------------------
# the search space and the point -> stimulation mapping
# ---------------------------------------------------------------------------------------------
class StimulationPlan:
    """The session's search space and how each of its points is stimulated.

    Args:
        cfg: the online config.
        chmap: the headstage mapping (None only when no electrode dimension).
        limits: the rig's safety limits; ``disabled_channels`` are removed.
    """

    def __init__(self, cfg: OnlineConfig, chmap: ChannelMap | None, limits: SafetyLimits):
        self.cfg, self.chmap = cfg, chmap
        grid = SearchSpace(dict(cfg.space))
        self.electrode_axes = [grid.names.index(d) for d in cfg.electrode_dims]
        mask = np.ones(grid.grid_shape, dtype=bool)
        if cfg.electrode_dims:
            if chmap is None:
                raise ValueError("online.electrode_dims are searched but the rig config has no ch2xy mapping")
            chmap.check_covers(grid, cfg.electrode_dims)
            unknown = [c for c in cfg.disabled_channels if c > len(chmap)]
            if unknown:
                raise ValueError(f"online.disabled_channels {unknown} are not channels of ch2xy ({len(chmap)})")
            for p in range(grid.n_points):
                if self._channel(grid, p) in cfg.disabled_channels:
                    mask[tuple(grid.index[p])] = False
        self.space = SearchSpace(dict(cfg.space), mask=mask)
        self.limits = limits.without_channels(cfg.disabled_channels) if cfg.disabled_channels else limits

    def _channel(self, space: SearchSpace, point: int) -> int:
        v = space.values_of(point)
        if not self.cfg.electrode_dims:
            return int(self.cfg.stimulation["channel"])
        return self.chmap.channel_of([v[d] for d in self.cfg.electrode_dims])

    def coords(self, point: int) -> dict:
        return {k: to_jsonable(v) for k, v in self.space.values_of(point).items()}

    def params(self, point: int) -> StimParams:
        if not 0 <= int(point) < self.space.n_points:
            raise ValueError(f"point {point} outside the search space (0..{self.space.n_points - 1})")
        v = self.space.values_of(int(point))
        d = dict(self.cfg.stimulation)
        for name, val in v.items():
            if name not in self.cfg.electrode_dims:
                d[name] = val
        d["channel"] = self._channel(self.space, int(point))
        return StimParams.coerce(d)

    def preflight(self) -> None:
        """Raise :class:`SafetyViolation` if any point of the space breaks a limit."""
        bad = []
        for p in range(self.space.n_points):
            v = self.limits.violations(self.params(p))
            if v:
                bad.append(f"point {p} {self.coords(p)}: {'; '.join(v)}")
        if bad:
            raise SafetyViolation(f"{len(bad)} of {self.space.n_points} points of online.space break the rig's "
                                  f"safety limits; fix the space or disable those electrodes. First: "
                                  + " | ".join(bad[:3]))

    def describe(self) -> dict:
        return {"names": list(self.space.names), "values": {d.name: list(d.values) for d in self.space.dims},
                "mask": self.space.mask.astype(int).tolist()}


def load_prior(path: str | Path, space: SearchSpace) -> np.ndarray:
    """A ``P`` prior map for ``space`` from an earlier session's ``estimated_map.json``."""
    p = resolve_path(path, "online.prior.path")
    data = json.loads(p.read_text())
    for k in ("dims", "points", "mean"):
        if k not in data:
            raise ValueError(f"prior {p}: missing key {k!r}; expected an estimated_map.json of an online session")
    if list(data["dims"]) != list(space.names):
        raise ValueError(f"prior {p} was made for dimensions {data['dims']}, this session searches "
                         f"{list(space.names)}: an online config made for another search space")
    table = {tuple(float(c) for c in pt): m for pt, m in zip(data["points"], data["mean"])}
    out, missing = np.empty(space.n_points), []
    for i in range(space.n_points):
        key = tuple(float(v) for v in space.values_of(i).values())
        if key not in table or table[key] is None:
            missing.append(list(key))
        else:
            out[i] = float(table[key])
    if missing:
        raise ValueError(f"prior {p} has no value for {len(missing)} point(s) of this space, e.g. {missing[:4]}")
    return out


# ---------------------------------------------------------------------------------------------
# the session
# ---------------------------------------------------------------------------------------------
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
        raise OperatorNeedsTerminal("operator mode asks for Enter before every stimulation, but standard input is "
                                    "not a terminal; run it from a terminal, or pass mode=autonomous to run without "
                                    "confirmation on purpose")
    return input


def error_text(exc: BaseException) -> str:
    """``Type: message`` on one line, without terminal colour codes (journal and console)."""
    text = _ANSI.sub("", f"{type(exc).__name__}: {exc}")
    return " ".join(text.split())


class OnlineSession:
    """One session over a journal (see the module docstring).

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

    def __init__(self, cfg: OnlineConfig, plan: StimulationPlan, rig, journal: Journal, run_dir: Path,
                 make_optimizer: Callable | None = None, confirm: Callable[[str], str] | None = None,
                 tracker=None, echo: Callable[[str], None] = print):
        if make_optimizer is None:
            from neuro_opt.algorithms import make as make_optimizer
        self.cfg, self.plan, self.rig, self.journal, self.run_dir = cfg, plan, rig, journal, Path(run_dir)
        self.space = plan.space
        self.confirm = confirmation(cfg.mode, confirm)
        self.tracker, self.echo = tracker, echo
        if cfg.target_muscle not in rig.muscles:
            raise ValueError(f"online.target_muscle {cfg.target_muscle!r} is not recorded by rig {rig.name!r} "
                             f"(muscles {list(rig.muscles)})")
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
        self.P = self.space.n_points
        self.obs_sum, self.obs_cnt = np.zeros(self.P), np.zeros(self.P)
        self.max_told = -math.inf
        self.replay_mismatches = 0

    # ---- optimizer steps, identical live and in replay -----------------------------------------
    def _ask(self) -> int:
        idx = np.asarray(self.opt.ask())
        if idx.shape != (1,) or not 0 <= int(idx[0]) < self.P:
            raise RuntimeError(f"optimizer asked {idx!r}; expected one point in 0..{self.P - 1}")
        return int(idx[0])

    def _finish(self, point: int, response: float | None, told: bool) -> dict:
        if told:
            self.opt.tell(np.array([point]), np.array([float(response)]))
            self.obs_sum[point] += response
            self.obs_cnt[point] += 1
            self.max_told = max(self.max_told, float(response))
        if self.obs_cnt.sum() == 0:
            return {"best_point": None, "exploration": None, "exploitation": None}
        best = int(np.asarray(self.opt.best())[0])
        est = self.estimate()
        e_best = est[best]
        ok = math.isfinite(e_best) and e_best > 0
        return {"best_point": best, "exploration": float(e_best) if math.isfinite(e_best) else None,
                "exploitation": float(est[point] / e_best) if ok and math.isfinite(est[point]) else None}

    def estimate(self) -> np.ndarray:
        """The model's estimated response map (``P``, response units; NaN where unknown).

        The GP posterior mean when the optimizer has one (GP-BO works on
        responses divided by the largest told so far: scaled back here),
        else the mean observed response per point.
        """
        post = getattr(self.opt, "posterior", None)
        if callable(post) and self.obs_cnt.sum() > 0:
            mean = np.asarray(post()[0], dtype=np.float64).reshape(-1)[: self.P]
            scale = self.max_told if self.max_told > 0 else 1.0
            return mean * scale
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.obs_cnt > 0, self.obs_sum / np.maximum(self.obs_cnt, 1), np.nan)

    # ---- the loop --------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run the remaining queries; raises :class:`SessionStopped` when an error stops it."""
        q, pending = self._replay()
        try:
            lease = self.rig.open()
        except Exception as exc:
            self.journal.append("rig_error", at_query=q, error=error_text(exc))
            raise SessionStopped(f"the rig could not be opened before query {q + 1}: {error_text(exc)}",
                                 self.run_dir, exc) from exc
        if lease.get("taken_from"):
            self.journal.append("note", text=f"took over the rig lease from stale session {lease['taken_from']}")
        try:
            while q < self.cfg.n_queries:
                self._query(q, **pending)
                q, pending = q + 1, {}
            if not self.journal.of_kind("end") or self.journal.records[-1]["kind"] != "end":
                self.journal.append("end", n_queries=q)
        except SessionPaused:
            self.journal.append("pause", at_query=q)
            self.echo(f"session paused before query {q + 1}; resume with resume={self.run_dir}")
            return self.outputs(paused=True)
        except Exception as exc:
            last = self.journal.records[-1]["kind"]
            what = {"not_sent": "nothing was sent", "no_response": "the stimulation was sent, no valid response",
                    "maybe_delivered": "the stimulation may have been delivered",
                    "refused": "refused by the safety limits, nothing was sent"}.get(last, "")
            message = f"query {q + 1} failed{f' ({what})' if what else ''}: {error_text(exc)}"
            self.journal.append("stop", at_query=q, error=message)
            try:
                self.outputs(stopped=message)
            except Exception as out_exc:  # noqa: BLE001 - the journal holds everything; report the first error
                self.echo(f"note: session.json not written: {error_text(out_exc)}")
            raise SessionStopped(message, self.run_dir, exc) from exc
        finally:
            self.rig.close()
        return self.outputs()

    def _replay(self) -> tuple[int, dict]:
        recs = self.journal.records
        done = [r for r in recs if r["kind"] == "query"]
        for i, r in enumerate(done):
            if r["query"] != i:
                raise JournalError(f"journal {self.journal.path}: query records out of order at {i} ({r['query']})")
            asked = self._ask()
            if asked != r["point"]:
                self.replay_mismatches += 1
            self._finish(r["point"], r["response"], r["told"])
        q = len(done)
        if self.replay_mismatches:
            self.echo(f"note: on replay the optimizer asked differently at {self.replay_mismatches} of {q} queries; "
                      f"the journal's points were told (they are what was stimulated)")
        mine = [r for r in recs if r.get("query") == q and r["kind"] in ("intent", "error", *OUTCOMES)]
        if not mine:
            if q:
                self.journal.append("resume", at_query=q, mode=self.cfg.mode, mismatches=self.replay_mismatches)
            return q, {}
        points = {r["point"] for r in mine}
        if len(points) != 1:
            raise JournalError(f"journal {self.journal.path}: query {q} has attempts at several points {points}")
        closed = {r["attempt"] for r in mine if r["kind"] in OUTCOMES and "attempt" in r}
        used = {r["attempt"] for r in mine if r["kind"] in USES_ATTEMPT}
        errors = {r["attempt"]: r["error"] for r in mine if r["kind"] == "error"}  # journals before outcome kinds
        for r in mine:
            if r["kind"] == "intent" and r["attempt"] not in closed:
                why = (f"the rig failed during this stimulation ({errors[r['attempt']]})" if r["attempt"] in errors
                       else "the process died during this stimulation")
                self.journal.append("maybe_delivered", query=q, attempt=r["attempt"], point=r["point"],
                                    params=r["params"], reason=why + "; it may have been delivered, its response "
                                                                     "is unknown")
                closed.add(r["attempt"])
                used.add(r["attempt"])
        trials = [r for r in self.journal.records if r.get("query") == q and r["kind"] == "trial"]
        self.journal.append("resume", at_query=q, mode=self.cfg.mode, attempts_done=len(used),
                            mismatches=self.replay_mismatches)
        return q, {"point": points.pop(), "attempts_done": max(used) + 1 if used else 0,
                   "last_trial": trials[-1] if trials else None}

    def _query(self, q: int, point: int | None = None, attempts_done: int = 0, last_trial: dict | None = None):
        cfg, m = self.cfg, self.cfg.target_muscle
        t_ask = time.time()
        asked = self._ask()
        point = asked if point is None else point
        params = self.plan.params(point)
        try:
            self.plan.limits.check(params)
        except SafetyViolation as exc:
            self.journal.append("refused", query=q, point=point, params=params.to_dict(), error=str(exc))
            raise
        trial, a = last_trial, attempts_done
        while (trial is None or not trial["valid"]) and a <= cfg.max_retries:
            if self.confirm is not None:
                self._confirm(q, a, point, params)
            self.journal.append("intent", query=q, attempt=a, point=point, params=params.to_dict())
            try:
                tr = self.rig.stimulate(params)
            except Exception as exc:
                readback = getattr(exc, "readback", None)
                self.journal.append(OUTCOME_KIND[delivery_of(exc)], query=q, attempt=a, point=point,
                                    params=params.to_dict(), error=error_text(exc),
                                    **({"readback": readback} if readback else {}))
                raise
            window = self._save_window(q, a, tr.window)
            feat = tr.features[tr.muscles.index(m)]
            trial = self.journal.append(
                "trial", query=q, attempt=a, point=point, params=tr.params, readback=tr.readback,
                response=feat["value"],
                valid=feat["valid"], reason=feat["reason"], feature=feat,
                responses={mm: f["value"] for mm, f in zip(tr.muscles, tr.features)},
                valid_by_muscle={mm: f["valid"] for mm, f in zip(tr.muscles, tr.features)},
                artefact_snr=feat["artefact_snr"], t_stim=tr.t_stim, t_done=tr.t_done, window=window, info=tr.info)
            a += 1
            if not trial["valid"]:
                self.echo(f"  q{q + 1} attempt {a}: invalid ({trial['reason']})"
                          + ("; repeating" if a <= cfg.max_retries else "; recorded invalid"))
        response = trial["response"] if trial else None
        valid = bool(trial and trial["valid"])
        told = trial is not None and response is not None and (valid or cfg.tell_invalid)
        est = self._finish(point, response, told)
        best = est["best_point"]
        rec = self.journal.append(
            "query", query=q, point=point, asked=asked, coords=self.plan.coords(point), channel=params.channel,
            params=params.to_dict(), response=response, valid=valid, reason=trial["reason"] if trial else "lost",
            attempts=a, told=told, best_point=best, best_coords=self.plan.coords(best) if best is not None else None,
            exploration=est["exploration"], exploitation=est["exploitation"], t_ask=t_ask, t_end=time.time())
        if self.tracker is not None:
            self.tracker.log_query(rec)
        best_txt = self.plan.coords(best) if best is not None else "-"
        self.echo(f"[q {q + 1}/{cfg.n_queries}] ch {params.channel} {self.plan.coords(point)}: {m} "
                  f"{_fmt(response)}{'' if valid else ' (invalid)'} | best {best_txt} est {_fmt(est['exploration'])}")

    def _confirm(self, q: int, a: int, point: int, params: StimParams) -> None:
        prompt = (f"[q {q + 1}/{self.cfg.n_queries}{f' retry {a}' if a else ''}] channel {params.channel} "
                  f"{self.plan.coords(point)} {params.amplitude_uA} uA {params.frequency_hz:.4g} Hz "
                  f"{params.pulse_width_us} us x{params.n_pulses}: Enter to stimulate, q to pause: ")
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

    # ---- outputs ------------------------------------------------------------------------------------
    def outputs(self, paused: bool = False, stopped: str | None = None) -> dict:
        """Write the estimated map, figures and ``session.json``; return the summary.

        ``n_stimulations`` counts the triggers that were sent (a trial, or no valid response);
        ``n_maybe_delivered`` those whose fate is unknown; ``n_not_sent`` the failures before a trigger.
        """
        queries = self.journal.of_kind("query")
        trials = self.journal.of_kind("trial")
        est = self.estimate() if queries else np.full(self.P, np.nan)
        best = queries[-1]["best_point"] if queries else None
        emap = {"session_id": self.journal.header["session_id"], "target_muscle": self.cfg.target_muscle,
                "dims": list(self.space.names), "electrode_dims": list(self.cfg.electrode_dims),
                "points": [list(self.plan.coords(p).values()) for p in range(self.P)],
                "mean": [float(v) if math.isfinite(v) else None for v in est], "n_queries": len(queries)}
        _atomic_write(self.run_dir / "estimated_map.json", json.dumps(emap, indent=1))
        figures = self._figures(queries, est) if queries else []
        summary = {
            "session_id": self.journal.header["session_id"], "name": self.cfg.name, "mode": self.cfg.mode,
            "confirmation": "operator" if self.confirm is not None else "none",
            "rig": {"name": self.rig.name, "kind": self.rig.kind}, "run_dir": str(self.run_dir),
            "journal": str(self.journal.path), "paused": paused, "stopped": stopped, "n_queries": len(queries),
            "n_stimulations": len(trials) + len(self.journal.of_kind("no_response")),
            "n_maybe_delivered": len(self.journal.of_kind("maybe_delivered", "lost")),
            "n_not_sent": len(self.journal.of_kind("not_sent")),
            "n_invalid": sum(not q["valid"] for q in queries),
            "best": None if best is None else {"point": best, "coords": self.plan.coords(best),
                                               "channel": self.plan.params(best).channel,
                                               "estimate": queries[-1]["exploration"]},
            "exploration_final": queries[-1]["exploration"] if queries else None,
            "exploitation_final": queries[-1]["exploitation"] if queries else None,
            "replay_mismatches": self.replay_mismatches,
            "figures": figures, "estimated_map": str(self.run_dir / "estimated_map.json"),
        }
        if self.cfg.mode == "dry_run":
            thr = self.rig.emg.artefact_min_snr
            seen: dict[int, float] = {}
            for t in trials:
                ch = int(t["params"]["channel"])
                seen[ch] = max(seen.get(ch, 0.0), float(t["artefact_snr"] or 0.0))
            missing = sorted(ch for ch, snr in seen.items() if snr < thr)
            summary["dry_run"] = {"ok": bool(seen) and not missing, "channels_tested": sorted(seen),
                                  "channels_without_artefact": missing, "artefact_min_snr": thr}
            self.echo(f"dry run: stimulation artefact {'present on every' if not missing else 'MISSING on'} "
                      f"channel{'' if not missing else 's ' + str(missing)} of {len(seen)} tested")
        _atomic_write(self.run_dir / "session.json", json.dumps(to_jsonable(summary), indent=1))
        if self.tracker is not None and hasattr(self.tracker, "log_summary"):
            self.tracker.log_summary(summary, [self.run_dir / "estimated_map.json", self.journal.path,
                                               *[Path(f) for f in figures]])
        return summary

    def _figures(self, queries: list[dict], est: np.ndarray) -> list[str]:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        d = self.run_dir / "figures"
        d.mkdir(exist_ok=True)
        out = []
        # estimated map over the electrode grid (max over any other dimension)
        grid = self.space.to_grid(est)
        ax_e = self.plan.electrode_axes
        if len(ax_e) == 2:
            other = tuple(i for i in range(grid.ndim) if i not in ax_e)
            with np.errstate(all="ignore"):
                g = np.nanmax(grid, axis=other) if other else grid
                if ax_e[0] > ax_e[1]:
                    g = g.T
            fig, ax = plt.subplots(figsize=(5, 4))
            dx, dy = self.space.dims[ax_e[0]], self.space.dims[ax_e[1]]
            im = ax.imshow(g.T, origin="lower", cmap="viridis", aspect="auto",
                           extent=(-0.5, len(dx) - 0.5, -0.5, len(dy) - 0.5))
            ax.set_xticks(range(len(dx)), [str(v) for v in dx.values])
            ax.set_yticks(range(len(dy)), [str(v) for v in dy.values])
            ax.set_xlabel(dx.name)
            ax.set_ylabel(dy.name)
            b = queries[-1]["best_point"]
            if b is not None:
                gi = self.space.index[b]
                ax.plot(gi[ax_e[0]], gi[ax_e[1]], "r*", ms=14, label="believed best")
                ax.legend(loc="upper right", fontsize=7)
            fig.colorbar(im, ax=ax, label=f"{self.cfg.target_muscle} estimated response")
            ax.set_title(f"{self.cfg.name}: estimated map after {len(queries)} queries")
            p = d / "estimated_map.png"
            fig.tight_layout()
            fig.savefig(p, dpi=90)
            plt.close(fig)
            out.append(str(p))
        fig, axs = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
        x = [r["query"] + 1 for r in queries]
        axs[0].plot(x, [np.nan if r["exploration"] is None else r["exploration"] for r in queries], "-o", ms=3,
                    label="exploration (estimate at believed best)")
        axs[0].scatter(x, [np.nan if r["response"] is None else r["response"] for r in queries], s=10, c="k",
                       label="response")
        axs[0].set_ylabel(f"{self.cfg.target_muscle} response")
        axs[0].legend(fontsize=7)
        axs[1].plot(x, [np.nan if r["exploitation"] is None else r["exploitation"] for r in queries], "-o", ms=3,
                    color="C1")
        axs[1].set_ylabel("exploitation")
        axs[1].set_xlabel("query")
        axs[1].set_ylim(bottom=0)
        fig.suptitle(f"{self.cfg.name}: performance without ground truth")
        p = d / "performance.png"
        fig.tight_layout()
        fig.savefig(p, dpi=90)
        plt.close(fig)
        out.append(str(p))
        return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------
def _journal_path(resume: str | Path) -> Path:
    p = Path(resume)
    return p / JOURNAL_NAME if p.is_dir() else p


def _check_resumable(header: dict, cfg: OnlineConfig, plan: StimulationPlan) -> None:
    old = dict(header["online"])
    new = cfg.to_dict()
    diff = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"cannot resume {header['session_id']}: the online config differs in {diff} "
                         f"(only {list(RESUMABLE_CHANGES)} may change on resume)")
    if header["space"] != to_jsonable(plan.describe()):
        raise ValueError(f"cannot resume {header['session_id']}: its search space differs from this config's "
                         f"(an online config made for another search space)")
    if plan.chmap is not None and header.get("ch2xy") != plan.chmap.to_list():
        raise ValueError(f"cannot resume {header['session_id']}: the rig's ch2xy mapping changed")


def ensure_ray(rig_cfg: Mapping, address: str | None = None) -> None:
    """Connect to Ray at ``address``, or start a local Ray offering the rig's resource."""
    import ray

    from hardware.actor import actor_options
    from hardware.local_ray import init_local

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        init_local(num_cpus=1, resources={actor_options(rig_cfg)["resource"]: 1}, include_dashboard=False,
                   log_to_driver=False)


def run_online(online: Mapping | OnlineConfig | str | Path, rig: Mapping, *, run_dir: str | Path | None = None,
               resume: str | Path | None = None, mode: str | None = None, n_queries: int | None = None,
               use_actor: bool = True, ray_address: str | None = None, tracker=None,
               confirm: Callable[[str], str] | None = None, echo: Callable[[str], None] = print,
               make_optimizer: Callable | None = None) -> dict:
    """Run (or resume) an online session; returns the summary also written to ``session.json``.

    Args:
        online: the online config (mapping, :class:`OnlineConfig` or YAML path).
        rig: the rig config (``conf/rig/*.yaml`` as a mapping).
        run_dir: the session folder (default ``runs/online/<name>-<time>``);
            ignored when resuming (the journal's folder is used).
        resume: a session folder or journal to continue.
        mode, n_queries: override the online config's.
        use_actor: stimulate through the pinned Ray actor (False: in-process rig).
        ray_address: Ray to connect to when not initialized (None: a local Ray
            offering the rig resource).
        tracker: optional, ``log_query(record)`` and ``log_summary(summary, artifacts)`` (MLflow).
        confirm: operator prompt function (default: Enter on the terminal; see :func:`confirmation`).
        echo: progress printer.
        make_optimizer: optimizer factory (default ``neuro_opt.algorithms.make``).
    """
    from hardware.actor import open_rig_session

    if isinstance(online, OnlineConfig):
        cfg = OnlineConfig.from_dict(online.to_dict())
    elif isinstance(online, (str, Path)):
        cfg = OnlineConfig.load(online)
    else:
        cfg = OnlineConfig.from_dict(_plain(online))
    cfg.mode = resolve_mode(cfg.mode, mode)
    if n_queries is not None:
        cfg.n_queries = int(n_queries)
    cfg.validate()
    confirm = confirmation(cfg.mode, confirm)  # operator mode with nobody to confirm: refused before anything
    rig_cfg = _plain(rig)
    chspec = rig_cfg.get("ch2xy")
    chmap = None
    if cfg.electrode_dims:
        if chspec is None:
            raise ValueError("rig.ch2xy is required: the online space has electrode dimensions")
        chmap = ChannelMap.from_config(chspec, SearchSpace(dict(cfg.space)), cfg.electrode_dims)

    journal = None
    if resume is not None:
        journal = Journal.open(_journal_path(resume))
        session_id = journal.header["session_id"]
        run_dir = journal.path.parent
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        session_id = f"{cfg.name}-{stamp}-{secrets.token_hex(3)}"
        run_dir = Path(run_dir) if run_dir is not None else Path("runs") / "online" / session_id
    try:
        if use_actor:
            ensure_ray(rig_cfg, ray_address)
        rig_session = open_rig_session(rig_cfg, session_id, use_actor=use_actor, echo=echo)
        plan = StimulationPlan(cfg, chmap, rig_session.limits)
        plan.preflight()
        if journal is not None:
            _check_resumable(journal.header, cfg, plan)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            journal = Journal.create(run_dir / JOURNAL_NAME, {
                "version": 1, "session_id": session_id, "online": cfg.to_dict(), "space": plan.describe(),
                "mode": cfg.mode, "confirmation": "operator" if confirm is not None else "none",
                "ch2xy": chmap.to_list() if chmap else None, "started": _dt.datetime.now().isoformat(),
                "rig": {"name": rig_session.name, "kind": rig_session.kind, "muscles": list(rig_session.muscles),
                        "config": to_jsonable(rig_cfg)}})
        session = OnlineSession(cfg, plan, rig_session, journal, run_dir, make_optimizer=make_optimizer,
                                confirm=confirm, tracker=tracker, echo=echo)
        return session.run()
    finally:
        if journal is not None:
            journal.close()


def _set(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def main(argv: Sequence[str] | None = None) -> int:
    import yaml

    ap = argparse.ArgumentParser(prog="python -m hardware.online",
                                 description="Run or resume an online session without Hydra.")
    ap.add_argument("--online", required=True, help="online config YAML (conf/online/NAME.yaml)")
    ap.add_argument("--rig", required=True, help="rig config YAML (conf/rig/simulated.yaml or synapse.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override, e.g. rig.port=24414 or online.algorithm.kappa=2.0 (repeatable)")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--resume", default=None, help="a session folder (or its journal.jsonl) to continue")
    ap.add_argument("--mode", default=None, choices=MODES)
    ap.add_argument("--n-queries", type=int, default=None)
    ap.add_argument("--no-actor", action="store_true", help="drive the rig in-process instead of its Ray actor")
    ap.add_argument("--ray-address", default=None)
    args = ap.parse_args(argv)
    with open(resolve_path(args.online, "--online")) as fh:
        online = yaml.safe_load(fh)
    with open(resolve_path(args.rig, "--rig")) as fh:
        rig = yaml.safe_load(fh)
    for item in args.set:
        key, sep, val = item.partition("=")
        root, _, rest = key.partition(".")
        if not sep or root not in ("online", "rig") or not rest:
            ap.error(f"--set expects online.KEY=VALUE or rig.KEY=VALUE, got {item!r}")
        _set(online if root == "online" else rig, rest, yaml.safe_load(val))
    try:
        summary = run_online(online, rig, run_dir=args.run_dir, resume=args.resume, mode=args.mode,
                             n_queries=args.n_queries, use_actor=not args.no_actor, ray_address=args.ray_address)
    except SessionStopped as exc:
        print(f"error: {exc}; session folder {exc.run_dir}; resume: the same command with --resume {exc.run_dir}",
              file=sys.stderr)
        return 1
    except (SafetyViolation, RigError, JournalError, ValueError, FileNotFoundError) as exc:
        print(f"error: {error_text(exc) if isinstance(exc, RigError) else exc}", file=sys.stderr)
        return 2
    print(Path(summary["run_dir"]) / "session.json")
    return 0 if summary.get("dry_run", {}).get("ok", True) else 3


if __name__ == "__main__":
    sys.exit(main())
