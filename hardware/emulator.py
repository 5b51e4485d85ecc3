"""A loopback Synapse Server emulator backed by a :class:`~hardware.rig.simulated.SimulatedRig`.

    python -m hardware.emulator --port 24414 --dataset synthetic_rat [--ch2xy conf/rig/ch2xy_rat32.json]

It speaks the subset of the Synapse Server HTTP+JSON API that ``tdt.SynapseAPI``
uses for the rig (the same paths and JSON shapes as the client sends/expects):

- ``GET /system/mode`` -> ``{"mode": "Idle"|"Standby"|"Preview"|"Record"}``;
  ``PUT /system/mode`` ``{"mode": ...}`` (an error if already in that mode, as Synapse);
- ``OPTIONS /gizmos`` -> ``{"gizmos": [...]}``; ``OPTIONS /params/GIZMO`` -> ``{"parameters": [...]}``;
- ``GET /params/size/GIZMO.PARAM`` -> ``{"value": n}``;
- ``GET /params/GIZMO.PARAM`` -> ``{"value": x}``, or with a JSON body
  ``{"count", "offset"}`` -> ``{"values": [...]}``;
- ``PUT /params/GIZMO.PARAM`` ``{"value": v}`` or ``{"offset": o, "values": [...]}``.

Parameters are readable and writable only in Preview or Record mode, as in
Synapse. Errors are answered like Synapse does, with ``_return_code_`` and
``_return_msg_`` in the JSON body, which the client prints before returning its
error sentinel.

The circuit is the published one (names configurable): ``eStim1`` (``AmpA``,
``PeriodA``, ``ChanA``, ``DelayC``), a rising edge on ``Button1.Go`` stimulates,
and ``buffer_1..3.array`` receive the evoked window of each muscle
``--latency-s`` later. Every parameter write and every stimulation is recorded
in order, and reported by extra endpoints (not part of Synapse):

- ``GET /emulator/stimulations`` -> ``{"stimulations": [...]}`` (also appended to
  ``--log FILE`` as JSON lines);
- ``GET /emulator/writes`` -> ``{"writes": [...]}``; ``GET /emulator/info``;
- ``PUT /emulator/fault`` ``{"kind": ..., "count": n, "param": "GIZMO.PARAM", "after": k}``
  injects a fault into the next ``n`` requests (default 1; 0 clears it), or only into those
  naming ``param``, after letting ``k`` of them through (``nan_buffer``, ``null_value``,
  ``string_value``, ``late``, ``error``, ``hang`` with ``seconds``, ``bad_size``,
  ``misread``); ``PUT /emulator/reset`` clears the records.

``--circuit-pulse-width-us`` and ``--circuit-n-pulses`` set what the circuit's
``DurA`` and ``CountA`` hold, to play a circuit that differs from the rig config.

The server binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from hardware.rig.simulated import SimulatedRig
from hardware.safety import StimParams

MODES = ("Idle", "Standby", "Preview", "Record")
HOST = "127.0.0.1"
FAULT_KINDS = ("nan_buffer", "null_value", "string_value", "late", "error", "hang", "bad_size", "misread")


class SynapseEmulator:
    """The emulated Synapse state; thread-safe, HTTP-agnostic (see :func:`serve`).

    Args:
        rig: the simulated subject that answers stimulations.
        mode: the initial mode (Synapse starts Idle).
        latency_s: time from the trigger to the window in the buffers.
        stimulator, amplitude, period, channel, pulse_width, n_pulses: circuit names.
        trigger: ``GIZMO.PARAM`` of the trigger.
        buffers: buffer gizmos (one per muscle of ``rig``); ``buffer_param``.
        circuit_pulse_width_us, circuit_n_pulses: the circuit's fixed values.
        log_path: append every stimulation to this JSON-lines file.
    """

    def __init__(
        self,
        rig: SimulatedRig,
        mode: str = "Idle",
        latency_s: float = 0.3,
        stimulator: str = "eStim1",
        amplitude: str = "AmpA",
        period: str = "PeriodA",
        channel: str = "ChanA",
        pulse_width: str = "DurA",
        n_pulses: str = "CountA",
        trigger: str = "Button1.Go",
        buffers=("buffer_1", "buffer_2", "buffer_3"),
        buffer_param: str = "array",
        circuit_pulse_width_us: float = 200.0,
        circuit_n_pulses: int = 13,
        log_path: str | Path | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        buffers = tuple(buffers)
        if len(buffers) != len(rig.muscles):
            raise ValueError(f"{len(buffers)} buffers for {len(rig.muscles)} simulated muscles")
        self.rig, self.mode, self.latency_s = rig, mode, float(latency_s)
        self.names = {
            "gizmo": stimulator,
            "amplitude": amplitude,
            "period": period,
            "channel": channel,
            "pulse_width": pulse_width,
            "n_pulses": n_pulses,
        }
        self.trigger = trigger
        self.buffers, self.buffer_param = buffers, buffer_param
        self.n = rig.emg.n_samples
        self.params: dict[str, Any] = {
            f"{stimulator}.{amplitude}": 0.0,
            f"{stimulator}.{period}": 3.0,
            f"{stimulator}.{channel}": 1,
            f"{stimulator}.DelayC": 0.0,
            f"{stimulator}.{pulse_width}": float(circuit_pulse_width_us),
            f"{stimulator}.{n_pulses}": int(circuit_n_pulses),
            trigger: 0,
        }
        self.read_only = {f"{b}.{buffer_param}" for b in buffers}
        self._buffers = {b: np.zeros(self.n) for b in buffers}
        self._pending: tuple[float, np.ndarray] | None = None
        self.stimulations: list[dict] = []
        self.writes: list[dict] = []
        self.faults: dict[str, dict] = {}
        self.log_path = Path(log_path) if log_path else None
        self.lock = threading.Lock()
        self.t0 = time.time()

    # ---- helpers ---------------------------------------------------------------------------
    def gizmos(self) -> list[str]:
        return sorted({k.split(".")[0] for k in self.params} | set(self.buffers))

    def _take_fault(self, kind: str, path: str = "") -> dict | None:
        f = self.faults.get(kind)
        if not f or (f.get("param") and f["param"] not in path.split("/")):
            return None
        if f.get("after", 0) > 0:  # let this many matching requests through first
            f["after"] -= 1
            return None
        f["count"] -= 1
        if f["count"] <= 0:
            del self.faults[kind]
        return f

    def _settle(self) -> None:
        if self._pending is not None and time.monotonic() >= self._pending[0]:
            data = self._pending[1]
            for i, b in enumerate(self.buffers):
                self._buffers[b] = data[i]
            self._pending = None

    def _stimulate(self) -> None:
        g = self.names["gizmo"]
        period = float(self.params[f"{g}.{self.names['period']}"])
        p = StimParams(
            channel=int(self.params[f"{g}.{self.names['channel']}"]),
            amplitude_uA=float(self.params[f"{g}.{self.names['amplitude']}"]),
            frequency_hz=1000.0 / period if period > 0 else float("nan"),
            pulse_width_us=float(self.params[f"{g}.{self.names['pulse_width']}"]),
            n_pulses=int(self.params[f"{g}.{self.names['n_pulses']}"]),
        )
        rec = {"seq": len(self.stimulations), "t": time.time(), "mode": self.mode, **p.to_dict(), "period_ms": period}
        if period > 0:
            window, info = self.rig.draw(p)
            rec.update(point=info["point"], truth=info["truth"], drawn=info["drawn"], rep_valid=info["rep_valid"])
        else:  # the IZ2 would not fire a train with no period; record it anyway
            window, rec["point"] = None, None
        self.stimulations.append(rec)
        if self.log_path is not None:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
        if window is not None and not self._take_fault("late"):
            self._pending = (time.monotonic() + self.latency_s, window / 1.0)

    # ---- the API ---------------------------------------------------------------------------
    def handle(self, method: str, path: str, body: dict | None) -> tuple[dict, float]:
        """Answer one request: (JSON reply, seconds to wait before replying)."""
        with self.lock:
            self._settle()
            hang = self._take_fault("hang", path)
            delay = float(hang.get("seconds", 10.0)) if hang else 0.0
            if self._take_fault("error", path):
                return _err(500, "injected server error"), delay
            try:
                return self._route(method, path, body or {}), delay
            except _Reply as r:
                return r.payload, delay

    def _route(self, method: str, path: str, body: dict) -> dict:
        parts = [p for p in path.split("?")[0].split("/") if p]
        if parts[:1] == ["emulator"]:
            return self._extra(method, parts[1:], body)
        if parts == ["system", "mode"]:
            if method == "GET":
                return {"mode": self.mode}
            if method == "PUT":
                m = body.get("mode")
                if m not in MODES:
                    raise _Reply(_err(400, f"invalid mode {m!r}"))
                if m == self.mode:
                    raise _Reply(_err(404, f"already in {m} mode"))
                self.mode = m
                if m == "Idle":
                    self._pending = None
                return {}
        if parts == ["gizmos"] and method == "OPTIONS":
            return {"gizmos": self.gizmos()}
        if parts[:1] == ["params"]:
            if len(parts) == 2 and method == "OPTIONS":
                names = [k.split(".")[1] for k in [*self.params, *self.read_only] if k.split(".")[0] == parts[1]]
                return {"parameters": names}
            if self.mode not in ("Preview", "Record"):
                raise _Reply(_err(404, "Synapse may need to be in non-Idle mode"))
            if len(parts) == 3 and parts[1] == "size" and method == "GET":
                key = self._key(parts[2])
                if self._take_fault("bad_size", key):
                    return {"value": -1}
                return {"value": self.n if key in self.read_only else 1}
            if len(parts) == 2:
                key = self._key(parts[1])
                if method == "GET":
                    return self._get(key, body)
                if method == "PUT":
                    return self._put(key, body)
        raise _Reply(_err(404, f"not found: {method} /{'/'.join(parts)}"))

    def _key(self, name: str) -> str:
        if name not in self.params and name not in self.read_only:
            raise _Reply(_err(422, f"Ill-formed request packet: no parameter {name}"))
        return name

    def _get(self, key: str, body: dict) -> dict:
        if key in self.read_only:
            data = self._buffers[key.split(".")[0]]
            count, offset = int(body.get("count", 1)), int(body.get("offset", 0))
            if count < 0 or offset < 0:
                raise _Reply(_err(422, "Ill-formed request packet: negative count or offset"))
            vals = [float(v) for v in data[offset : offset + count]]
            if vals and self._take_fault("nan_buffer", key):
                vals[len(vals) // 2] = float("nan")
            return {"values": vals} if "count" in body else {"value": vals[0] if vals else None}
        if self._take_fault("null_value", key):
            return {"value": None}
        if self._take_fault("string_value", key):
            return {"value": "n/a"}
        value = self.params[key]
        if self._take_fault("misread", key):
            value = value + 1
        if "count" in body:
            return {"values": [value]}
        return {"value": value}

    def _put(self, key: str, body: dict) -> dict:
        if key in self.read_only:
            raise _Reply(_err(404, f"{key} is read-only"))
        if "value" in body:
            value = body["value"]
        elif "values" in body and isinstance(body["values"], list) and len(body["values"]) == 1:
            value = body["values"][0]
        else:
            raise _Reply(_err(422, "Ill-formed request packet: expected value or values"))
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise _Reply(_err(422, f"Ill-formed request packet: {key} needs a finite number, got {value!r}"))
        old = self.params[key]
        self.params[key] = int(value) if isinstance(old, int) and float(value).is_integer() else value
        self.writes.append({"seq": len(self.writes), "t": time.time(), "param": key, "value": value})
        if key == self.trigger and old == 0 and value:
            self._stimulate()
        return {}

    def _extra(self, method: str, parts: list[str], body: dict) -> dict:
        if method == "GET" and parts == ["stimulations"]:
            return {"stimulations": self.stimulations}
        if method == "GET" and parts == ["writes"]:
            return {"writes": self.writes}
        if method == "GET" and parts == ["info"]:
            return {
                "muscles": list(self.rig.muscles),
                "dataset": self.rig.dataset_name,
                "subject": self.rig.subject,
                "buffers": list(self.buffers),
                "n_samples": self.n,
                "mode": self.mode,
                "ch2xy": self.rig.chmap.to_list(),
                "latency_s": self.latency_s,
                "truth": {m: p.truth.tolist() for m, p in zip(self.rig.muscles, self.rig.problems)},
                "space": {d.name: list(d.values) for d in self.rig.space.dims},
            }
        if method == "PUT" and parts == ["fault"]:
            kind, count = body.get("kind"), body.get("count", 1)
            if kind not in FAULT_KINDS:
                raise _Reply(_err(400, f"unknown fault {kind!r}; known: {FAULT_KINDS}"))
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise _Reply(_err(400, f"fault count must be an integer >= 0, got {count!r}"))
            if count == 0:
                self.faults.pop(kind, None)
            else:
                self.faults[kind] = {**body, "count": count}
            return {}
        if method == "PUT" and parts == ["reset"]:
            self.stimulations.clear()
            self.writes.clear()
            self.faults.clear()
            return {}
        if method == "PUT" and parts == ["latency"]:
            self.latency_s = float(body["seconds"])
            return {}
        raise _Reply(_err(404, f"not found: {method} /emulator/{'/'.join(parts)}"))


class _Reply(Exception):
    def __init__(self, payload: dict):
        self.payload = payload


def _err(code: int, msg: str) -> dict:
    return {"_return_code_": code, "_return_msg_": msg}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client holds one connection
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    emulator: SynapseEmulator  # set on the subclass made by serve()

    def _serve(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        body, bad = None, False
        if raw:
            try:
                body = json.loads(raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                bad = True
            bad = bad or not isinstance(body, dict)
        if bad:
            payload, delay = _err(422, "Ill-formed request packet: body is not a JSON object"), 0.0
        else:
            payload, delay = self.emulator.handle(self.command, self.path, body)
        if delay:
            time.sleep(delay)
        data = json.dumps(payload).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_OPTIONS = _serve

    def log_message(self, format, *args):  # quiet
        pass


def serve(emulator: SynapseEmulator, port: int = 0) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``emulator`` on 127.0.0.1:``port`` (0: a free port) in a daemon thread.

    Returns the server (``server.server_address[1]`` is the port; call
    ``server.shutdown()`` then ``server.server_close()`` to stop) and its thread.
    """
    handler = type("Handler", (_Handler,), {"emulator": emulator})
    server = ThreadingHTTPServer((HOST, int(port)), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="synapse-emulator", daemon=True)
    thread.start()
    return server, thread


