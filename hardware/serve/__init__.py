"""The session service: online sessions driven over HTTP by any lab's rig software.

``python -m hardware.serve`` serves the ask/tell loop of :class:`~hardware.online.core.SessionCore`
to a rig neuro-opt has no adapter for (Intan, Ripple, Blackrock, g.tec, Open Ephys, MATLAB...):
neuro-opt asks the stimulation (checked against the limits of ``conf/rig/external.yaml``), the
lab's software delivers it and tells the response. Each session is a crash-proof journal in
``<root>/<session_id>/journal.jsonl``; a restarted server reopens a session the first time a
request names it and hands out the query that was pending. Every request carries the token of
``<root>/token`` (``Authorization: Bearer TOKEN``, or the cookie a page visit with ``?token=``
sets). Errors are ``{"error": "<one line>"}`` with a 4xx status; a refused request journals nothing.

=========================================  =========================================================
``POST /api/sessions``                     ``{"online": {...}}`` -> 201 ``{session_id, state}``; 422 bad config/limits
``GET  /api/sessions``                     ``[{session_id, name, status, n_done, n_queries}]``
``POST /api/sessions/{id}/resume``         reopen from disk; a stopped session becomes active -> state
``POST /api/sessions/{id}/ask``            ``{query_id, query, point, coords, params, confirmation, n_done,
                                           n_queries}``; the same query until told; 409 once ended
``POST /api/sessions/{id}/tell``           ``{query_id, response, valid, reason, readback}`` -> the query's
                                           summary (``duplicate`` on a repeat); 404 unknown id, 409 conflict
                                           or a readback unlike the asked stimulation (session stopped)
``GET  /api/sessions/{id}/state``          the session's state (queries, pending, best, posterior, safety)
``POST /api/sessions/{id}/stop``           ``{"reason": ...}`` (optional) -> state; outputs written
``GET  /api/sessions/{id}/events``         server-sent events: ``event: state`` on connect and after
                                           every tell/stop/resume
``GET  /``, ``GET /sessions/{id}``         the session list; a session's live page
``GET  /docs``                             OpenAPI
=========================================  =========================================================

Modules: :mod:`~hardware.serve.app` (the FastAPI app, :func:`~hardware.serve.app.create_app`),
:mod:`~hardware.serve.sessions` (the registry of live sessions), :mod:`~hardware.serve.auth`
(the token) and :mod:`~hardware.serve.client` (:class:`~hardware.serve.client.SessionClient`).
"""
