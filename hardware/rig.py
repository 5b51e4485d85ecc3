"""The rig interface: set parameters, read them back, stimulate, read the evoked EMG window.

A :class:`Rig` does one stimulation per :meth:`Rig.stimulate` call:

1. check the parameters against the safety limits (a violation raises and
   nothing is sent);
2. wait out the minimum interval since the previous stimulation;
3. set the parameters on the stimulator (``_apply``);
4. read back, from the stimulator itself, every value that enters a safety
   limit (``_read_back``: amplitude, period, channel, pulse width, pulse
   count); a value other than the one checked, or read-back values that break a
   limit, raise :class:`~hardware.safety.ReadbackMismatch` /
   :class:`~hardware.safety.SafetyViolation` before the trigger;
5. trigger (``_arm`` then ``_trigger``);
6. read the evoked window (``_read_window``, ``muscles x samples``) and process
   it (:mod:`hardware.emg`) into one feature per muscle.

A failed :meth:`Rig.stimulate` says whether the stimulator got the trigger:
:func:`delivery_of` is ``not_sent`` (failed before the trigger), ``sent`` (the
trigger went out; no valid response) or ``maybe_delivered`` (the trigger call
failed and the stimulator could not say whether it took it).

Subclasses implement the underscored steps: :class:`hardware.synapse.SynapseRig`
on the TDT Synapse Server API, :class:`hardware.simulated.SimulatedRig` on a
virtual subject. :func:`make_rig` builds either from a ``conf/rig/*.yaml`` dict.

:class:`ChannelMap` holds the headstage's channel <-> electrode coordinates
mapping (``ch2xy``: channel ``k`` is row ``k-1``).
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hardware import emg as emg_mod
from hardware.emg import EMGConfig
from hardware.safety import STIMULATOR_KEYS, SafetyLimits, SafetyViolation, StimParams

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class RigError(RuntimeError):
    """The rig or its software answered wrongly, late, or not at all."""


class LateResponse(RigError):
    """The evoked window did not arrive in time."""


class ReadbackMismatch(SafetyViolation, RigError):
    """The stimulator holds other values than the ones checked; nothing was sent.

    ``readback`` is what the stimulator reported (:data:`~hardware.safety.STIMULATOR_KEYS`)."""

    def __init__(self, message: str, readback: Mapping | None = None):
        super().__init__(message)
        self.readback = dict(readback or {})


NOT_SENT, SENT, MAYBE_DELIVERED = "not_sent", "sent", "maybe_delivered"


def delivery_of(exc: BaseException) -> str:
    """Whether a failed :meth:`Rig.stimulate` reached the stimulator: ``not_sent``, ``sent`` or
    ``maybe_delivered`` (also for an exception that did not come from a rig: unknown)."""
    return getattr(exc, "delivery", MAYBE_DELIVERED)


def _mark(exc: BaseException, delivery: str) -> None:
    # an attribute, not a wrapper type: callers keep catching LateResponse, SafetyViolation, ...,
    # and it survives pickling (Ray) with the exception's __dict__
    if not hasattr(exc, "delivery"):
        exc.delivery = delivery


def resolve_path(path: str | Path, what: str) -> Path:
    """``path`` as given if it exists, else relative to the project root; error naming both."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"{what}: {p} does not exist")
        return p
    q = PROJECT_ROOT / p
    if q.exists():
        return q
    raise FileNotFoundError(f"{what}: neither {p.resolve()} nor {q} exists")


