"""The rig: one stimulation per call, checked, read back, journaled by the session.

- :mod:`hardware.rig.base`: the :class:`Rig` sequence, :class:`Trial`, the errors and
  :func:`delivery_of`;
- :mod:`hardware.rig.channels`: :class:`ChannelMap` (``ch2xy``);
- :mod:`hardware.rig.synapse`: the TDT rig through the Synapse Server API;
- :mod:`hardware.rig.simulated`: a virtual subject from a ``neuro_opt`` dataset;
- :func:`make_rig`: either, from a ``conf/rig/*.yaml`` mapping.
"""

from __future__ import annotations

from typing import Any, Mapping

from hardware.rig.base import (
    MAYBE_DELIVERED,
    NOT_SENT,
    RIG_COMMON_KEYS,
    SENT,
    LateResponse,
    ReadbackMismatch,
    Rig,
    RigError,
    Trial,
    delivery_of,
)
from hardware.rig.channels import PROJECT_ROOT, ChannelMap, resolve_path
from hardware.safety import SafetyViolation, StimParams


def make_rig(cfg: Mapping[str, Any]) -> Rig:
    """Build a rig from a ``conf/rig/*.yaml`` mapping (``kind: synapse`` or ``simulated``)."""
    kind = cfg.get("kind") if isinstance(cfg, Mapping) else None
    if kind == "synapse":
        from hardware.rig.synapse import SynapseRig

        return SynapseRig.from_config(cfg)
    if kind == "simulated":
        from hardware.rig.simulated import SimulatedRig

        return SimulatedRig.from_config(cfg)
    raise ValueError(f"rig.kind must be 'synapse' or 'simulated', got {kind!r}")


__all__ = [
    "Rig",
    "RigError",
    "LateResponse",
    "ReadbackMismatch",
    "Trial",
    "ChannelMap",
    "make_rig",
    "SafetyViolation",
    "StimParams",
    "resolve_path",
    "delivery_of",
    "NOT_SENT",
    "SENT",
    "MAYBE_DELIVERED",
    "RIG_COMMON_KEYS",
    "PROJECT_ROOT",
]
