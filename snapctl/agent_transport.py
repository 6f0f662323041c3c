"""A lean HTTP/1.1 keep-alive client for agents, plain or over TLS, without httpx.

httpx's stack (httpcore, anyio, h11, its request and response models) costs about a millisecond
of CPU per request, and importing it ~0.1 s. A run over 1000 agents makes thousands of small
requests from one Python thread, so that cost is the difference between a fan-out that takes a
second and one that takes several. This transport speaks just what the agent API needs (one JSON
request at a time per connection, Content-Length or chunked bodies, keep-alive) on a bare asyncio
protocol, and finds an agent's idle connections by its address in O(1) (httpcore's pool scans
every connection on each request: O(N) per call). Over TLS it is the same protocol on asyncio's
TLS transport, with the one context ``open_agents`` builds (CA, client certificate).

Errors are ``TransportTimeout`` (no answer in time) and ``TransportError`` (anything else that
went wrong on the way); the agent client turns both into errors naming the node.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import re
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024
# The most of one answer's body snapctl reads: a rogue or broken service at an agent's address
# announcing 100 GB grew snapctl to gigabytes. The largest real answer is a status over many raft
# groups, ~1.5 KB each (a DingoDB store's regions): 64 MiB holds some 45,000 of them.
MAX_BODY = 64 * 1024 * 1024
_IDLE_KEPT = 4
_DIGITS = re.compile(rb"[0-9]{1,19}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_GRAIN = 0.05  # s: how finely request deadlines are kept (_Deadlines)
# One encoder for every call: json.dumps with these options builds a new encoder each time.
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

CLOSED_UNANSWERED = "the agent closed the connection without answering"  # the client adds why it may have
_PROBE_S = 1.0  # the most a connect that asks whether the agent still listens may take


class TransportError(Exception):
    """The request did not get an answer: connection refused or reset, a malformed response.
    ``sent`` is False when no connection was made for any sending of it, so the agent cannot have
    seen the request."""

    sent = True


class ClosedUnanswered(TransportError):
    """The agent ended the connection before a byte of its answer. ``fresh``: on a connection
    opened for this request, where a TLS agent asked in plain http (or one refusing our client
    certificate) ends it so too, as it never does one it has answered on. ``gone``: nothing
    listened at the agent's address right after: it died (or restarted) mid-request."""

    def __init__(self, *, fresh: bool, gone: bool) -> None:
        super().__init__(CLOSED_UNANSWERED)
        self.fresh, self.gone = fresh, gone


class TransportTimeout(TransportError):
    """No connection, or no answer, within the timeout."""


class AnswerTooLarge(TransportError):
    """The answer's body is larger than ``MAX_BODY``: announced so (``size``), or more of it came
    (``size`` None). ``status``: the answer's, from its head."""

    def __init__(self, status: int, size: int | None) -> None:
        super().__init__(f"an answer body of {size} bytes" if size is not None else "an answer body")
        self.status, self.size = status, size


class AgentResponse:
    """What the agent client needs of an answer: its status and JSON body; ``headers`` (names
    lowered, values as sent, both bytes) and ``deadline`` (loop time) for a 429's repeat, which
    waits for ``Retry-After`` and must still end within the call's timeout."""

    __slots__ = ("status_code", "content", "headers", "deadline")

    def __init__(self, status_code: int, content: bytes, headers: dict[bytes, bytes] | None = None,
                 deadline: float | None = None) -> None:
        # Both were made for every answer anyway: keeping them adds no work to the 2xx path.
        self.status_code, self.content, self.headers, self.deadline = status_code, content, headers, deadline

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        return json.loads(self.content)


@functools.lru_cache(maxsize=16384)  # a few endpoints per agent; parsing each call cost ~20 µs
def _split(url: str) -> tuple[str, int, str, str]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), parts.netloc, \
        f"{parts.path or '/'}{'?' + parts.query if parts.query else ''}"