class ChannelMap:
    """Stimulator channel (1-based) <-> electrode coordinates on the array grid.

    Args:
        ch2xy: one coordinate tuple per channel; row ``k-1`` is channel ``k``.
            Coordinates are the values of the search space's electrode
            dimensions (1-based grid positions in the published format).
    """

    def __init__(self, ch2xy: Sequence[Sequence[float]], source: str = "<memory>"):
        rows = [tuple(r) for r in ch2xy]
        if not rows:
            raise ValueError(f"ch2xy {source}: empty mapping")
        width = len(rows[0])
        for k, r in enumerate(rows, start=1):
            if len(r) != width or width == 0:
                raise ValueError(f"ch2xy {source}: channel {k} has {len(r)} coordinates, expected {width}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in r):
                raise ValueError(f"ch2xy {source}: channel {k} has non-numeric coordinates {list(r)}")
        self.source = source
        self.ch2xy: tuple[tuple[float, ...], ...] = tuple(tuple(float(v) for v in r) for r in rows)
        self._of = {}
        for k, r in enumerate(self.ch2xy, start=1):
            if r in self._of:
                raise ValueError(f"ch2xy {source}: channels {self._of[r]} and {k} both map to {list(rows[k - 1])}")
            self._of[r] = k

    @classmethod
    def load(cls, path: str | Path) -> "ChannelMap":
        """Read ``{"ch2xy": [[x, y], ...]}`` (or a bare list) from a JSON file."""
        p = resolve_path(path, "ch2xy mapping")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"ch2xy {p}: not valid JSON: {exc}") from None
        if isinstance(data, dict):
            if "ch2xy" not in data:
                raise ValueError(f"ch2xy {p}: expected a 'ch2xy' key, found {sorted(data)}")
            data = data["ch2xy"]
        if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
            raise ValueError(f"ch2xy {p}: expected a list of [x, y] rows")
        return cls(data, source=str(p))

    @classmethod
    def auto(cls, space, electrode_dims: Sequence[str]) -> "ChannelMap":
        """Channels numbered in the space's point order over its electrode dimensions."""
        dims = [space.names.index(d) for d in electrode_dims]
        seen, rows = set(), []
        for p in range(space.n_points):
            v = space.values_of(p)
            key = tuple(float(v[space.names[d]]) for d in dims)
            if key not in seen:
                seen.add(key)
                rows.append(key)
        return cls(rows, source="auto")

    @classmethod
    def from_config(cls, spec, space=None, electrode_dims: Sequence[str] = ("x", "y")) -> "ChannelMap":
        """From a path, an inline list, or ``"auto"`` (needs ``space``)."""
        if spec == "auto":
            if space is None:
                raise ValueError("ch2xy 'auto' needs a search space")
            return cls.auto(space, electrode_dims)
        if isinstance(spec, (list, tuple)):
            return cls(spec, source="inline")
        if isinstance(spec, (str, Path)):
            return cls.load(spec)
        raise ValueError(f"ch2xy must be a JSON file path, a list of coordinates or 'auto', got {spec!r}")

    def __len__(self) -> int:
        return len(self.ch2xy)

    @property
    def n_dims(self) -> int:
        return len(self.ch2xy[0])

    def channel_of(self, coords: Sequence[float]) -> int:
        key = tuple(float(c) for c in coords)
        try:
            return self._of[key]
        except KeyError:
            raise ValueError(f"ch2xy {self.source}: no channel at electrode coordinates {list(coords)}") from None

    def coords_of(self, channel: int) -> tuple[float, ...]:
        if not (isinstance(channel, (int, np.integer)) and 1 <= channel <= len(self.ch2xy)):
            raise ValueError(f"ch2xy {self.source}: channel {channel!r} outside 1..{len(self.ch2xy)}")
        return self.ch2xy[int(channel) - 1]

    def check_covers(self, space, electrode_dims: Sequence[str]) -> None:
        """Raise unless every electrode position of ``space`` has exactly one channel."""
        missing = []
        if len(electrode_dims) != self.n_dims:
            raise ValueError(f"ch2xy {self.source} has {self.n_dims} coordinates per channel but the search space "
                             f"has {len(electrode_dims)} electrode dimensions {list(electrode_dims)}")
        for d in electrode_dims:
            if d not in space.names:
                raise ValueError(f"electrode dimension {d!r} is not in the search space {list(space.names)}")
        for p in range(space.n_points):
            v = space.values_of(p)
            key = tuple(float(v[d]) for d in electrode_dims)
            if key not in self._of and list(key) not in missing:
                missing.append(list(key))
        if missing:
            raise ValueError(f"ch2xy {self.source} does not cover the search space: no channel for "
                             f"{len(missing)} electrode position(s) {missing[:6]}{' ...' if len(missing) > 6 else ''}")

    def to_list(self) -> list[list[float]]:
        return [list(r) for r in self.ch2xy]


