"""The rig interface: set parameters, read them back, stimulate, read the evoked EMG window.

A :class:`Rig` does one stimulation per :meth:`Rig.stimulate` call:

1. check the parameters against the safety limits (a violation raises and
   nothing is sent);
2. wait out the minimum interval since the previous stimulation;
3. set the parameters on the stimulator (``_apply``);
4. read back, from the stimulator itself, every value that enters a safety
   limit (``_read_back``: amplitude, period, channel, pulse width, pulse
   count); a value other than the one checked, or read-back values that break a
   limit, raise :class:`ReadbackMismatch` /
   :class:`~hardware.safety.SafetyViolation` before the trigger;
5. trigger (``_arm`` then ``_trigger``);
6. read the evoked window (``_read_window``, ``muscles x samples``) and process
   it (:mod:`hardware.emg`) into one feature per muscle.

A failed :meth:`Rig.stimulate` says whether the stimulator got the trigger:
:func:`delivery_of` is ``not_sent`` (failed before the trigger), ``sent`` (the
trigger went out; no valid response) or ``maybe_delivered`` (the trigger call
failed and the stimulator could not say whether it took it).

Subclasses implement the underscored steps: :class:`hardware.rig.synapse.SynapseRig`
on the TDT Synapse Server API, :class:`hardware.rig.simulated.SimulatedRig` on a
virtual subject. :func:`hardware.rig.make_rig` builds either from a ``conf/rig/*.yaml`` dict.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from hardware import emg as emg_mod
from hardware.emg import EMGConfig
from hardware.safety import STIMULATOR_KEYS, SafetyLimits, SafetyViolation, StimParams, holds


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
            raise ValueError(
                f"muscle {muscle!r} is not recorded by this rig; it records {list(self.muscles)}"
            ) from None

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

    def __init__(
        self, limits: SafetyLimits, emg: EMGConfig, muscles: Sequence[str], keep_window: bool = True, name: str = "rig"
    ):
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
        return {
            "kind": self.kind,
            "name": self.name,
            "muscles": list(self.muscles),
            "n_stimulations": self.n_stimulations,
            **self._health(),
        }

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
                raise RigError(
                    f"{self.kind} rig returned a window of shape {window.shape}, "
                    f"expected ({len(self.muscles)}, samples)"
                )
            try:
                feats = emg_mod.process(window, self.emg, p.pulse_times_ms())
            except ValueError as exc:
                raise RigError(f"{self.kind} rig: bad EMG window: {exc}") from None
        except Exception as exc:
            _mark(exc, SENT)
            raise
        return Trial(
            params=p.to_dict(),
            muscles=self.muscles,
            features=[f.to_dict() for f in feats],
            t_stim=t_stim,
            t_done=t_done,
            window=window.astype(np.float32) if self.keep_window else None,
            info=info,
            readback=held,
        )

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
        diffs = [
            f"{self._label(k)} reads back {held[k]!r} "
            + (
                f"after writing {intended[k]!r}"
                if self._writes(k)
                else f"but {intended[k]!r} was checked (the circuit fixes it: rig.circuit must say what it holds)"
            )
            for k in STIMULATOR_KEYS
            if not holds(held[k], intended[k])
        ]
        if diffs:
            raise ReadbackMismatch(
                "; ".join(diffs) + ": the stimulator does not hold the checked values; not delivered", readback=held
            )
        bad = self.limits.violations(StimParams.from_stimulator(held))
        if bad:
            raise ReadbackMismatch(
                f"the stimulator's values {held} break the safety limits: {'; '.join(bad)}; not delivered",
                readback=held,
            )
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