class _Connection(asyncio.Protocol):
    """One keep-alive connection as a bare protocol: bytes are parsed as they arrive, and the one
    request in flight is answered through a future (asyncio's streams cost twice as much)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.waiter: asyncio.Future | None = None
        self.method = ""
        self.deadline: float | None = None  # of the request in flight (loop time)

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._answer()

    def eof_received(self) -> bool:
        self.eof = True
        self._answer()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._answer(exc)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- ours --
    @property
    def usable(self) -> bool:
        # The agent closes idle connections after its keep-alive timeout; its FIN arrives as EOF.
        return not self.eof and self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes, method: str, deadline: float | None, deadlines: _Deadlines) -> asyncio.Future:
        assert self.transport is not None
        self.waiter = waiter = asyncio.get_running_loop().create_future()
        self.method, self.deadline = method, deadline
        if deadline is not None:
            deadlines.watch(self, deadline)
        self.transport.write(data)
        return waiter

    def expire(self, due: float) -> None:
        """Fail the request in flight if its deadline is ``due`` or earlier (``_Deadlines`` calls
        this; a later request on this connection has its own, later, slot)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done() and self.deadline is not None and self.deadline <= due + 1e-6:
            waiter.set_exception(TransportTimeout("the agent did not answer in time"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _answer(self, lost: Exception | None = None) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            if len(self.buffer) > _MAX_HEAD + MAX_BODY:  # bytes nobody asked for, on an idle connection
                self.close()
            return
        try:
            answer = _parse_response(self.buffer, self.method, self.eof)
        except (ValueError, AnswerTooLarge) as exc:
            waiter.set_exception(exc)
            self.close()  # nothing more of it is read: the buffer stops growing here
            return
        if answer is not None:
            consumed, response = answer
            del self.buffer[:consumed]
            self.waiter = None
            waiter.set_result(response)
        elif self.eof:
            # Nothing of the answer came: the agent closed a kept-alive connection (safe to resend).
            waiter.set_exception(_Stale() if not self.buffer else ConnectionResetError(str(lost or "connection closed")))


class _Deadlines:
    """Times out the requests in flight with one timer per ``_GRAIN`` of deadlines, not one per
    request: a fan-out over 1000 agents shares a few timers, where a timer (and asyncio.timeout's
    cancel scope) per request was a quarter of the transport's CPU per call. A request times out up
    to ``_GRAIN`` late, which no timeout of seconds notices."""

    def __init__(self) -> None:
        self._due: dict[int, list[_Connection]] = {}

    def watch(self, conn: _Connection, deadline: float) -> None:
        slot = math.ceil(deadline / _GRAIN)
        watched = self._due.get(slot)
        if watched is None:
            watched = self._due[slot] = []
            asyncio.get_running_loop().call_at(slot * _GRAIN, self._expire, slot)
        watched.append(conn)

    def _expire(self, slot: int) -> None:
        # Failed only after one more poll of the sockets: asyncio runs the timers due after the
        # poll it last made, so in a process paused just after a poll (SIGSTOP, a paused VM, swap)
        # an answer that arrived meanwhile is still unread when its deadline fires. The next turn
        # polls before it runs what was queued, and its reads are queued behind this hop: hence two.
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._fail_unanswered, self._due.pop(slot, ()), slot * _GRAIN)

    @staticmethod
    def _fail_unanswered(conns: list[_Connection], due: float) -> None:
        for conn in conns:
            conn.expire(due)


class AgentTransport:
    """HTTP/1.1 to any number of agents, connections kept alive between calls; over TLS with
    ``tls`` (every agent of this transport: one transport per scheme)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._deadlines = _Deadlines()
        self._tls = tls

    async def call(self, method: str, url: str, body: Any, headers: dict[str, str], timeout: float | None) -> AgentResponse:
        """One JSON request (``body`` None: no body) to ``url``."""
        host, port, netloc, target = _split(url)
        payload = b"" if body is None else _encode_json(body).encode()
        head = f"{method} {target} HTTP/1.1\r\nHost: {netloc}\r\nAccept: application/json\r\nUser-Agent: snapctl\r\n"
        for name, value in headers.items():
            head += f"{name}: {value}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        if body is not None or method not in ("GET", "HEAD"):
            head += f"Content-Length: {len(payload)}\r\n"
        data = (head + "\r\n").encode("latin-1") + payload
        # One deadline for the whole call, connecting and any resend included: ``timeout`` bounds it all.
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        status, content, fields = await self._roundtrip(host, port, data, deadline, method)
        return AgentResponse(status, content, fields, deadline)

    async def _roundtrip(self, host: str, port: int, data: bytes, deadline: float | None, method: str):
        idle = self._idle.setdefault((host, port), [])
        while True:
            conn = idle.pop() if idle else None
            if conn is not None and not conn.usable:
                conn.close()
                continue
            break
        reused = conn is not None
        if conn is None:
            conn = await self._connect(host, port, deadline)
        try:
            try:
                answer = await self._exchange(conn, data, deadline, method)
            except _Stale:
                if not reused:
                    raise ClosedUnanswered(fresh=True, gone=await self._refused(host, port, deadline)) from None
                # A kept-alive connection that ended without a byte of answer: most often one the
                # agent had just closed, never reading the request. But it may have read it and died
                # before answering (a prepare that held its engine), so should the resend find no
                # agent, the request is never reported as unsent: a rollback completes that node.
                conn.close()
                try:
                    conn = await self._connect(host, port, deadline)
                except TransportError as exc:
                    exc.sent = True
                    raise
                try:
                    answer = await self._exchange(conn, data, deadline, method)
                except _Stale:  # its address answered plain http before: no TLS agent
                    raise ClosedUnanswered(fresh=False, gone=False) from None
        except BaseException:
            conn.close()  # half-used (a timeout, a cancel): never reused
            raise
        status, content, keep_alive, fields = answer
        if not keep_alive or len(idle) >= _IDLE_KEPT:
            conn.close()
        else:
            idle.append(conn)
        return status, content, fields

    async def aclose(self) -> None:
        connections = [conn for idle in self._idle.values() for conn in idle]
        self._idle.clear()
        for conn in connections:
            conn.close()
        if connections:  # let the closes reach the agents before the loop ends
            await asyncio.wait([conn.closed for conn in connections], timeout=1)

    async def _connect(self, host: str, port: int, deadline: float | None) -> _Connection:
        try:
            async with asyncio.timeout_at(deadline):  # not wait_for: that costs a task per call
                _, conn = await asyncio.get_running_loop().create_connection(_Connection, host, port, ssl=self._tls)
        except TimeoutError:
            raise _not_sent(TransportTimeout(f"connect to {host}:{port} timed out")) from None
        except ssl.SSLError as exc:  # the handshake: its own words (CERTIFICATE_VERIFY_FAILED, ...) say why
            raise _not_sent(TransportError(str(exc))) from exc
        except OSError as exc:  # asyncio words it "Connect call failed (addr)": the errno says why
            raise _not_sent(TransportError(os.strerror(exc.errno).lower() if exc.errno else str(exc))) from exc
        return conn

    @staticmethod
    async def _refused(host: str, port: int, deadline: float | None) -> bool:
        """Whether a connect to the agent's address is refused now: its process gone (a SIGKILL,
        a crash), which a TLS agent that closed a plain-http request unanswered never is. A plain
        TCP connect, closed at once: no request, no TLS handshake. Any doubt is not refused."""
        loop = asyncio.get_running_loop()
        until = loop.time() + _PROBE_S if deadline is None else min(deadline, loop.time() + _PROBE_S)
        try:
            async with asyncio.timeout_at(until):
                # Each address in turn: a name with two (localhost: ::1 and 127.0.0.1) fails a
                # connect with one OSError("Multiple exceptions") that no longer says "refused".
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                for address in dict.fromkeys(info[4][0] for info in infos):
                    try:
                        _, writer = await asyncio.open_connection(address, port)
                    except ConnectionRefusedError:
                        continue
                    writer.close()
                    return False
        except (OSError, TimeoutError):
            return False
        return bool(infos)

    async def _exchange(self, conn: _Connection, data: bytes, deadline: float | None, method: str):
        try:
            return await conn.send(data, method, deadline, self._deadlines)
        except (_Stale, TransportTimeout):
            raise
        except ConnectionError as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc
        except ValueError as exc:
            raise TransportError(f"malformed answer: {exc}") from exc


def _not_sent(exc: TransportError) -> TransportError:
    exc.sent = False
    return exc


def _parse_response(buffer: bytearray, method: str, eof: bool):
    """(bytes used, (status, body, keep-alive, headers)) once ``buffer`` holds a whole response; None
    while it does not. ``eof``: the connection ended (a body delimited by it ends)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > _MAX_HEAD:
            raise ValueError("response headers too large")
        return None
    status_line, *header_lines = bytes(buffer[:end]).split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    try:
        status = int(rest[:3])
    except ValueError:
        raise ValueError(f"malformed status line {status_line[:80]!r}") from None
    fields = {}  # names lowered, values as sent; the client reads Retry-After of a 429
    for line in header_lines:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    connection = fields.get(b"connection", b"").lower()
    keep_alive = connection != b"close" and (version != b"HTTP/1.0" or connection == b"keep-alive")
    start = end + 4
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return start, (status, b"", keep_alive, fields)
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        # Counted with the chunks' framing: more than the body, never less.
        if len(buffer) - start > MAX_BODY + _MAX_HEAD:
            raise AnswerTooLarge(status, None)
        parsed = _parse_chunked(buffer, start, status)
        return None if parsed is None else (parsed[0], (status, parsed[1], keep_alive, fields))
    if (length_field := fields.get(b"content-length")) is not None:
        if not _DIGITS.fullmatch(length_field):  # int() also takes "-5", "+5" and "5_0"
            raise ValueError(f"bad Content-Length {length_field[:20]!r}")
        length = int(length_field)
        if length > MAX_BODY:  # refused as announced, before any of it is read
            raise AnswerTooLarge(status, length)
        if len(buffer) < start + length:
            return None
        return start + length, (status, bytes(buffer[start:start + length]), keep_alive, fields)
    if len(buffer) - start > MAX_BODY:
        raise AnswerTooLarge(status, None)
    if not eof:  # delimited by the close of the connection
        return None
    return len(buffer), (status, bytes(buffer[start:]), False, fields)


class _Stale(Exception):
    """The connection ended before any byte of the answer: safe to send the request again."""


def _parse_chunked(buffer: bytearray, at: int, status: int) -> tuple[int, bytes] | None:
    # Where each chunk lies, copied out only once the body is whole: this runs again on every read
    # of a body still arriving, and copying what came so far each time made a large body quadratic.
    chunks: list[tuple[int, int]] = []
    total = 0
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size_field = bytes(buffer[at:line_end]).split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_field):  # int() takes "-6", which walked the parse back for ever
            raise ValueError(f"bad chunk size {size_field[:20]!r}")
        size = int(size_field, 16)
        total += size
        if total > MAX_BODY:  # refused as its chunk is announced
            raise AnswerTooLarge(status, None)
        at = line_end + 2
        if size == 0:
            while True:  # trailers, up to the empty line
                line_end = buffer.find(b"\r\n", at)
                if line_end < 0:
                    return None
                empty, at = line_end == at, line_end + 2
                if empty:
                    return at, b"".join(buffer[start:start + n] for start, n in chunks)
        if len(buffer) < at + size + 2:
            return None
        chunks.append((at, size))
        at += size + 2
