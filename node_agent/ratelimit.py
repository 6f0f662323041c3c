"""Per-client request rate limits for the agent: one token bucket per client address and endpoint,
and one apart for a known token holder's requests.

Every call under /v1 but health, and every /metrics scrape, can make the agent touch its engine (a
checkpoint, a lock, a scan of every table, a status query), so a runaway script or a retry storm
must not be able to hammer the database through its agent. snapctl itself needs a handful of calls
per run (status, prepare, a renew every lease/3, complete), far below the default. Over the limit
the agent answers 429 with ``Retry-After``. Requests refused before anything ran (body too large,
body not matching the schema) give their token back: a fuzzer or a broken client is not charged
for our refusals, while wrong tokens are (guessing costs).

Requests that present a valid token from an address that token was accepted from before (a
holder: snapctl after its first call) are counted apart from the rest. Otherwise anyone who can
reach the agent from the holder's address (any local user, on loopback) could spend the holder's
budget with wrong tokens and have its complete refused (429), leaving the database held until
the lease ran out. A valid token from an address new to it shares the bucket of wrong ones: if it
did not, a guesser over its budget would be told each right guess by its not getting 429, at any
rate. (From a holder's own address it is told so; on loopback that is any local user, who could
also spread guesses over 127.0.0.0/8.)

Refusals are logged as one line when they begin and then one line per ``report_every_s`` with
their count, and uvicorn's access log leaves them out (``quiet_refusals``): a flood must not write
a log line per request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node_agent.asgi_http import HttpMiddleware
from node_agent.client_names import refusal_for

DEFAULT_RATE_PER_S = 20.0  # sustained requests per second, per client and endpoint
DEFAULT_BURST = 60  # requests a client may make at once to one endpoint
_MAX_BUCKETS = 4096  # the least recently seen clients are forgotten beyond this (they start full again)
_MAX_HOLDERS = 256  # addresses a valid token was accepted from; only a token holder can add to them
REPORT_EVERY_S = 10.0  # refusals of one client and endpoint are logged as one line per this
_REFUNDED = frozenset({413, 422})
_EXEMPT = frozenset({"/v1/health"})
_METRICS = "/metrics"
# Every path that is no endpoint shares one bucket per client: were each its own, a guesser could
# send every guess to a new path (/v1/x1, /v1/x2, ...; 401 for a wrong token, 404 for a right one)
# and never be limited.
UNKNOWN_PATHS = "paths that are no endpoint"

log = logging.getLogger("snapctl.agent")

_Key = tuple[str, str, str | None]  # client, path, the holder's credential (None: not a known holder's)


def client_of(address: str) -> str:
    """Who a request's address counts as: the address itself, but for IPv6 its /64 (one host is
    routinely given a whole /64, so counting each address apart would let one machine take a
    fresh budget with every request). IPv4-mapped addresses count as the IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if not ip.is_loopback:
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


class ClientRateLimit:
    """ASGI middleware; put it outermost so it counts requests the token check refuses too.

    ``credential`` names the token a request presents that its path accepts ("agent", "metrics"),
    None for none (the argument None: the agent has no token, every request is one kind)."""

    def __init__(self, app: ASGIApp, *, rate_per_s: float = DEFAULT_RATE_PER_S, burst: int = DEFAULT_BURST,
                 credential: Callable[[Scope], str | None] | None = None, report_every_s: float = REPORT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic, endpoints: Collection[str] | None = None) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.app = app
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._credential = credential
        self._report_every_s = report_every_s
        self._clock = clock
        # The paths that are endpoints (the app's routes; read at each request, so the app may fill
        # it after adding this middleware). None: every path is counted apart (a bare ASGI app).
        self._endpoints = endpoints
        # (client, path, the holder's credential or None) -> (tokens, at)
        self._buckets: OrderedDict[_Key, tuple[float, float]] = OrderedDict()
        self._holders: OrderedDict[tuple[str, str], None] = OrderedDict()  # (client, credential)
        self._unreported: dict[_Key, int] = {}  # refusals since the last log line

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith("/v1/") or path == _METRICS) or path in _EXEMPT:
            await self.app(scope, receive, send)
            return
        client = client_of((scope.get("client") or ("unknown",))[0])
        if self._endpoints is not None and path not in self._endpoints:
            path = UNKNOWN_PATHS
        credential = self._credential(scope) if self._credential else None
        holder = credential is not None and (client, credential) in self._holders
        key = (client, path, credential if holder else None)
        wait_s = self._take(key)
        if wait_s > 0:
            self._count_refusal(key)
            await _too_many(send, key, self.rate_per_s, self.burst, wait_s)
            return
        if credential is not None:
            self._holders[(client, credential)] = None
            self._holders.move_to_end((client, credential))
            while len(self._holders) > _MAX_HOLDERS:
                self._holders.popitem(last=False)
        status = 0

        async def noting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, noting_send)
        if status in _REFUNDED:
            self._give_back(key)

    def _take(self, key: _Key) -> float:
        """Take a token; 0 when granted, else the seconds until one is there."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
        granted = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if granted else tokens, now)
        while len(self._buckets) > _MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return 0.0 if granted else (1.0 - tokens) / self.rate_per_s

    def _give_back(self, key: _Key) -> None:
        if key in self._buckets:
            tokens, at = self._buckets[key]
            self._buckets[key] = (min(float(self.burst), tokens + 1.0), at)

    def _count_refusal(self, key: _Key) -> None:
        if key in self._unreported:
            self._unreported[key] += 1
            return
        self._unreported[key] = 0
        log.warning("refusing requests %s: more than %d at once or %g per second (429); "
                    "further refusals are counted and logged every %gs",
                    self._requests(key), self.burst, self.rate_per_s, self._report_every_s)
        asyncio.get_running_loop().call_later(self._report_every_s, self._report, key)

    def _report(self, key: _Key) -> None:
        count = self._unreported.pop(key, 0)
        if count:  # else the refusals stopped: the next one is logged at once again
            log.warning("refused %d more %s %s in the last %gs", count, "request" if count == 1 else "requests",
                        self._requests(key), self._report_every_s)
            self._unreported[key] = 0
            asyncio.get_running_loop().call_later(self._report_every_s, self._report, key)

    def _requests(self, key: _Key) -> str:
        client, path, holder = key
        if self._credential is None:
            return f"from {client} to {path}"
        if holder is None:
            return f"from {client} to {path} (wrong or no token, or one not yet accepted from there)"
        return f"with the {holder} token from {client} to {path}"


def quiet_refusals(record: logging.LogRecord) -> bool:
    """A filter for uvicorn's access log: it leaves out the 429s, which ClientRateLimit logs summed up."""
    args = record.args
    return not (isinstance(args, tuple) and args and args[-1] == 429)