@dataclass
class Trial:
    """One stimulation and its processed response.

    Attributes:
        params: the stimulation delivered (:class:`StimParams` fields).
        muscles: muscle labels, one per EMG buffer.
        features: one :class:`hardware.emg.EMGFeature` dict per muscle.
        t_stim, t_done: unix times of the trigger and of the window's arrival.
        window: ``muscles x samples`` raw window (buffer units), or None.
        info: rig-specific extras (the simulated ground truth, ...).
        readback: what the stimulator held at the trigger, read back from it
            (:data:`~hardware.safety.STIMULATOR_KEYS`).
    """

    params: dict
    muscles: tuple[str, ...]
    features: list[dict]
    t_stim: float
    t_done: float
    window: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    readback: dict = field(default_factory=dict)

    def _m(self, muscle: str) -> int:
        try:
            return self.muscles.index(muscle)
        except ValueError:
            raise ValueError(f"muscle {muscle!r} is not recorded by this rig; it records {list(self.muscles)}") \
                from None

    def response(self, muscle: str) -> float:
        return float(self.features[self._m(muscle)]["value"])

    def valid(self, muscle: str) -> bool:
        return bool(self.features[self._m(muscle)]["valid"])

    def reason(self, muscle: str) -> str:
        return str(self.features[self._m(muscle)]["reason"])


