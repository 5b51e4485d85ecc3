"""The rig as one named Ray actor, pinned to the lab PC, serving one session at a time.

On the lab PC (where Synapse runs)::

    RAY_AUTH_MODE=token ray start --head --resources='{"tdt_rig": 1}'

:func:`get_rig_actor` finds the actor by name, or creates it with that custom
resource (so it can only live on the node that has the rig, and only once),
``max_concurrency=1`` (its calls run strictly one after another) and
``num_cpus=0``. The actor owns the :class:`~hardware.rig.Rig`; the Synapse
connection never leaves that process. With ``detached: true`` (the lab default)
it outlives the driver that created it; otherwise it lives as long as that
driver process.

Calls are serialized, but a session is many calls: a *session lease* keeps two
sessions from interleaving their stimulations. :meth:`RigActor.open_session`
grants the lease to one session id; every :meth:`RigActor.stimulate` must carry
it. A second session is refused, or waits client-side until the lease is
released (:class:`ActorRigSession`, ``busy: wait|refuse``). A lease unused for
``lease_timeout_s`` (its driver died) may be taken over; the same session id
(a resumed session) always gets its own lease back.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Mapping

import ray

from hardware.emg import EMGConfig
from hardware.rig import RigError, Trial, make_rig
from hardware.safety import SafetyLimits, StimParams, check_keys

DEFAULT_ACTOR = {
    "resource": "tdt_rig",
    "namespace": "neuro_opt",
    "busy": "wait",
    "wait_timeout_s": 3600.0,
    "poll_s": 0.5,
    "lease_timeout_s": 900.0,
    "detached": True,
}


# handles of the actors this process created: Ray kills a non-detached actor when its creator's
# handle goes out of scope, which would pull the rig from under another session of this driver
_OWNED: dict[tuple[str, str], Any] = {}


class RigBusy(RigError):
    """Another session holds the rig."""


def actor_options(rig_cfg: Mapping) -> dict:
    """The ``rig.actor`` block merged over its defaults, validated."""
    given = dict(rig_cfg.get("actor") or {})
    check_keys(given, DEFAULT_ACTOR.keys(), "rig.actor")
    opts = {**DEFAULT_ACTOR, **given}
    if opts["busy"] not in ("wait", "refuse"):
        raise ValueError(f"rig.actor.busy must be 'wait' or 'refuse', got {opts['busy']!r}")
    return opts


def config_hash(rig_cfg: Mapping) -> str:
    """Hash of the rig config minus the actor block (the rig an actor drives)."""
    cfg = {k: v for k, v in rig_cfg.items() if k != "actor"}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RigActor:
    """Owns one rig; wrapped by ``ray.remote`` in :func:`get_rig_actor`."""

    def __init__(self, rig_cfg: dict):
        self.cfg = dict(rig_cfg)
        self.hash = config_hash(rig_cfg)
        self.lease_timeout_s = float(actor_options(rig_cfg)["lease_timeout_s"])
        self.rig = make_rig(self.cfg)  # builds and validates; connects on the first session
        self.holder: str | None = None
        self.last_use = 0.0
        self.events: list[dict] = []

    def info(self) -> dict:
        return {
            "name": self.rig.name,
            "kind": self.rig.kind,
            "config_hash": self.hash,
            "muscles": list(self.rig.muscles),
            "emg": self.rig.emg.to_dict(),
            "limits": self.rig.limits.to_dict(),
            "holder": self.holder,
        }

    def open_session(self, session_id: str) -> dict:
        """Grant the lease to ``session_id`` if free, stale or already its own; connect the rig."""
        now = time.monotonic()
        idle = now - self.last_use
        if self.holder not in (None, session_id) and idle < self.lease_timeout_s:
            return {"granted": False, "holder": self.holder, "idle_s": idle}
        taken_from = self.holder if self.holder not in (None, session_id) else None
        health = self.rig.connect()
        self.holder, self.last_use = session_id, now
        self.events.append({"event": "open", "session": session_id, "t": time.time(), "taken_from": taken_from})
        return {"granted": True, "holder": session_id, "health": health, "taken_from": taken_from}

    def close_session(self, session_id: str) -> bool:
        if self.holder != session_id:
            return False
        self.holder = None
        self.events.append({"event": "close", "session": session_id, "t": time.time()})
        return True

    def stimulate(self, session_id: str, params: dict) -> Trial:
        if self.holder != session_id:
            raise RigBusy(
                f"session {session_id!r} does not hold rig {self.rig.name!r} (holder: {self.holder!r}); nothing sent"
            )
        self.last_use = time.monotonic()
        try:
            return self.rig.stimulate(params)
        finally:
            self.last_use = time.monotonic()

    def health(self) -> dict:
        return self.rig.health()

    def session_events(self) -> list[dict]:
        return list(self.events)


def get_rig_actor(rig_cfg: Mapping, create: bool = True):
    """The named rig actor of ``rig_cfg`` (``rig.name``), created if absent and ``create``.

    Raises:
        RigError: no Ray node offers the rig's resource, or the running actor
            drives a rig with a different configuration.
    """
    if not ray.is_initialized():
        raise RigError(
            "Ray is not initialized: call ray.init(address=...) (the lab PC runs "
            "`RAY_AUTH_MODE=token ray start --head --resources='{\"tdt_rig\": 1}'`)"
        )
    opts = actor_options(rig_cfg)
    name, ns, res = str(rig_cfg.get("name") or "tdt_rig"), opts["namespace"], opts["resource"]
    try:
        handle = ray.get_actor(name, namespace=ns)
    except ValueError:
        if not create:
            raise RigError(f"no rig actor named {name!r} in namespace {ns!r}") from None
        have = ray.cluster_resources().get(res, 0)
        if have < 1:
            raise RigError(
                f"no Ray node offers the custom resource {res!r} that pins the rig actor; on the lab PC "
                f"run `RAY_AUTH_MODE=token ray start --head --resources='{{\"{res}\": 1}}'` "
                f"(or ray.init(resources=...))"
            )
        remote = ray.remote(RigActor)
        handle = remote.options(
            name=name,
            namespace=ns,
            resources={res: 1},
            num_cpus=0,
            max_concurrency=1,
            max_restarts=0,
            get_if_exists=True,
            lifetime="detached" if opts["detached"] else None,
        ).remote(dict(rig_cfg))
        _OWNED[(ns, name)] = handle
    info = ray.get(handle.info.remote())
    if info["config_hash"] != config_hash(rig_cfg):
        raise RigError(
            f"rig actor {name!r} already drives a rig with another configuration (hash "
            f"{info['config_hash']} != {config_hash(rig_cfg)}); end its sessions and kill it, or use "
            f"the same rig config"
        )
    return handle


class ActorRigSession:
    """A session's handle on the rig actor: lease, stimulate, release.

    Args:
        handle: the actor (see :func:`get_rig_actor`).
        session_id: the lease owner (the journal's session id).
        busy: ``wait`` (poll until the lease is free, up to ``wait_timeout_s``) or ``refuse``.
    """

    def __init__(
        self,
        handle,
        session_id: str,
        busy: str = "wait",
        wait_timeout_s: float = 3600.0,
        poll_s: float = 0.5,
        echo=print,
    ):
        self.handle, self.session_id = handle, str(session_id)
        self.busy, self.wait_timeout_s, self.poll_s, self.echo = busy, float(wait_timeout_s), float(poll_s), echo
        info = ray.get(handle.info.remote())
        self.name, self.kind = info["name"], info["kind"]
        self.muscles = tuple(info["muscles"])
        self.emg = EMGConfig.from_dict(info["emg"])
        self.limits = SafetyLimits.from_dict(info["limits"])

    def open(self) -> dict:
        t0, told = time.monotonic(), False
        while True:
            r = ray.get(self.handle.open_session.remote(self.session_id))
            if r["granted"]:
                return r
            if self.busy == "refuse":
                raise RigBusy(
                    f"rig {self.name!r} is in use by session {r['holder']!r}; refused (rig.actor.busy=refuse)"
                )
            if time.monotonic() - t0 > self.wait_timeout_s:
                raise RigBusy(
                    f"rig {self.name!r} still in use by session {r['holder']!r} after {self.wait_timeout_s} s"
                )
            if not told:
                self.echo(f"rig {self.name!r} is in use by session {r['holder']!r}; waiting for it")
                told = True
            time.sleep(self.poll_s)

    def stimulate(self, params: StimParams | Mapping) -> Trial:
        """One stimulation on the actor's rig; a failure raises the rig's own exception (its message and
        :func:`~hardware.rig.delivery_of` intact), not Ray's wrapper with the actor's traceback."""
        p = params.to_dict() if isinstance(params, StimParams) else dict(params)
        try:
            return ray.get(self.handle.stimulate.remote(self.session_id, p))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, Exception):
                raise exc.cause from None
            raise

    def health(self) -> dict:
        return ray.get(self.handle.health.remote())

    def close(self) -> None:
        ray.get(self.handle.close_session.remote(self.session_id))


class LocalRigSession:
    """The same interface on an in-process rig (no Ray): dry runs and tests."""

    def __init__(self, rig, session_id: str = "local"):
        self.rig, self.session_id = rig, session_id
        self.name, self.kind, self.muscles = rig.name, rig.kind, rig.muscles
        self.emg, self.limits = rig.emg, rig.limits

    def open(self) -> dict:
        return {"granted": True, "holder": self.session_id, "health": self.rig.connect()}

    def stimulate(self, params: StimParams | Mapping) -> Trial:
        return self.rig.stimulate(params)

    def health(self) -> dict:
        return self.rig.health()

    def close(self) -> None:
        self.rig.close()


def open_rig_session(rig_cfg: Mapping, session_id: str, use_actor: bool = True, echo=print) -> Any:
    """A session on the rig of ``rig_cfg``: through its actor (Ray must be initialized), or in-process."""
    if not use_actor:
        return LocalRigSession(make_rig(rig_cfg), session_id)
    opts = actor_options(rig_cfg)
    return ActorRigSession(
        get_rig_actor(rig_cfg),
        session_id,
        busy=opts["busy"],
        wait_timeout_s=opts["wait_timeout_s"],
        poll_s=opts["poll_s"],
        echo=echo,
    )
