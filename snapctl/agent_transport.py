"""A lean HTTP/1.1 keep-alive transport for httpx, for plain-http agents.

httpx's default stack (httpcore, anyio, h11) costs about a millisecond of CPU per request. A run
over 1000 agents makes thousands of small requests from one Python thread, so that cost is the
difference between a fan-out that takes a second and one that takes several. This transport
speaks just what the agent API needs (one request at a time per connection, Content-Length or
chunked bodies, keep-alive) on asyncio streams, and finds an agent's idle connections by its
address in O(1) (httpcore's pool scans every connection on each request: O(N) per call). httpx stays the client: requests, responses,
timeouts and errors (``httpx.TimeoutException``, ``httpx.TransportError``) are the same.
TLS agents keep httpx's default transport.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import httpx

_MAX_HEAD = 64 * 1024
_IDLE_KEPT = 4


class AgentResponse:
    """What the agent client needs of an answer: its status and JSON body."""

    __slots__ = ("status_code", "content")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code, self.content = status_code, content

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        return json.loads(self.content)


class _Connection(asyncio.Protocol):
    """One keep-alive connection as a bare protocol: bytes are parsed as they arrive, and the one
    request in flight is answered through a future (asyncio's streams cost twice as much)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.waiter: asyncio.Future | None = None
        self.method = ""

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

    def send(self, data: bytes, method: str) -> asyncio.Future:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.method = method
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _answer(self, lost: Exception | None = None) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            answer = _parse_response(self.buffer, self.method, self.eof)
        except ValueError as exc:
            waiter.set_exception(exc)
            return
        if answer is not None:
            consumed, response = answer
            del self.buffer[:consumed]
            self.waiter = None
            waiter.set_result(response)
        elif self.eof:
            # Nothing of the answer came: the agent closed a kept-alive connection (safe to resend).
            waiter.set_exception(_Stale() if not self.buffer else ConnectionResetError(str(lost or "connection closed")))


class AgentTransport(httpx.AsyncBaseTransport):
    """Plain HTTP/1.1 to any number of agents, connections kept alive between calls. Serves as an
    httpx transport, and through ``call`` for the agent client's own requests (past httpx's
    request and response layers, which cost more than the exchange itself)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        status, headers, body, version = await self._roundtrip(
            url.host, url.port or 80, self._serialize(request), timeouts.get("connect"), timeouts.get("read"), request)
        return httpx.Response(status, headers=headers, content=body, request=request,
                              extensions={"http_version": version.encode()})

    async def call(self, method: str, url: str, body: Any, headers: dict[str, str], timeout: float | None) -> AgentResponse:
        """One JSON request (``body`` None: no body) to ``url``; errors are httpx's, as for a client.
        The answer is an ``AgentResponse``: building an ``httpx.Response`` costs more than the exchange."""
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 80
        payload = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                                                      allow_nan=False).encode()
        lines = [f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
                 f"Host: {parts.netloc}", "Accept: application/json", "User-Agent: snapctl"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines.append("Content-Type: application/json")
        if body is not None or method not in ("GET", "HEAD"):
            lines.append(f"Content-Length: {len(payload)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
        status, _, content, _ = await self._roundtrip(host, port, data, timeout, timeout, None)
        return AgentResponse(status, content)

    async def _roundtrip(self, host: str, port: int, data: bytes, connect_timeout: float | None,
                         read_timeout: float | None, request: httpx.Request | None):
        idle = self._idle.setdefault((host, port), [])
        while True:
            conn = idle.pop() if idle else None
            if conn is not None and not conn.usable:
                conn.close()
                continue
            break
        reused = conn is not None
        if conn is None:
            conn = await self._connect(host, port, connect_timeout, request)
        try:
            try:
                answer = await self._exchange(conn, data, read_timeout, request)
            except _Stale:
                if not reused:
                    raise httpx.RemoteProtocolError("the agent closed the connection without answering",
                                                    request=request) from None
                # A kept-alive connection the agent had just closed: the request never reached it.
                conn.close()
                conn = await self._connect(host, port, connect_timeout, request)
                try:
                    answer = await self._exchange(conn, data, read_timeout, request)
                except _Stale:
                    raise httpx.RemoteProtocolError("the agent closed the connection without answering",
                                                    request=request) from None
        except BaseException:
            conn.close()  # half-used (a timeout, a cancel): never reused
            raise
        if answer[-1] is False or len(idle) >= _IDLE_KEPT:
            conn.close()
        else:
            idle.append(conn)
        return answer[:4]

    async def aclose(self) -> None:
        connections = [conn for idle in self._idle.values() for conn in idle]
        self._idle.clear()
        for conn in connections:
            conn.close()
        if connections:  # let the closes reach the agents before the loop ends
            await asyncio.wait([conn.closed for conn in connections], timeout=1)

    @staticmethod
    def _serialize(request: httpx.Request) -> bytes:
        target = request.url.raw_path.decode("ascii")
        body = request.content
        lines = [f"{request.method} {target} HTTP/1.1"]
        for name, value in request.headers.multi_items():
            lines.append(f"{name}: {value}")
        if body and "content-length" not in request.headers:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    @staticmethod
    async def _connect(host: str, port: int, timeout: float | None, request: httpx.Request | None) -> _Connection:
        try:
            async with asyncio.timeout(timeout):  # not wait_for: that costs a task per call
                _, conn = await asyncio.get_running_loop().create_connection(_Connection, host, port)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(exc.strerror or str(exc), request=request) from exc
        return conn

    async def _exchange(self, conn: _Connection, data: bytes, timeout: float | None, request: httpx.Request | None):
        try:
            async with asyncio.timeout(timeout):
                return await conn.send(data, request.method if request is not None else "")
        except TimeoutError:
            raise httpx.ReadTimeout("the agent did not answer in time", request=request) from None
        except _Stale:
            raise
        except ConnectionError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        except ValueError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc


def _parse_response(buffer: bytearray, method: str, eof: bool):
    """(bytes used, (status, headers, body, http version, keep-alive)) once ``buffer`` holds a whole
    response; None while it does not. ``eof``: the connection ended (a body delimited by it ends)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > _MAX_HEAD:
            raise ValueError("response headers too large")
        return None
    status_line, *header_lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    try:
        status = int(rest[:3])
    except ValueError:
        raise ValueError(f"malformed status line {status_line[:80]!r}") from None
    headers = []
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    lowered = {name.lower(): value for name, value in headers}
    keep_alive = lowered.get("connection", "").lower() != "close"
    if version == "HTTP/1.0" and lowered.get("connection", "").lower() != "keep-alive":
        keep_alive = False
    start = end + 4
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return start, (status, headers, b"", version, keep_alive)
    if "chunked" in lowered.get("transfer-encoding", "").lower():
        parsed = _parse_chunked(buffer, start)
        return None if parsed is None else (parsed[0], (status, headers, parsed[1], version, keep_alive))
    if "content-length" in lowered:
        length = int(lowered["content-length"])
        if len(buffer) < start + length:
            return None
        return start + length, (status, headers, bytes(buffer[start:start + length]), version, keep_alive)
    if not eof:  # delimited by the close of the connection
        return None
    return len(buffer), (status, headers, bytes(buffer[start:]), version, False)


class _Stale(Exception):
    """The connection ended before any byte of the answer: safe to send the request again."""


def _parse_chunked(buffer: bytearray, at: int) -> tuple[int, bytes] | None:
    chunks = []
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";", 1)[0].strip() or b"0", 16)
        at = line_end + 2
        if size == 0:
            while True:  # trailers, up to the empty line
                line_end = buffer.find(b"\r\n", at)
                if line_end < 0:
                    return None
                empty, at = line_end == at, line_end + 2
                if empty:
                    return at, b"".join(chunks)
        if len(buffer) < at + size + 2:
            return None
        chunks.append(bytes(buffer[at:at + size]))
        at += size + 2