def build(
    dataset: str = "synthetic_rat",
    dataset_kwargs: dict | None = None,
    subject: str | None = None,
    ch2xy: str = "auto",
    seed: int = 0,
    saline: bool = False,
    n_muscles: int = 3,
    **emulator_kw,
) -> SynapseEmulator:
    """A :class:`SynapseEmulator` on a fresh :class:`SimulatedRig` (its own pacing off: the emulator paces)."""
    rig = SimulatedRig(
        dataset=dataset,
        dataset_kwargs=dataset_kwargs,
        subject=subject,
        ch2xy=ch2xy,
        seed=seed,
        saline=saline,
        n_muscles=n_muscles,
        latency_s=0.0,
        keep_window=False,
        name="emulated",
    )
    return SynapseEmulator(rig, **emulator_kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hardware.emulator", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=24414, help="TCP port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--dataset", default="synthetic_rat", help="a neuro_opt dataset name")
    ap.add_argument("--dataset-kwargs", default="{}", help="JSON keyword arguments of the dataset builder")
    ap.add_argument("--subject", default=None, help="subject of the dataset (default: its first)")
    ap.add_argument("--ch2xy", default="auto", help="channel mapping JSON (default: auto, space order)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", default="Idle", choices=MODES, help="initial Synapse mode")
    ap.add_argument("--latency-s", type=float, default=0.3, help="trigger -> window delay")
    ap.add_argument("--saline", action="store_true", help="artefacts only, no response (saline dry run)")
    ap.add_argument("--log", default=None, help="append every stimulation to this JSON-lines file")
    ap.add_argument(
        "--circuit-pulse-width-us",
        type=float,
        default=200.0,
        help="pulse width the circuit holds (DurA), whatever the rig config declares",
    )
    ap.add_argument(
        "--circuit-n-pulses",
        type=int,
        default=13,
        help="pulse count the circuit holds (CountA), whatever the rig config declares",
    )
    args = ap.parse_args(argv)
    try:
        kwargs = json.loads(args.dataset_kwargs)
        assert isinstance(kwargs, dict)
    except (json.JSONDecodeError, AssertionError):
        ap.error(f"--dataset-kwargs must be a JSON object, got {args.dataset_kwargs!r}")
    emu = build(
        args.dataset,
        kwargs,
        args.subject,
        args.ch2xy,
        args.seed,
        args.saline,
        mode=args.mode,
        latency_s=args.latency_s,
        log_path=args.log,
        circuit_pulse_width_us=args.circuit_pulse_width_us,
        circuit_n_pulses=args.circuit_n_pulses,
    )
    server, thread = serve(emu, args.port)
    port = server.server_address[1]
    print(
        f"Synapse emulator listening on http://{HOST}:{port} (dataset {emu.rig.dataset_name}, subject "
        f"{emu.rig.subject}, muscles {list(emu.rig.muscles)}, mode {emu.mode})",
        flush=True,
    )
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
