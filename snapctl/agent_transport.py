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


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @property
    def usable(self) -> bool:
        # The agent closes idle connections after its keep-alive timeout; its FIN arrives as EOF.
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        self.writer.close()


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

    async def call(self, method: str, url: str, body: Any, headers: dict[str, str], timeout: float | None) -> httpx.Response:
        """One JSON request (``body`` None: no body) to ``url``; errors are httpx's, as for a client."""
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
        status, response_headers, content, _ = await self._roundtrip(host, port, data, timeout, timeout, None)
        return httpx.Response(status, headers=response_headers, content=content)

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
                answer = await self._exchange(conn, data, read_timeout, request)
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
        for conn in connections:
            try:
                await conn.writer.wait_closed()
            except OSError:
                pass

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
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=_MAX_HEAD), timeout)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(exc.strerror or str(exc), request=request) from exc
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection, data: bytes, timeout: float | None, request: httpx.Request | None):
        try:
            conn.writer.write(data)
            return await asyncio.wait_for(_read_response(conn.reader, request), timeout)
        except TimeoutError:
            raise httpx.ReadTimeout("the agent did not answer in time", request=request) from None
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError) and not exc.partial:
                raise _Stale() from exc
            if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                raise _Stale() from exc
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        except asyncio.LimitOverrunError as exc:
            raise httpx.RemoteProtocolError("response headers too large", request=request) from exc


async def _read_response(reader: asyncio.StreamReader, request: httpx.Request | None):
    """(status, headers, body, http version, keep-alive) of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    try:
        status = int(rest[:3])
    except ValueError:
        raise httpx.RemoteProtocolError(f"malformed status line {status_line[:80]!r}", request=request) from None
    headers = []
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    lowered = {name.lower(): value for name, value in headers}
    keep_alive = lowered.get("connection", "").lower() != "close"
    if version == "HTTP/1.0" and lowered.get("connection", "").lower() != "keep-alive":
        keep_alive = False
    method = request.method if request is not None else ""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in lowered.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in lowered:
        body = await reader.readexactly(int(lowered["content-length"]))
    else:
        body = await reader.read()  # delimited by the close of the connection
        keep_alive = False
    return status, headers, body, version, keep_alive


class _Stale(Exception):
    """The connection ended before any byte of the answer: safe to send the request again."""


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