async def _too_many(send: Send, key: _Key, rate: float, burst: int, wait_s: float) -> None:
    # The agent's ErrorBody shape, built here so this module needs nothing from the app. The same
    # words whichever bucket refused: a guesser must not learn from them what the agent thought
    # of the token.
    client, path, _ = key
    body = json.dumps({
        "error": f"too many requests from {client} to {path}: more than {burst} at once or {rate:g} per second",
        "hint": "slow down; retry after the Retry-After header's seconds",
        "holder": None,
    }).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"retry-after", str(max(1, math.ceil(wait_s))).encode())]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---- connections -------------------------------------------------------------------------------

REQUEST_TIMEOUT_S = 10.0  # a request must arrive whole within this of its connection opening or its last answer
MAX_CONNECTIONS_PER_CLIENT = 32  # open connections per client address; snapctl needs a few
# Set (True) in a request's scope by the app once it accepted the agent's token: the connection is
# the token holder's, and is not closed to make room for another from its address.
TOKEN_ACCEPTED = "snapctl.agent_token_accepted"


def guarded_http(request_timeout_s: float = REQUEST_TIMEOUT_S, max_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
                 tls: ssl.SSLContext | None = None, client_names: Collection[str] | None = None
                 ) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol with two bounds on connections, for ``uvicorn.Config(http=...)``.

    uvicorn waits for a request's headers for ever: anyone who can reach the port (no token
    needed) could open connections that send half a request, until the agent ran out of file
    descriptors and snapctl's renew and complete could no longer connect. So a connection whose
    request has not arrived whole (headers and body) ``request_timeout_s`` after it opened or after
    its last answer is closed (a request the app is working on, a prepare waiting for its hold, is
    not timed), and a client address gets at most ``max_per_client`` connections open at once.

    A new connection beyond that bound closes the oldest of its address's that has no whole request
    under way (idle, still sending its head, or still sending its body) and has never carried the
    agent's token, not the new one: refusing the newcomer let anyone without a token hold the bound
    with half-sent requests from snapctl's address and have snapctl's renew and complete refused
    until its lease ran out. A connection whose request has arrived whole (the app is answering it)
    is never closed for this, nor one that carried the token (only the token's holder can make
    those); when every other one is such, the new connection is closed instead.

    ``tls``: serve HTTPS, the handshake done here (give uvicorn no ssl settings then). Left to
    uvicorn, it came before the protocol saw the connection: a client that never finished its
    handshake held the connection for asyncio's 60 s and was not counted against its address. Here
    a connection is counted from its TCP connect, and the handshake falls within the same
    ``request_timeout_s`` as the request that follows it. ``client_names``: a verified client
    certificate naming none of them gets 403 (node_agent.client_names). With ``tls``, run on asyncio's own loop
    (``uvicorn.Config(loop="asyncio")``): uvloop delivers a connection's first bytes even when
    ``connection_made`` paused reading, so the ClientHello went to HTTP and the handshake stalled."""
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.utils import get_remote_addr

    # Each address's open connections, oldest first (a dict as an ordered set).
    open_per_client: dict[str, dict[GuardedH11Protocol, None]] = {}
    warned: set[str] = set()

    class GuardedH11Protocol(H11Protocol):
        _slow_timer: asyncio.TimerHandle | None = None
        _counted: str | None = None
        _raw: asyncio.Transport | None = None  # the TCP connection while its TLS handshake runs
        _early: list[bytes] | None = None  # requests TLS decrypted before the HTTP side was told of it
        _handshake: asyncio.Task[None] | None = None
        _vouched = False  # a request on it carried the agent's token: never closed to admit another

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if tls is None:
                super().connection_made(transport)
            if not self._admit(transport):
                return
            self._arm()
            if tls is not None:
                # Nothing is read until start_tls hands the connection to TLS: the ClientHello is
                # the handshake's to read, never HTTP's.
                transport.pause_reading()
                self._raw, self._early = transport, []
                self._handshake = self.loop.create_task(self._start_tls(transport))

        def _admit(self, transport: asyncio.Transport) -> bool:
            host = client_of(str((get_remote_addr(transport) or ("unknown",))[0]))
            self._counted = host
            mine = open_per_client.setdefault(host, {})
            mine[self] = None
            if len(mine) <= max_per_client:
                return True
            if host not in warned:
                warned.add(host)
                log.warning("more than %d connections open at once from %s: closing the oldest without a request "
                            "under way or the agent's token (else the new one) for each one beyond",
                            max_per_client, host)
            oldest = next((c for c in mine if c is not self and c._closable()), None)
            if oldest is not None:
                oldest._close_for_another()
                return True
            self._release()
            transport.close()
            return False

        def _closable(self) -> bool:
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                return not self._vouched
            # A request under way shields its connection only once it has arrived whole (the app
            # is answering it) or carries the token: a token-less agent waits for any body, so a
            # head sent whole with a body trickling in held the bound as surely as a half-sent head.
            return cycle.more_body and not cycle.scope.get(TOKEN_ACCEPTED) and not self._vouched

        def _close_for_another(self) -> None:
            transport = self._raw or self.transport
            self._release()  # at once: more connections may arrive before its connection_lost
            if transport is not None and not transport.is_closing():
                transport.close()

        async def _start_tls(self, raw: asyncio.Transport) -> None:
            assert tls is not None
            try:
                secure = await self.loop.start_tls(raw, self, tls, server_side=True,
                                                   ssl_handshake_timeout=request_timeout_s)
            except Exception as exc:  # noqa: BLE001 - any failed handshake ends the connection alike
                log.debug("tls handshake from %s failed: %s", self._counted, exc)
                secure = None
            self._raw = None
            if secure is None:  # failed, or closed meanwhile (by _too_slow, or by the client)
                self._release()
                return
            super().connection_made(secure)  # type: ignore[arg-type]
            if client_names is not None:
                refusal = refusal_for(secure.get_extra_info("peercert"), client_names)
                if refusal is not None:
                    self.app = refusal  # this connection's requests only
            early, self._early = self._early or [], None
            for data in early:
                super().data_received(data)

        def data_received(self, data: bytes) -> None:
            if self._early is not None:  # decrypted as the handshake ended, before _start_tls resumed
                self._early.append(data)
            else:
                super().data_received(data)

        def on_response_complete(self) -> None:
            if self.cycle is not None and self.cycle.scope.get(TOKEN_ACCEPTED):
                self._vouched = True
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._release()
            if self.transport is not None:  # else refused, or TLS never came up: HTTP never began
                super().connection_lost(exc)

        def _release(self) -> None:
            if self._slow_timer is not None:
                self._slow_timer.cancel()
            host, self._counted = self._counted, None
            if host is not None:
                mine = open_per_client[host]
                del mine[self]
                if not mine:
                    del open_per_client[host]
                    warned.discard(host)

        def _arm(self) -> None:
            if self._slow_timer is not None:
                self._slow_timer.cancel()
            self._slow_timer = self.loop.call_later(request_timeout_s, self._too_slow)

        def _too_slow(self) -> None:
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and not cycle.more_body:
                return  # received whole: the app is answering it (on_response_complete re-arms)
            transport = self._raw or self.transport
            if transport is not None and not transport.is_closing():
                log.debug("closing a connection from %s: no whole request within %gs",
                         self._counted, request_timeout_s)
                transport.close()

    return GuardedH11Protocol


class CloseIfBodyUnread(HttpMiddleware):
    """ASGI middleware, outermost: an answer that goes out before the request's body has all
    arrived (a 401, 403, 413, 421 or 429 decided on the head alone, or any other) says
    ``Connection: close``, and uvicorn closes the connection once it is sent.

    Without it uvicorn kept the connection for a next request, reading and throwing away the rest
    of the body until the request timeout (10 s): a full core per connection for anyone who could
    reach the port, no token needed (a reviewer streamed 7 GB into one 401)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or [])
        # No body announced is a body received; h11 lets only digits through as Content-Length.
        received = b"transfer-encoding" not in headers and int(headers.get(b"content-length", b"0")) == 0

        async def noting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                received = True
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not received:
                sent = list(message.get("headers") or [])
                if not any(name.lower() == b"connection" for name, _ in sent):
                    message = {**message, "headers": [*sent, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, noting_receive, closing_send)
