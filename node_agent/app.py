"""The agent's HTTP API (/v1): a thin layer over ``AgentService``.

Every answer that is not 2xx is an ``ErrorBody``: one line saying what is wrong, a hint where a
fix is known, the lease holder on 409. Internals (tracebacks, paths of the code) stay in the log.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fastapi import Body, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node_agent.asgi_http import HttpMiddleware
from node_agent.models import (
    AgentStatus,
    CompleteRequest,
    CompleteResponse,
    ErrorBody,
    Health,
    LeaseInfo,
    PrepareRequest,
    PrepareResponse,
    RenewRequest,
    RestorePrepareRequest,
    TriggerRequest,
    TriggerResponse,
    VerifyFacts,
)
from node_agent.ratelimit import (
    DEFAULT_BURST,
    DEFAULT_RATE_PER_S,
    TOKEN_ACCEPTED,
    ClientRateLimit,
    CloseIfBodyUnread,
)
from node_agent.request_checks import describe_request_error
from node_agent.service import AgentService
from snapctl import __version__
from snapctl.config import is_loopback
from snapctl.errors import BadInputError, EngineBusy, EngineError, LeaseConflict, SnapctlError

log = logging.getLogger("snapctl.agent")

T = TypeVar("T")

_AUTH_HINT = "send 'Authorization: Bearer <token>' with the agent's token (token_file or $SNAPCTL_AGENT_TOKEN)"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "bad input"),
        (401, "missing or wrong bearer token"),
        (403, "a request from a web page (an Origin not on loopback, or Sec-Fetch-Site: cross-site)"),
        (409, "the lease is held by another run, or this run does not hold it"),
        (413, "request body too large"),
        (422, "request body does not match the schema"),
        (429, "too many requests from this client to this endpoint; see Retry-After"),
        (500, "unexpected error in the agent (details in its log)"),
        (502, "the engine failed"),
        (504, "the engine did not answer in time"),
    )
}


class _Internal(Exception):
    """Something unexpected failed in an engine call; already logged with its traceback."""


def create_app(service: AgentService, token: str | None, *, max_body_bytes: int = 64 * 1024,
               rate_per_s: float | None = DEFAULT_RATE_PER_S, burst: int = DEFAULT_BURST,
               metrics_token: str | None = None) -> FastAPI:
    """``rate_per_s``/``burst``: the per-client, per-endpoint request limit (node_agent.ratelimit); None: off.
    ``metrics_token``: a second token that opens ``/metrics`` only (for scrapers)."""
    app = FastAPI(
        title="snapctl-agent",
        version=__version__,
        description="Node agent of snapctl: holds one database engine in a snapshot-safe state under a lease.",
        # No /docs or /redoc: served without a token, they ran a CDN's JavaScript in the agent's own
        # origin, from where it could call a token-less agent as a same-origin page. /openapi.json
        # stays: JSON, which no browser runs, and nothing the source does not say.
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, max_body_bytes=max_body_bytes)
    check = TokenCheck(token, metrics_token) if token else None
    endpoints: set[str] = set()  # filled once the routes are added, below
    if check:  # none configured: the agent refuses to listen beyond loopback then
        # Nothing is parsed before the token is checked.
        app.add_middleware(BearerAuth, check=check)
    else:  # ...and answers loopback names only: a web page must not reach it by DNS rebinding
        app.add_middleware(LoopbackHostOnly)
    app.add_middleware(RefuseWebPages)  # whatever the token says, a web page is refused
    if rate_per_s is not None:
        # Outermost: counts refusals too, wrong tokens apart from a known holder's (see ratelimit).
        app.add_middleware(ClientRateLimit, rate_per_s=rate_per_s, burst=burst,
                           credential=check.accepted if check else None, endpoints=endpoints)
    # Outermost of all: sees every answer, the rate limit's 429 too.
    app.add_middleware(CloseIfBodyUnread)
    _install_error_handlers(app)
    # Only documents the scheme in OpenAPI; BearerAuth enforces it.
    bearer = HTTPBearer(auto_error=False, description="the agent's token (token_file or $SNAPCTL_AGENT_TOKEN)")
    v1: dict[str, Any] = {"dependencies": [Security(bearer)], "responses": _ERRORS}

    @app.get("/v1/health", response_model=Health, tags=["agent"])
    async def health() -> Health:
        return service.health()

    @app.get("/v1/status", response_model=AgentStatus, **v1, tags=["agent"])
    async def status() -> AgentStatus:
        return await _call(service.status)

    @app.post("/v1/prepare", response_model=PrepareResponse, **v1, tags=["lease"])
    async def prepare(body: PrepareRequest) -> PrepareResponse:
        # The wait for hold_at runs here, on the event loop: in a worker thread, prepares naming
        # instants ahead could occupy every one, and renew and complete would queue behind them.
        # Its client gone (a snapctl killed), the prepare goes on all the same: status names it.
        with service.preparing.of(body.run_id):
            await service.wait_for_hold_at(body.run_id, body.lease_s, body.hold_at)
            return await _call(service.prepare, body.run_id, body.lease_s)

    @app.post("/v1/renew", response_model=LeaseInfo, **v1, tags=["lease"])
    async def renew(body: RenewRequest) -> LeaseInfo:
        return await _call(service.renew, body.run_id, body.lease_s)

    @app.post("/v1/complete", response_model=CompleteResponse, **v1, tags=["lease"])
    async def complete(body: CompleteRequest) -> CompleteResponse:
        return await _call(service.complete, body.run_id)

    @app.post("/v1/trigger", response_model=TriggerResponse, **v1, tags=["engine"])
    async def trigger(body: TriggerRequest | None = Body(default=None)) -> TriggerResponse:
        return await _call(service.trigger, body.target if body else None)

    @app.post("/v1/restore-prepare", status_code=204, response_class=Response, **v1, tags=["engine"])
    async def restore_prepare(body: RestorePrepareRequest | None = Body(default=None)) -> Response:
        await _call(service.restore_prepare, body.path if body else None, body.check_only if body else False)
        return Response(status_code=204)

    @app.post("/v1/verify", response_model=VerifyFacts, **v1, tags=["engine"])
    async def verify() -> VerifyFacts:
        return await _call(service.verify)

    from fastapi.responses import PlainTextResponse

    # Behind the token like every endpoint but health; a scraper uses the separate metrics token, which
    # opens this page only. Prometheus text, not part of the versioned JSON API: left out of OpenAPI.
    @app.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
    async def metrics() -> PlainTextResponse:
        from snapctl.metrics import CONTENT_TYPE, agent_metrics

        return PlainTextResponse(await run_in_threadpool(agent_metrics, service), media_type=CONTENT_TYPE)

    endpoints.update(route.path for route in app.routes if hasattr(route, "path"))
    return app


async def _call(fn: Callable[..., T], *args: Any) -> T:
    """Run a (blocking) service call in a worker thread; unexpected errors become a bare 500."""
    try:
        return await run_in_threadpool(fn, *args)
    except (SnapctlError, TimeoutError):
        raise
    except Exception as exc:
        log.exception("unexpected error in %s", getattr(fn, "__name__", "a service call"))
        raise _Internal() from exc


def _error(status: int, error: str, hint: str | None = None, holder: str | None = None, **headers: str) -> JSONResponse:
    body = ErrorBody(error=error, hint=hint, holder=holder).model_dump()
    return JSONResponse(body, status_code=status, headers=headers or None)


def _caused_by_timeout(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        # Engines use many clients (httpx, tarantool, sockets); their timeouts share only the name.
        if isinstance(seen, TimeoutError) or "Timeout" in type(seen).__name__:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _install_error_handlers(app: FastAPI) -> None:
    handlers: dict[type[Exception], Callable[[Request, Any], Awaitable[JSONResponse]]] = {}

    async def conflict(_: Request, exc: SnapctlError) -> JSONResponse:
        return _error(409, exc.message, exc.hint, getattr(exc, "holder", None))

    async def bad_input(_: Request, exc: BadInputError) -> JSONResponse:
        return _error(400, exc.message, exc.hint)

    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, *describe_request_error(exc, request.headers.get("content-type")))

    async def engine_failed(_: Request, exc: EngineError) -> JSONResponse:
        return _error(504 if _caused_by_timeout(exc) else 502, exc.message, exc.hint)

    async def timed_out(_: Request, exc: TimeoutError) -> JSONResponse:
        detail = f": {exc}" if str(exc) else ""
        return _error(504, f"the engine did not answer in time{detail}")

    async def other_error(_: Request, exc: SnapctlError) -> JSONResponse:
        return _error(500, exc.message, exc.hint)

    async def internal(_: Request, exc: _Internal) -> JSONResponse:
        return _error(500, "internal error in the agent", "see the agent's log for details")

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's own refusals (unknown path, wrong method, a body that is not UTF-8) answer
        # an ErrorBody like every other non-2xx, not {"detail": ...}.
        messages = {400: "request body could not be read (send UTF-8 JSON)", 404: "no such endpoint",
                    405: f"method {request.method} not allowed here"}
        error = messages.get(exc.status_code) or str(exc.detail).lower()
        return _error(exc.status_code, error, "see /openapi.json" if exc.status_code in (404, 405) else None,
                      **(exc.headers or {}))

    handlers.update({
        HTTPException: http_error,
        LeaseConflict: conflict,
        EngineBusy: conflict,
        BadInputError: bad_input,
        RequestValidationError: invalid_request,
        EngineError: engine_failed,
        TimeoutError: timed_out,
        SnapctlError: other_error,
        _Internal: internal,
    })
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)


class TokenCheck:
    """Whether a request presents a token its path accepts: the agent's token anywhere, the metrics
    token on /metrics only (constant-time compare). Decided once per request and kept in its
    scope, so the rate limit (which counts wrong tokens apart) and BearerAuth agree without
    comparing twice."""

    _KEY = "snapctl.token_check"

    def __init__(self, token: str, metrics_token: str | None = None) -> None:
        self.expected = token.encode()
        self.metrics_expected = metrics_token.encode() if metrics_token else None

    def __call__(self, scope: Scope) -> str | None:
        """None when the token is accepted, else what is wrong ("missing/wrong bearer token")."""
        return self._decide(scope)[0]

    def accepted(self, scope: Scope) -> str | None:
        """Which token the request presents: "agent", "metrics", or None (none this path accepts)."""
        return self._decide(scope)[1]

    def _decide(self, scope: Scope) -> tuple[str | None, str | None]:
        if self._KEY not in scope:
            scope[self._KEY] = self._compare(scope)
        return scope[self._KEY]

    def _compare(self, scope: Scope) -> tuple[str | None, str | None]:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        given = given.strip()
        agent = hmac.compare_digest(given, self.expected)
        metrics = False
        if scope.get("path") == "/metrics" and self.metrics_expected is not None:
            metrics = hmac.compare_digest(given, self.metrics_expected)
        if scheme.lower() != b"bearer" or not given:
            return "missing bearer token", None
        if agent or metrics:
            return None, "agent" if agent else "metrics"
        return "wrong bearer token", None


class BearerAuth:
    """401 for every /v1 request but health, and for /metrics, without the right bearer token.
    The metrics token, when set, opens /metrics and nothing else."""

    def __init__(self, app: ASGIApp, *, check: TokenCheck) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path == "/v1/health" or not (path.startswith("/v1/") or path == "/metrics"):
            await self.app(scope, receive, send)
            return
        problem = self.check(scope)
        if problem is None:
            if self.check.accepted(scope) == "agent":
                scope[TOKEN_ACCEPTED] = True  # its connection is the holder's: see guarded_http
            await self.app(scope, receive, send)
            return
        await _send(send, _error(401, problem, _AUTH_HINT, **{"WWW-Authenticate": "Bearer"}))


class LoopbackHostOnly(HttpMiddleware):
    """For an agent without a token (it listens on loopback only): 421 to every request whose
    ``Host`` is not a loopback name (localhost, 127.0.0.0/8, ::1). Else any web page a browser on
    the host opens could reach it by DNS rebinding (its own name, re-resolved to 127.0.0.1) and
    hold the database with no token at all."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = dict(scope.get("headers") or []).get(b"host")
        host = _host_name(raw.decode("latin-1")) if raw is not None else None
        if host is None or is_loopback(host):
            await self.app(scope, receive, send)
            return
        await _send(send, _error(421, f"refusing a request for host {_shown(host)}: this agent has no token and "
                                      "answers only requests for localhost, 127.0.0.0/8 or [::1]",
                                 "address it as 127.0.0.1 or localhost, or give it a token (docs/security.md)"))


