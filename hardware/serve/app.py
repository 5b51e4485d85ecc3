"""The FastAPI application of the session service (:func:`create_app`); the API is in :mod:`hardware.serve`."""

from __future__ import annotations

import asyncio
import html
import json
import traceback
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Mapping
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from hardware.journal import Journal, JournalError
from hardware.online.config import JOURNAL_NAME
from hardware.online.core import QueryConflict, SessionClosed, SessionError, UnknownQuery
from hardware.safety import SafetyViolation
from hardware.serve.auth import COOKIE, request_token, token_matches
from hardware.serve.sessions import Entry, Registry, UnknownSession, optimizer_step, readback_problem, state_line

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
OPEN_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")


class ApiError(Exception):
    """A refused request: its status and one line saying what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ---- request bodies ------------------------------------------------------------------------------
Finite = Annotated[float, Field(allow_inf_nan=False)]


class CreateBody(BaseModel):
    """A new session: its online config (the schema of ``conf/online/example_rat.yaml``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    online: dict[str, Any]


class TellBody(BaseModel):
    """The answer to an asked query."""

    model_config = ConfigDict(extra="forbid", strict=True)
    query_id: str = Field(min_length=1, max_length=200)
    response: Finite | None = Field(description="the target muscle's response (finite), or null for none")
    valid: bool = True
    reason: str = Field("", max_length=2000)
    readback: dict[str, Finite] | None = Field(
        None, description="what the stimulator held at the trigger: the asked params' keys, or a stimulator's"
    )


class StopBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str = Field("stopped by the client", max_length=2000)


# ---- the guard: auth, body size, JSON that Python's json would wrongly accept --------------------------
class Guard:
    """Pure ASGI middleware run before routing: token check (401), the ``?token=`` cookie redirect,
    bodies over :data:`MAX_BODY` (413) and invalid JSON or non-finite numbers (400), so that a
    refused request never reaches a session."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path.startswith("/static/") or path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given and method == "GET" and not path.startswith("/api/"):
            if not token_matches(self.token, given[-1]):
                return await _error(send, 401, "the token in ?token= is wrong (see the server's token file)")
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
            loc = path + (f"?{rest}" if rest else "")
            return await _send(
                send,
                303,
                b"",
                [(b"location", loc.encode()), (b"set-cookie", cookie.encode()), (b"content-length", b"0")],
            )
        if not token_matches(self.token, request_token(headers, _cookies(headers.get("cookie", "")))):
            return await _error(
                send, 401, f"{method} {path}: missing or wrong token (send 'Authorization: Bearer TOKEN')"
            )
        if method not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return await _error(send, 413, f"{method} {path}: body of {length} bytes; at most {MAX_BODY} accepted")
        body, more = b"", True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > MAX_BODY:
                return await _error(send, 413, f"{method} {path}: body over {MAX_BODY} bytes refused")
        ctype = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if body.strip() and (ctype == "application/json" or ctype.endswith("+json")):
            problem = _json_problem(body)
            if problem:
                return await _error(send, 400, f"{method} {path}: invalid JSON body: {problem}")
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _json_problem(body: bytes) -> str | None:
    def constant(name):
        raise ValueError(f"{name} is not a JSON number (non-finite numbers are refused)")

    def number(text):
        v = float(text)
        if v in (float("inf"), float("-inf")):
            raise ValueError(f"{text} overflows a double (non-finite numbers are refused)")
        return v

    try:
        json.loads(body, parse_constant=constant, parse_float=number)
    except (ValueError, UnicodeDecodeError) as exc:
        return str(exc).splitlines()[0]
    return None


def _cookies(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k:
            out[k] = v
    return out


async def _send(send, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await _send(send, status, body, [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))])


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:4]:
        where = ".".join(str(x) for x in e.get("loc", ())) or "body"
        kind = e.get("type", "")
        if kind == "extra_forbidden":
            parts.append(f"{where}: unknown key")
        elif kind == "missing":
            parts.append(f"{where}: required" + (" (a JSON object)" if where == "body" else ""))
        else:
            got = e.get("input")
            shown = "" if isinstance(got, (dict, list)) else f", got {type(got).__name__} {got!r}"[:120]
            parts.append(f"{where}: {e.get('msg', kind)}{shown}")
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# ---- the app ---------------------------------------------------------------------------------------
def create_app(
    root: Path,
    rig_cfg: Mapping,
    token: str,
    make_optimizer: Callable | None = None,
    *,
    echo: Callable[[str], None] = print,
    keepalive_s: float = 15.0,
) -> FastAPI:
    """The session service over the sessions under ``root`` on the rig of ``rig_cfg``.

    Args:
        root: the folder of the session folders (``<root>/<session_id>/journal.jsonl``).
        rig_cfg: the rig config (``conf/rig/external.yaml`` as a mapping).
        token: the secret every request must present.
        make_optimizer: optimizer factory (default ``neuro_opt.algorithms.make``).
        echo: progress printer.
        keepalive_s: seconds between keep-alive comments on an idle event stream.
    """
    reg = Registry(Path(root), rig_cfg, make_optimizer=make_optimizer, echo=echo)

    @asynccontextmanager
    async def lifespan(app):
        yield
        reg.close()

    app = FastAPI(
        title="neuro-opt session service",
        description="Ask/tell online sessions over HTTP: neuro-opt asks the stimulation, the lab's rig tells.",
        lifespan=lifespan,
    )
    app.state.registry = reg
    app.add_middleware(Guard, token=token)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": f"{request.method} {request.url.path}: {_validation_message(exc)}"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}"}, exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        traceback.print_exception(exc)
        msg = str(exc).splitlines()[0] if str(exc) else ""
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {msg}"}, 500)

    def session(session_id: str, fn: Callable[[Entry], Any], resume: bool = True):
        """Run ``fn(entry)`` under the session's lock, its core loaded; core errors -> ApiError."""
        try:
            entry = reg.entry(session_id)
        except UnknownSession as exc:
            raise ApiError(404, str(exc)) from None
        with entry.lock:
            try:
                reg.loaded(entry, resume=resume)
            except (JournalError, ValueError, FileNotFoundError) as exc:
                raise ApiError(409, f"session {session_id} cannot be reopened: {exc}") from None
            try:
                return fn(entry)
            except (SessionClosed, QueryConflict) as exc:
                raise ApiError(409, str(exc)) from None
            except UnknownQuery as exc:
                raise ApiError(404, str(exc)) from None
            except SafetyViolation as exc:
                raise ApiError(409, str(exc)) from None
            except SessionError as exc:
                raise ApiError(422, str(exc)) from None

    # ---- the API ------------------------------------------------------------------------------------
    @app.post("/api/sessions", status_code=201, tags=["sessions"])
    def create_session(body: CreateBody):
        """Start a session of an online config; 422 names what is wrong with it."""
        try:
            with optimizer_step():
                entry = reg.create(body.online)
        except (ValueError, FileNotFoundError) as exc:
            raise ApiError(422, f"online config: {str(exc).splitlines()[0]}") from None
        except JournalError as exc:
            raise ApiError(409, str(exc)) from None
        with entry.lock:
            return {"session_id": entry.session_id, "state": entry.core.state()}

    @app.get("/api/sessions", tags=["sessions"])
    def list_sessions():
        """Every session under the root: id, name, status, n_done, n_queries."""
        return [_summary(reg, sid) for sid in reg.ids()]

    @app.post("/api/sessions/{session_id}/resume", tags=["sessions"])
    def resume(session_id: str):
        """Reopen a session from disk; a stopped or paused session becomes active again."""

        def fn(entry: Entry):
            entry.core.resume()
            reg.publish(entry)
            return entry.core.state()

        return session(session_id, fn, resume=False)

    @app.post("/api/sessions/{session_id}/ask", tags=["queries"])
    def ask(session_id: str):
        """The next stimulation (the pending one again until it is told); 409 once the session ended."""

        def fn(entry: Entry):
            with optimizer_step():
                rec = entry.core.ask()
            return {
                **{k: rec[k] for k in ("query_id", "query", "point", "coords", "params")},
                "confirmation": entry.confirmation,
                "n_done": entry.core.n_done,
                "n_queries": entry.core.cfg.n_queries,
            }

        return session(session_id, fn)

    @app.post("/api/sessions/{session_id}/tell", tags=["queries"])
    def tell(session_id: str, body: TellBody):
        """Answer the asked query (idempotent); a readback unlike the asked stimulation stops the session."""

        def fn(entry: Entry):
            core = entry.core
            pending = core.pending
            if body.query_id not in core.answered:
                if core.status != "active" and pending is not None and pending["query_id"] == body.query_id:
                    raise ApiError(409, f"session {session_id} is {core.status}; resume it before telling")
                if body.readback is not None and pending is not None and pending["query_id"] == body.query_id:
                    try:
                        problem = readback_problem(pending["params"], body.readback, core.plan.limits)
                    except ValueError as exc:
                        raise ApiError(422, f"body.readback: {exc}") from None
                    if problem:
                        core.journal.append(
                            "safety",
                            query=pending["query"],
                            query_id=body.query_id,
                            params=pending["params"],
                            readback=body.readback,
                            error=problem,
                        )
                        core.last_readback = body.readback
                        core.stop(problem)
                        reg.outputs(entry, stopped=problem)
                        reg.publish(entry)
                        raise ApiError(409, problem)
            extra = {"readback": body.readback} if body.readback is not None else {}
            with optimizer_step():
                rec = core.tell(body.query_id, body.response, valid=body.valid, reason=body.reason, **extra)
            if not rec.get("duplicate"):
                if core.status == "complete":
                    reg.outputs(entry)
                reg.publish(entry)
            keys = ("query", "query_id", "point", "coords", "response", "valid", "told", "best_point")
            return {
                **{k: rec.get(k) for k in (*keys, "best_coords", "exploration", "exploitation")},
                "duplicate": bool(rec.get("duplicate", False)),
                "n_done": core.n_done,
                "n_queries": core.cfg.n_queries,
                "status": core.status,
            }

        return session(session_id, fn)

    @app.get("/api/sessions/{session_id}/state", tags=["sessions"])
    def state(session_id: str):
        """The session's queries, pending query, best point, posterior and safety state."""
        return session(session_id, lambda entry: entry.core.state())

    @app.post("/api/sessions/{session_id}/stop", tags=["sessions"])
    def stop(session_id: str, body: StopBody | None = None):
        """End the session early (outputs written); stopping an ended session changes nothing."""
        reason = body.reason if body is not None else StopBody().reason

        def fn(entry: Entry):
            if entry.core.status in ("active", "paused"):
                entry.core.stop(reason)
                reg.outputs(entry, stopped=reason)
                reg.publish(entry)
            return entry.core.state()

        return session(session_id, fn)

    @app.get("/api/sessions/{session_id}/events", tags=["sessions"])
    async def events(session_id: str):
        """Server-sent events: ``event: state`` (the full state) on connect and after every tell/stop/resume."""
        loop = asyncio.get_running_loop()

        def subscribe(entry: Entry):
            return reg.subscribe(entry, loop), state_line(entry.core)

        entry = await run_in_threadpool(_entry_or_404, reg, session_id)
        sub, first = await run_in_threadpool(session, session_id, subscribe)

        async def stream():
            try:
                yield f"event: state\ndata: {first}\n\n"
                while not sub.closed:
                    data = sub.pop()
                    if data is None:
                        sub.wake.clear()
                        if sub.queue:
                            continue
                        try:
                            await asyncio.wait_for(sub.wake.wait(), keepalive_s)
                        except asyncio.TimeoutError:
                            yield ": keep-alive\n\n"
                    elif data:
                        yield f"event: state\ndata: {data}\n\n"
            finally:
                reg.unsubscribe(entry, sub)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    # ---- pages ---------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index():
        rows = []
        for s in (_summary(reg, sid) for sid in reg.ids()):
            sid = html.escape(s["session_id"])
            rows.append(
                f'<li><a href="/sessions/{sid}">{sid}</a> {html.escape(str(s["name"]))}: '
                f"{html.escape(str(s['status']))}, {s['n_done']} of {s['n_queries']} queries</li>"
            )
        items = "\n".join(rows) or "<li>no session yet: POST /api/sessions</li>"
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>neuro-opt sessions</title></head>"
            f"<body><h1>neuro-opt sessions</h1><ul>\n{items}\n</ul>"
            "<p><a href='/docs'>API (OpenAPI)</a></p></body></html>"
        )

    @app.get("/sessions/{session_id}", include_in_schema=False)
    def live_page(session_id: str):
        if not reg.exists(session_id):
            raise ApiError(404, f"no session {session_id!r} under {reg.root}")
        page = STATIC / "live.html"
        if not page.is_file():
            raise ApiError(404, f"the live page {page} is not installed")
        return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js():
        try:
            import plotly
        except ImportError:
            raise ApiError(404, "the plotly package is not installed (pip install 'plotly>=5')") from None
        return FileResponse(Path(plotly.__file__).parent / "package_data" / "plotly.min.js")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        path = (STATIC / name).resolve()
        if path.parent != STATIC.resolve() or not path.is_file():
            raise ApiError(404, f"no static file {name!r}")
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    return app


