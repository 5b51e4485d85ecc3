"""The TDT rig through the Synapse Server API (``tdt.SynapseAPI``).

The published circuit (STAR Protocols step 52; ``REFERENCE.md``): the IZ2 is
driven by the ``eStim1`` gizmo (``AmpA`` in uA, ``PeriodA`` = 1000 / frequency
in ms, ``ChanA`` the channel 1..32); a stimulation is triggered by setting
``Button1.Go`` to 1 then 0; the PZ5 (EMG mode, ~6 kHz) feeds one peri-stimulus
buffer per muscle (``buffer_1`` .. ``buffer_3``), read through their ``array``
parameter. Every gizmo and parameter name comes from the rig config.

``tdt.SynapseAPI`` prints and returns a sentinel on errors instead of raising
(``None`` for reads, ``0`` for writes, ``-1`` for ``getMode``, ``0`` for sizes,
strings where numbers are expected). :meth:`SynapseRig._call` checks every
return value and turns anything wrong into a :class:`~hardware.rig.base.RigError`
that names the call and carries what the client printed.

Sequence per stimulation: write every stimulation parameter the circuit lets
software set; read back all five that enter a safety limit (amplitude, period,
channel, pulse width, pulse count), including those the circuit fixes, and check
them (so what reaches the IZ2 is exactly what passed the safety check); snapshot
the EMG buffers; trigger; wait ``read.delay_s``, then poll the buffers until
every one of them has changed (a new window; a window landing between two buffer
reads is read again, never mixed) or ``read.timeout_s`` passes
(:class:`~hardware.rig.base.LateResponse`). When a trigger write fails, the trigger
parameter is read back to tell a trigger that went out from one that did not.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from typing import Any, Callable, Mapping

import numpy as np

from hardware.emg import EMGConfig
from hardware.rig.base import RIG_COMMON_KEYS, LateResponse, Rig, RigError
from hardware.safety import STIMULATOR_KEYS, SafetyLimits, SafetyViolation, StimParams, check_keys

MODES = ("Idle", "Standby", "Preview", "Record")
RUNTIME_MODES = ("Preview", "Record")

DEFAULT_STIMULATOR = {
    "gizmo": "eStim1",
    "amplitude": "AmpA",
    "period": "PeriodA",
    "channel": "ChanA",
    "pulse_width": "DurA",
    "n_pulses": "CountA",
    "fixed": ["pulse_width", "n_pulses"],
}
# parameters a circuit may fix (software reads them back but never writes them), with their rig.circuit keys
FIXABLE = {"pulse_width": "pulse_width_us", "n_pulses": "n_pulses"}
DEFAULT_TRIGGER = {"gizmo": "Button1", "param": "Go"}
DEFAULT_BUFFERS = ("buffer_1", "buffer_2", "buffer_3")
DEFAULT_READ = {"delay_s": 0.25, "poll_s": 0.02, "timeout_s": 3.0}
DEFAULT_CIRCUIT = {"pulse_width_us": 200.0, "n_pulses": 13}


class SynapseRig(Rig):
    """A rig on a TDT Synapse Server.

    Args:
        host, port: the Synapse Server (``rig.host=HOST`` to switch labs).
        http_timeout_s: socket timeout of every HTTP request (a hung Synapse is
            a late response, not a hang).
        mode: runtime mode to switch to when Synapse is Idle or Standby
            (``Preview`` or ``Record``); None: require a runtime mode already.
        mode_timeout_s: time allowed for the switch.
        stimulator: gizmo and parameter names (``amplitude``, ``period``,
            ``channel``, ``pulse_width``, ``n_pulses``: all five are read back
            before every trigger), and ``fixed``: those the circuit sets
            (``pulse_width``, ``n_pulses``), read back but never written.
        trigger: gizmo and parameter of the trigger (set 1 then 0).
        buffers: EMG buffer gizmos, one per muscle; ``buffer_param`` their array.
        muscles: labels of the buffers.
        read: ``delay_s`` before the first read, ``poll_s`` between reads,
            ``timeout_s`` before the window counts as late.
        circuit: the pulse width (us) and pulse count the circuit fixes (the
            ``fixed`` parameters): a stimulation asking for others is refused,
            and the read-back must find them on the stimulator.
        constants: ``{"GIZMO.PARAM": value}`` written and verified at connect.
        limits, emg: safety limits and EMG processing.
    """

    kind = "synapse"

    def __init__(
        self,
        *,
        limits: SafetyLimits,
        emg: EMGConfig | None = None,
        host: str = "localhost",
        port: int = 24414,
        http_timeout_s: float = 5.0,
        mode: str | None = "Preview",
        mode_timeout_s: float = 15.0,
        stimulator: Mapping | None = None,
        trigger: Mapping | None = None,
        buffers=DEFAULT_BUFFERS,
        buffer_param: str = "array",
        muscles=("TA", "EDL", "GM"),
        read: Mapping | None = None,
        circuit: Mapping | None = None,
        constants: Mapping | None = None,
        keep_window: bool = True,
        name: str = "tdt_rig",
    ):
        super().__init__(limits, emg or EMGConfig(), muscles, keep_window=keep_window, name=name)
        self.host, self.port = str(host), int(port)
        if not (isinstance(http_timeout_s, (int, float)) and http_timeout_s > 0):
            raise ValueError(f"rig.http_timeout_s must be > 0, got {http_timeout_s!r}")
        self.http_timeout_s = float(http_timeout_s)
        if mode is not None and mode not in RUNTIME_MODES:
            raise ValueError(f"rig.mode must be one of {RUNTIME_MODES} or null, got {mode!r}")
        self.mode, self.mode_timeout_s = mode, float(mode_timeout_s)
        self.stim = _merged(DEFAULT_STIMULATOR, stimulator, "rig.stimulator")
        for k in ("gizmo", *STIMULATOR_KEYS):
            if not (isinstance(self.stim[k], str) and self.stim[k]):
                raise ValueError(
                    f"rig.stimulator.{k} must name a Synapse parameter, got {self.stim[k]!r} (every "
                    f"stimulation parameter that enters a safety limit is read back before each trigger)"
                )
        fixed = self.stim["fixed"]
        if not isinstance(fixed, (list, tuple)) or any(k not in FIXABLE for k in fixed):
            raise ValueError(
                f"rig.stimulator.fixed must list parameters the circuit sets, among {list(FIXABLE)}; got {fixed!r}"
            )
        self.fixed = tuple(fixed)
        self.trig = _merged(DEFAULT_TRIGGER, trigger, "rig.trigger")
        self.buffers, self.buffer_param = tuple(buffers), str(buffer_param)
        if len(self.buffers) != len(self.muscles):
            raise ValueError(f"rig.buffers ({len(self.buffers)}) and rig.muscles ({len(self.muscles)}) must pair up")
        self.read = _merged(DEFAULT_READ, read, "rig.read")
        for k, v in self.read.items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"rig.read.{k} must be a number >= 0, got {v!r}")
        self.circuit = _merged(DEFAULT_CIRCUIT, circuit, "rig.circuit")
        self.constants = dict(constants or {})
        for k in self.constants:
            if k.count(".") != 1:
                raise ValueError(f"rig.constants key {k!r} must be 'GIZMO.PARAM'")
        self.api = None
        self.n_samples: int | None = None
        self._before: np.ndarray | None = None
        self._mode_str = ""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "SynapseRig":
        keys = RIG_COMMON_KEYS + (
            "host",
            "port",
            "http_timeout_s",
            "mode",
            "mode_timeout_s",
            "stimulator",
            "trigger",
            "buffers",
            "buffer_param",
            "read",
            "circuit",
            "constants",
        )
        check_keys(cfg, keys, "rig (synapse)", required=("limits",))
        if cfg.get("ch2xy") == "auto":
            raise ValueError("rig.ch2xy: a real headstage needs its channel mapping file, not 'auto'")
        kw = {k: v for k, v in cfg.items() if k not in ("kind", "actor", "limits", "emg", "ch2xy", "electrode_dims")}
        kw["limits"] = SafetyLimits.from_dict(cfg["limits"])
        kw["emg"] = EMGConfig.from_dict(cfg.get("emg"))
        for k in ("buffers", "muscles"):
            if k in kw and kw[k] is not None:
                kw[k] = list(kw[k])
        return cls(**kw)

    # ---- checked calls into tdt.SynapseAPI --------------------------------------------------------
    def _call(self, name: str, args: tuple, ok: Callable[[Any], bool], expect: str):
        """Call ``SynapseAPI.name(*args)``; return its value if ``ok(value)``, else raise RigError."""
        if self.api is None:
            raise RigError("SynapseRig is not connected")
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                value = getattr(self.api, name)(*args)
        except Exception as exc:  # the client raises on some malformed answers (None[...])
            raise RigError(
                f"SynapseAPI.{name}{_fmt(args)} failed at {self.host}:{self.port}: "
                f"{type(exc).__name__}: {exc}{_printed(out)}"
            ) from None
        try:
            good = ok(value)
        except Exception:
            good = False
        if not good:
            raise RigError(
                f"SynapseAPI.{name}{_fmt(args)} returned {_short(value)} at {self.host}:{self.port}, "
                f"expected {expect}{_printed(out)}"
            )
        return value

    def _get_mode(self) -> str:
        m = self._call(
            "getMode",
            (),
            lambda v: isinstance(v, int) and 0 <= v < len(MODES),
            "a mode 0..3 (-1 means Synapse did not answer: is it running with the Server API enabled?)",
        )
        return MODES[m]

    def _set(self, gizmo: str, param: str, value) -> None:
        self._call("setParameterValue", (gizmo, param, value), lambda v: v == 1, "1 (success)")

    def _get(self, gizmo: str, param: str) -> float:
        return float(self._call("getParameterValue", (gizmo, param), _is_finite_number, "a finite number"))

    def _set_verified(self, gizmo: str, param: str, value) -> None:
        """Write and read back one value (the connect-time constants)."""
        self._set(gizmo, param, value)
        back = self._get(gizmo, param)
        if not math.isclose(back, float(value), rel_tol=1e-5, abs_tol=1e-6):
            raise RigError(
                f"{gizmo}.{param} reads back {back} after writing {value}: the stimulator does not hold "
                f"the checked value; no stimulation sent"
            )

    def _read_buffers(self) -> np.ndarray:
        n = self.n_samples
        rows = []
        for b in self.buffers:
            vals = self._call(
                "getParameterValues",
                (b, self.buffer_param, n, 0),
                lambda v: isinstance(v, list) and len(v) == n and all(_is_number(x) for x in v),
                f"a list of {n} numbers",
            )
            arr = np.asarray(vals, dtype=np.float64)
            if not np.all(np.isfinite(arr)):
                bad = np.flatnonzero(~np.isfinite(arr))
                raise RigError(
                    f"SynapseAPI.getParameterValues('{b}', '{self.buffer_param}') returned NaN/inf at "
                    f"{bad.size} sample(s), first {bad[:5].tolist()}; window rejected"
                )
            rows.append(arr)
        return np.stack(rows)

    # ---- Rig steps ----------------------------------------------------------------------------
    def _connect(self) -> None:
        import tdt

        self.api = tdt.SynapseAPI(self.host, self.port)
        # the client never sets a socket timeout; a hung server must not hang the session
        self.api.synCon.timeout = self.http_timeout_s
        mode = self._get_mode()
        if mode not in RUNTIME_MODES:
            if self.mode is None:
                raise RigError(
                    f"Synapse at {self.host}:{self.port} is in {mode} mode; expected Preview or Record "
                    f"(start the experiment, or set rig.mode to switch automatically)"
                )
            self._call("setModeStr", (self.mode,), lambda v: v == 1, "1 (success)")
            deadline = time.monotonic() + self.mode_timeout_s
            while (mode := self._get_mode()) not in RUNTIME_MODES:
                if time.monotonic() > deadline:
                    raise RigError(
                        f"Synapse did not reach {self.mode} mode within {self.mode_timeout_s} s (still {mode})"
                    )
                time.sleep(0.1)
        self._mode_str = mode
        gizmos = self._call(
            "getGizmoNames", (), lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of gizmo names"
        )
        need = [self.stim["gizmo"], self.trig["gizmo"], *self.buffers]
        missing = [g for g in need if g not in gizmos]
        if missing:
            raise RigError(
                f"Synapse's experiment lacks gizmo(s) {missing} (it has {gizmos}); load the circuit or "
                f"fix rig.stimulator / rig.trigger / rig.buffers"
            )
        sizes = [
            int(
                self._call(
                    "getParameterSize",
                    (b, self.buffer_param),
                    lambda v: isinstance(v, int) and v > 0,
                    "a positive buffer size",
                )
            )
            for b in self.buffers
        ]
        if len(set(sizes)) != 1:
            raise RigError(f"EMG buffers {list(self.buffers)} have different sizes {sizes}")
        self.n_samples = sizes[0]
        if self.n_samples != self.emg.n_samples:
            raise RigError(
                f"EMG buffers hold {self.n_samples} samples but rig.emg (fs {self.emg.fs} Hz, "
                f"{self.emg.pre_ms} + {self.emg.post_ms} ms) expects {self.emg.n_samples}; fix rig.emg"
            )
        for key, value in self.constants.items():
            g, p = key.split(".")
            self._set_verified(g, p, value)
        self._set(self.trig["gizmo"], self.trig["param"], 0)  # a trigger left high would swallow the next edge

    def _health(self) -> dict:
        if self.api is None:
            return {"connected": False, "host": self.host, "port": self.port}
        mode = self._get_mode()
        if mode not in RUNTIME_MODES:
            raise RigError(f"Synapse at {self.host}:{self.port} left runtime mode: now {mode}")
        return {"connected": True, "host": self.host, "port": self.port, "mode": mode, "n_samples": self.n_samples}

    def check_deliverable(self, p: StimParams) -> None:
        for key in self.fixed:
            field, declared = FIXABLE[key], self.circuit[FIXABLE[key]]
            if not math.isclose(float(getattr(p, field)), float(declared)):
                raise SafetyViolation(
                    f"{field}={getattr(p, field)} cannot be delivered: the circuit's {field} is "
                    f"fixed at {declared} (rig.circuit.{field}); nothing sent"
                )

    def _label(self, key: str) -> str:
        return f"{self.stim['gizmo']}.{self.stim[key]}"

    def _writes(self, key: str) -> bool:
        return key not in self.fixed

    def _apply(self, p: StimParams) -> None:
        for key, value in p.as_stimulator().items():
            if self._writes(key):
                self._set(self.stim["gizmo"], self.stim[key], value)

    def _read_back(self, p: StimParams) -> dict:
        return {key: self._get(self.stim["gizmo"], self.stim[key]) for key in STIMULATOR_KEYS}

    def _arm(self, p: StimParams) -> None:
        self._before = self._read_buffers()

    def _trigger(self, p: StimParams) -> None:
        g, prm = self.trig["gizmo"], self.trig["param"]
        self._set(g, prm, 1)
        self._set(g, prm, 0)

    def _triggered(self) -> bool | None:
        # a trigger write that failed may still have landed (a lost reply): the trigger
        # parameter still high says it did; lower it so the next rising edge counts
        g, prm = self.trig["gizmo"], self.trig["param"]
        try:
            high = self._get(g, prm) != 0
        except RigError:
            return None
        if high:
            with contextlib.suppress(RigError):
                self._set(g, prm, 0)
        return high

    def _read_window(self, p: StimParams) -> tuple[np.ndarray, dict]:
        t0 = time.monotonic()
        time.sleep(self.read["delay_s"])
        while True:
            w = self._read_buffers()
            # every buffer must hold the new window: one read per buffer means a window landing
            # between two reads would otherwise mix two stimulations
            changed = [not np.array_equal(w[i], self._before[i]) for i in range(len(self.buffers))]
            if all(changed):
                return w, {"mode": self._mode_str, "wait_s": time.monotonic() - t0}
            if time.monotonic() - t0 > self.read["timeout_s"]:
                stale = [b for b, c in zip(self.buffers, changed) if not c]
                raise LateResponse(
                    f"no new EMG window in {stale} within {self.read['timeout_s']} s of the trigger "
                    f"(channel {p.channel}); the stimulation was sent"
                )
            time.sleep(self.read["poll_s"])

    def close(self) -> None:
        if self.api is not None:
            with contextlib.suppress(Exception):
                self.api.synCon.close()
        self.api = None
        super().close()


def _merged(default: Mapping, given: Mapping | None, where: str) -> dict:
    given = dict(given or {})
    check_keys(given, default.keys(), where)
    return {**default, **given}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_finite_number(v) -> bool:
    return _is_number(v) and math.isfinite(v)


def _fmt(args: tuple) -> str:
    return "(" + ", ".join(repr(a) for a in args) + ")"


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _printed(out: io.StringIO) -> str:
    text = " ".join(out.getvalue().split())
    return f"; the client printed: {text}" if text else ""