class RefuseWebPages(HttpMiddleware):
    """403 to every request a web page made: one with an ``Origin`` that is not a loopback origin
    (``null`` included), or with ``Sec-Fetch-Site: cross-site``. A page on any site could send a
    "simple" cross-origin POST (``Content-Type: text/plain``, no preflight) to a token-less agent
    on 127.0.0.1 and have it trigger, verify or (on a restore target) restore-prepare: the browser
    sends the right ``Host``, and only the answer is kept from the page. snapctl, curl and
    scrapers send neither header; on an agent with a token it costs nothing and holds as well."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin", b"").decode("latin-1")
        if b"origin" in headers and not _loopback_origin(origin):
            error = f"refusing a request from a web page (origin {_shown(origin)}): the agent serves no browser"
        elif headers.get(b"sec-fetch-site", b"").strip().lower() == b"cross-site":
            error = "refusing a request from a web page (sec-fetch-site: cross-site): the agent serves no browser"
        else:
            await self.app(scope, receive, send)
            return
        await _send(send, _error(403, error, "call the agent with snapctl, curl or a script, "
                                             "which send no Origin or Sec-Fetch-Site header"))


def _loopback_origin(origin: str) -> bool:
    try:
        parts = urlsplit(origin.strip())
        return parts.scheme in ("http", "https") and parts.hostname is not None and is_loopback(parts.hostname)
    except ValueError:  # a port that is no number, a bracket unclosed
        return False


def _shown(text: str) -> str:
    return text if text.isprintable() and len(text) <= 64 else "(unprintable or too long)"


def _host_name(host: str) -> str:
    """The name in a ``Host`` header, without its port: "[::1]:7700" -> "::1", "a:7700" -> "a"."""
    host = host.strip()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


async def _send(send: Send, response: JSONResponse) -> None:
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class BodyLimit(HttpMiddleware):
    """Answer 413 to bodies over the limit, declared (Content-Length) or streamed (chunked)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        super().__init__(app)
        self.max_body_bytes = max_body_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send)
            return
        received = 0
        overflow = False
        replaced = False

        async def counting_receive() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    overflow = True
                    return {"type": "http.disconnect"}  # stop the app reading; we answer instead
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if not overflow:
                await send(message)
            elif not replaced:
                replaced = True
                await self._too_large(send)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not overflow:
                raise
        if overflow and not replaced:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        await _send(send, _error(413, f"request body larger than {self.max_body_bytes} bytes"))
