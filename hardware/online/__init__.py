"""The online session: ask the optimizer, check safety, stimulate through the rig, tell, repeat.

Entry points:

- :func:`run_online` (what ``python -m sweeps.launch +exp=online online=NAME
  rig=simulated|synapse`` calls) runs or resumes a session from an online
  config (``conf/online/*.yaml``) and a rig config (``conf/rig/*.yaml``);
- ``python -m hardware.online --online FILE --rig FILE [...]``, the same
  without Hydra (dry runs on the bench; :mod:`hardware.online.cli`).

The online config schema is :class:`OnlineConfig` (shared with the promotion
step that writes ``conf/online/NAME.yaml`` from a calibration).

There is one online loop: :class:`SessionCore` (:mod:`hardware.online.core`) asks the
optimizer, checks the stimulation against the limits, journals the ``ask`` with a query id and
takes the tell. Its clients stimulate: :class:`OnlineSession` through a rig (below), and the
session service (:mod:`hardware.serve`) through any lab's own software over HTTP.

Per query ``q`` the rig client:

1. asks the core for the query: the optimizer's point, mapped to stimulation
   parameters (the electrode coordinates through the rig's ``ch2xy`` to a
   channel; the other dimensions by name; the rest fixed by ``stimulation``),
   journaled as ``ask`` with its query id (a resumed session is handed the
   query that was pending);
2. the core checks them against the rig's safety limits (minus disabled
   electrodes) first; a violation is journaled and raised, and nothing is sent
   (the whole space is also checked before the session starts);
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
5. tells the core, which tells the optimizer (invalid trials only if ``tell_invalid``), computes
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

Modules: :mod:`~hardware.online.config` (the schema and the stimulation plan),
:mod:`~hardware.online.core` (ask and tell over the journal), :mod:`~hardware.online.session`
(the rig client), :mod:`~hardware.online.outputs` (map, figures,
``session.json``), :mod:`~hardware.online.runner` (:func:`run_online`).
"""

from hardware.online.config import MODES, OnlineConfig, StimulationPlan, load_prior
from hardware.online.core import QueryConflict, SessionClosed, SessionCore, SessionError, UnknownQuery
from hardware.online.runner import ensure_ray, run_online
from hardware.online.session import (
    OnlineSession,
    OperatorNeedsTerminal,
    SessionPaused,
    SessionStopped,
    confirmation,
    error_text,
    resolve_mode,
)

__all__ = [
    "MODES",
    "OnlineConfig",
    "StimulationPlan",
    "load_prior",
    "run_online",
    "ensure_ray",
    "OnlineSession",
    "SessionCore",
    "SessionError",
    "SessionClosed",
    "QueryConflict",
    "UnknownQuery",
    "OperatorNeedsTerminal",
    "SessionPaused",
    "SessionStopped",
    "confirmation",
    "error_text",
    "resolve_mode",
]
