"""A Python client of the session service: what a lab's rig software calls (:class:`SessionClient`).

    from hardware.serve.client import SessionClient

    client = SessionClient("http://127.0.0.1:8765", token=open("runs/serve/token").read().strip())
    sid = client.create(online_config_dict)
    state = client.drive(sid, lambda q: my_rig.stimulate(q["params"]))  # returns the response

Every call but :meth:`SessionClient.create` is retried on a connection error (a restarting
server): asks return the pending query again and tells are idempotent, so a retry never counts
twice. A 4xx/5xx answer raises :class:`ServiceError` with the server's one-line message.
"""

from __future__ import annotations

import time
from typing import Callable

import requests


class ServiceError(RuntimeError):
    """The service refused a request.

    Attributes:
        status: the HTTP status (0: the service could not be reached).
        message: the service's one-line ``error``.
    """

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}" if status else message)
        self.status, self.message = status, message


class SessionClient:
    """Calls the session service at ``url`` with ``token``.

    Args:
        url: the service's base URL (``http://127.0.0.1:8765``).
        token: the content of the service's token file.
        timeout: seconds per request.
        retries: attempts after a connection error (idempotent calls only).
        backoff: seconds before the first retry (doubled each time, at most 5 s).
    """

    def __init__(self, url: str, token: str, timeout: float = 60.0, retries: int = 8, backoff: float = 0.25):
        self.url = url.rstrip("/")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, body: dict | None = None, retry: bool = True):
        wait = self.backoff
        for attempt in range(self.retries + 1 if retry else 1):
            try:
                r = self.http.request(method, self.url + path, json=body, timeout=self.timeout)
                break
            except requests.ConnectionError as exc:
                if attempt >= (self.retries if retry else 0):
                    raise ServiceError(0, f"{method} {self.url}{path}: cannot reach the service: {exc}") from exc
                time.sleep(wait)
                wait = min(wait * 2, 5.0)
        if r.status_code >= 400:
            try:
                message = r.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = r.text.strip()[:500] or r.reason
            raise ServiceError(r.status_code, message)
        return r.json()

    def create(self, online: dict) -> str:
        """Start a session of the online config ``online``; returns its id."""
        return self._call("POST", "/api/sessions", {"online": online}, retry=False)["session_id"]

    def sessions(self) -> list[dict]:
        """Every session of the service: id, name, status, n_done, n_queries."""
        return self._call("GET", "/api/sessions")

    def resume(self, session_id: str) -> dict:
        """Reopen a session (a stopped one becomes active again); returns its state."""
        return self._call("POST", f"/api/sessions/{session_id}/resume")

    def ask(self, session_id: str) -> dict:
        """The next stimulation: ``query_id``, ``query``, ``point``, ``coords``, ``params``, ``confirmation``, ..."""
        return self._call("POST", f"/api/sessions/{session_id}/ask")

    def tell(
        self,
        session_id: str,
        query_id: str,
        response: float | None,
        valid: bool = True,
        reason: str = "",
        readback: dict | None = None,
    ) -> dict:
        """Answer query ``query_id`` (idempotent); returns the query's summary."""
        body = {"query_id": query_id, "response": response, "valid": valid, "reason": reason}
        if readback is not None:
            body["readback"] = readback
        return self._call("POST", f"/api/sessions/{session_id}/tell", body)

    def state(self, session_id: str) -> dict:
        """The session's state (queries, pending, best, posterior, safety)."""
        return self._call("GET", f"/api/sessions/{session_id}/state")

    def stop(self, session_id: str, reason: str = "stopped by the client") -> dict:
        """End the session early; returns its state."""
        return self._call("POST", f"/api/sessions/{session_id}/stop", {"reason": reason})

    def drive(
        self, session_id: str, respond: Callable[[dict], float | None], confirm: Callable[[str], str] | None = None
    ) -> dict:
        """Ask, ``respond(query)``, tell, until the session completes; returns the final state.

        ``respond`` gets the ask answer (``params`` is the stimulation to deliver) and returns the
        target muscle's response, or None when there was no valid one. When the session's mode
        asks for an operator's confirmation (``confirmation: operator``), each stimulation waits
        for ``confirm(prompt)`` first (default: Enter on the terminal; refused without one): ''
        or 'y' goes on, 'q' stops driving and leaves the query pending (returns the state).
        Raises :class:`ServiceError` if the session is stopped before it completes.
        """
        from hardware.online.session import confirmation

        while True:
            try:
                q = self.ask(session_id)
            except ServiceError as exc:
                if exc.status != 409:
                    raise
                st = self.state(session_id)
                if st["status"] == "complete":
                    return st
                raise
            if q.get("confirmation") == "operator":
                ask_operator = confirmation("operator", confirm)
                assert ask_operator is not None
                where = f"[q {q['query'] + 1}/{q['n_queries']}] {q['coords']} {q['params']}"
                prompt = f"{where}: Enter to stimulate, q to stop: "
                answer = ""
                while True:
                    answer = str(ask_operator(prompt)).strip().lower()
                    if answer in ("", "y", "yes", "q", "quit", "stop"):
                        break
                if answer.startswith("q") or answer == "stop":
                    return self.state(session_id)
            response = respond(q)
            self.tell(session_id, q["query_id"], response, valid=response is not None)


__all__ = ["SessionClient", "ServiceError"]