def _entry_or_404(reg: Registry, session_id: str) -> Entry:
    try:
        return reg.entry(session_id)
    except UnknownSession as exc:
        raise ApiError(404, str(exc)) from None


def _summary(reg: Registry, session_id: str) -> dict:
    """id, name, status, n_done, n_queries of a session, without loading it."""
    entry = reg._entries.get(session_id)
    core = entry.core if entry is not None else None
    if core is not None:
        return {
            "session_id": session_id,
            "name": core.cfg.name,
            "status": core.status,
            "n_done": core.n_done,
            "n_queries": core.cfg.n_queries,
        }
    try:
        records = Journal.read(reg.root / session_id / JOURNAL_NAME)
    except (OSError, JournalError) as exc:
        return {"session_id": session_id, "name": None, "status": f"unreadable: {exc}", "n_done": 0, "n_queries": 0}
    online = records[0].get("online", {}) if records else {}
    n_done = sum(r["kind"] == "query" for r in records)
    n_queries = int(online.get("n_queries", 0))
    status = "active"
    for r in reversed(records):
        if r["kind"] in ("stop", "end"):
            status = "stopped"
        elif r["kind"] == "pause":
            status = "paused"
        if r["kind"] in ("stop", "end", "pause", "resume"):
            break
    if n_done >= n_queries:
        status = "complete"
    return {
        "session_id": session_id,
        "name": online.get("name"),
        "status": status,
        "n_done": n_done,
        "n_queries": n_queries,
    }


__all__ = ["create_app", "ApiError", "MAX_BODY"]