class Rig(ABC):
    """Base class of every rig; see the module docstring for the sequence.

    Args:
        limits: the safety limits checked before every stimulation.
        emg: EMG processing parameters.
        muscles: labels of the EMG buffers, in buffer order.
        keep_window: return the raw window with each :class:`Trial`.
        name: the rig's name (the Ray actor's name).
    """

    kind = "abstract"

    def __init__(self, limits: SafetyLimits, emg: EMGConfig, muscles: Sequence[str], keep_window: bool = True,
                 name: str = "rig"):
        if not muscles or len(set(muscles)) != len(muscles):
            raise ValueError(f"rig muscles must be non-empty and unique, got {list(muscles)}")
        self.limits, self.emg, self.muscles = limits, emg, tuple(str(m) for m in muscles)
        self.keep_window, self.name = bool(keep_window), str(name)
        self._connected = False
        self._last_stim: float | None = None
        self.n_stimulations = 0

    # ---- the public sequence -------------------------------------------------------------
    def connect(self) -> dict:
        """Connect and check the rig (idempotent); returns :meth:`health`."""
        if not self._connected:
            self._connect()
            self._connected = True
        return self.health()

    def health(self) -> dict:
        """Current state of the rig; raises :class:`RigError` when it cannot stimulate."""
        return {"kind": self.kind, "name": self.name, "muscles": list(self.muscles),
                "n_stimulations": self.n_stimulations, **self._health()}

    def close(self) -> None:
        self._connected = False

    def stimulate(self, params: StimParams | Mapping) -> Trial:
        """Deliver one stimulation and return its processed response.

        Raises whatever stopped it, with :func:`delivery_of` telling whether the trigger went out.
        """
        try:
            p = self.limits.check(params)  # SafetyViolation: nothing below runs
            self.check_deliverable(p)
            if not self._connected:
                self.connect()
            self._pace()
            self._apply(p)
            held = self._verified(p, self._read_back(p))
            self._arm(p)
        except Exception as exc:
            _mark(exc, NOT_SENT)
            raise
        t_stim = time.time()
        try:
            self._trigger(p)
        except Exception as exc:
            _mark(exc, {True: SENT, False: NOT_SENT}.get(self._triggered(), MAYBE_DELIVERED))
            if delivery_of(exc) == SENT:
                self._count_stimulation()
            raise
        self._count_stimulation()
        try:
            window, info = self._read_window(p)
            t_done = time.time()
            window = np.asarray(window, dtype=np.float64)
            if window.shape[0] != len(self.muscles) or window.ndim != 2:
                raise RigError(f"{self.kind} rig returned a window of shape {window.shape}, "
                               f"expected ({len(self.muscles)}, samples)")
            try:
                feats = emg_mod.process(window, self.emg, p.pulse_times_ms())
            except ValueError as exc:
                raise RigError(f"{self.kind} rig: bad EMG window: {exc}") from None
        except Exception as exc:
            _mark(exc, SENT)
            raise
        return Trial(params=p.to_dict(), muscles=self.muscles, features=[f.to_dict() for f in feats],
                     t_stim=t_stim, t_done=t_done, window=window.astype(np.float32) if self.keep_window else None,
                     info=info, readback=held)

    def _count_stimulation(self) -> None:
        self._last_stim = time.monotonic()
        self.n_stimulations += 1

    def _verified(self, p: StimParams, held: Mapping[str, float]) -> dict:
        """``held`` (read back from the stimulator) if it is what was checked and within the limits."""
        intended = {k: float(v) for k, v in p.as_stimulator().items()}
        missing = [k for k in STIMULATOR_KEYS if k not in held]
        if missing:
            raise RigError(f"{self.kind} rig read back no value for {missing}; not delivered")
        held = {k: float(held[k]) for k in STIMULATOR_KEYS}
        diffs = [f"{self._label(k)} reads back {held[k]!r} "
                 + (f"after writing {intended[k]!r}" if self._writes(k) else
                    f"but {intended[k]!r} was checked (the circuit fixes it: rig.circuit must say what it holds)")
                 for k in STIMULATOR_KEYS if not math.isclose(held[k], intended[k], rel_tol=1e-5, abs_tol=1e-6)]
        if diffs:
            raise ReadbackMismatch("; ".join(diffs) + ": the stimulator does not hold the checked values; "
                                   "not delivered", readback=held)
        bad = self.limits.violations(StimParams.from_stimulator(held))
        if bad:
            raise ReadbackMismatch(f"the stimulator's values {held} break the safety limits: {'; '.join(bad)}; "
                                   f"not delivered", readback=held)
        return held

    def check_deliverable(self, p: StimParams) -> None:
        """Raise :class:`SafetyViolation` if this rig cannot deliver ``p`` exactly (default: it can)."""

    def _label(self, key: str) -> str:
        """How the stimulator names its parameter ``key`` (:data:`STIMULATOR_KEYS`), for messages."""
        return key

    def _writes(self, key: str) -> bool:
        """Whether :meth:`_apply` writes ``key`` (False: the circuit fixes it; it is only read back)."""
        return True

    def _arm(self, p: StimParams) -> None:
        """Last step before the trigger (e.g. snapshot the EMG buffers); a failure here sends nothing."""

    def _triggered(self) -> bool | None:
        """After a failed :meth:`_trigger`: did the stimulator take the trigger? None: cannot tell."""
        return None

    def _pace(self) -> None:
        if self._last_stim is None:
            return
        wait = self.limits.min_interval_s - (time.monotonic() - self._last_stim)
        if wait > 0:
            time.sleep(wait)

    # ---- to implement ----------------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _health(self) -> dict: ...

    @abstractmethod
    def _apply(self, p: StimParams) -> None: ...

    @abstractmethod
    def _read_back(self, p: StimParams) -> dict:
        """The values the stimulator holds now, by :data:`~hardware.safety.STIMULATOR_KEYS`."""

    @abstractmethod
    def _trigger(self, p: StimParams) -> None: ...

    @abstractmethod
    def _read_window(self, p: StimParams) -> tuple[np.ndarray, dict]: ...


RIG_COMMON_KEYS = ("kind", "name", "ch2xy", "electrode_dims", "muscles", "emg", "limits", "actor", "keep_window")


def make_rig(cfg: Mapping[str, Any]) -> Rig:
    """Build a rig from a ``conf/rig/*.yaml`` mapping (``kind: synapse`` or ``simulated``)."""
    kind = cfg.get("kind") if isinstance(cfg, Mapping) else None
    if kind == "synapse":
        from hardware.synapse import SynapseRig
        return SynapseRig.from_config(cfg)
    if kind == "simulated":
        from hardware.simulated import SimulatedRig
        return SimulatedRig.from_config(cfg)
    raise ValueError(f"rig.kind must be 'synapse' or 'simulated', got {kind!r}")


__all__ = ["Rig", "RigError", "LateResponse", "Trial", "ChannelMap", "make_rig", "SafetyViolation", "StimParams",
           "ReadbackMismatch", "resolve_path", "delivery_of", "NOT_SENT", "SENT", "MAYBE_DELIVERED"]
