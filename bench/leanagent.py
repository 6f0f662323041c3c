"""A lean simulated agent: the agent's /v1 wire API on a bare asyncio protocol, many nodes per process.

Why it exists: on this 2-core machine, 1000 simulated agents share the cores with snapctl. The
real agent stack (FastAPI, pydantic, a thread per engine call) costs ~1 ms of CPU per request, so
1000 of them on the same cores measure the agents' CPU, not snapctl. In a real cluster each agent
has a host of its own. This server answers the same requests with the same JSON and the same
lease rules (bearer token, run-id fencing, 409 with the holder, leases that expire, idempotent
prepare and complete, ``hold_at``), at ~50 µs per request. ``bench.simcluster`` uses it by default
(``agent_stack="lean"``); ``agent_stack="real"`` runs the real stack for comparison.

Plain HTTP/1.1 with Content-Length bodies and keep-alive: what snapctl's client sends.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime, timedelta
from typing import Any

from snapctl import __version__

_JSON = b"application/json"
_NO_TOKEN = {"error": "missing bearer token", "hint": "send Authorization: Bearer <token>"}
_BAD_TOKEN = {"error": "wrong bearer token", "hint": "send Authorization: Bearer <token>"}
# bench.trace: where each process writes, when it stops, the wall-clock instants each complete
# arrived and released its engine (none kept unless set).
TRACE_DIR_ENV = "SNAPCTL_BENCH_TRACE_DIR"
_COMPLETED_FIRST = "completed before its prepare arrived"
_trace: list[tuple[str, str, float]] | None = [] if os.environ.get(TRACE_DIR_ENV) else None


def _iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


class _Cancellable:
    """One callback's place in a ``_SharedInstants`` group."""

    def __init__(self, group: list[Callable[[], None]], callback: Callable[[], None]) -> None:
        self.group, self.callback = group, callback

    def cancel(self) -> None:
        if self.callback in self.group:
            self.group.remove(self.callback)


class _SharedInstants:
    """One loop timer for every callback of this process that falls due at one named instant.

    Why: in a real cluster every agent has a host of its own, and all of them begin their hold
    at ``hold_at`` by their own clocks. Here 250 share one event loop. With a timer each, their
    due times differ by the microseconds between their prepares' arrivals (uvloop rounds them
    to milliseconds), the loop runs them over several passes, and between passes it writes the
    answers of the nodes that began first: each pass's answers (~0.1 ms a node, more while the
    other processes share the cores) delayed the next pass's holds by tens of milliseconds,
    a skew a cluster of hosts does not have. One timer begins them all in one pass.
    """

    def __init__(self) -> None:
        self._groups: dict[Hashable, list[Callable[[], None]]] = {}

    def call_later(self, instant: Hashable, delay: float, callback: Callable[[], None]) -> _Cancellable:
        group = self._groups.get(instant)
        if group is None:
            group = self._groups[instant] = []
            asyncio.get_running_loop().call_later(delay, self._fire, instant)
        group.append(callback)
        return _Cancellable(group, callback)

    def _fire(self, instant: Hashable) -> None:
        for callback in self._groups.pop(instant, []):
            callback()


class LeanNode:
    """One simulated node: its engine is a flag, its prepare a timer."""

    def __init__(self, name: str, token: str, prepare_latency_s: float, complete_latency_s: float,
                 instants: _SharedInstants) -> None:
        self.name = name
        self.instants = instants  # shared by the nodes of one serve_lean()
        self.expected = token.encode()
        self.prepare_latency_s = prepare_latency_s
        self.complete_latency_s = complete_latency_s
        self.holder: str | None = None
        self.preparing: str | None = None  # run id whose prepare is under way
        self.lease_s = 0.0
        self.acquired_at: datetime | None = None
        self.acquired_mono = 0.0
        self.expires_mono = 0.0
        self.prepared_at: datetime | None = None
        self.ended: dict[str, str] = {}
        self.cancel_prepare = None  # while a prepare waits for its hold: call to cancel it

    def expire_if_due(self) -> None:
        if self.holder is not None and time.monotonic() >= self.expires_mono:
            self.ended[self.holder] = "expired"
            self.holder = None

    def lease_info(self) -> dict[str, Any]:
        assert self.acquired_at is not None
        expires = self.acquired_at + timedelta(seconds=self.expires_mono - self.acquired_mono)
        return {"run_id": self.holder, "acquired_at": _iso(self.acquired_at), "expires_at": _iso(expires)}

    def state(self) -> dict[str, Any]:
        assert self.prepared_at is not None
        return {"engine": "sim", "version": "sim", "prepared_at": _iso(self.prepared_at),
                "facts": {"tables": {}, "position": {"lsn": 1}, "exact": True}, "files": [], "raft": [],
                "details": {}}

    def status(self) -> dict[str, Any]:
        self.expire_if_due()
        return {"node": self.name, "agent_version": __version__,
                "engine": {"engine": "sim", "version": "sim", "reachable": True, "held": self.holder is not None,
                           "held_by": self.holder, "held_since": None, "raft": [], "details": {}, "error": None},
                "lease": self.lease_info() if self.holder else None, "data_paths": [], "free_bytes": None}

    def conflict(self, message: str) -> tuple[int, dict[str, Any]]:
        return 409, {"error": message, "hint": "wait until that run completes or its lease expires",
                     "holder": self.holder or self.preparing}


class LeanAgentProtocol(asyncio.Protocol):
    """One connection to one node: requests are answered in order, one at a time."""

    def __init__(self, node: LeanNode) -> None:
        self.node = node
        self.buffer = b""
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._next()

    def _next(self) -> None:
        while not self.busy and self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            method, path, _ = head[0].split(" ", 2)
            self._handle(method, path, headers, body)

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        node = self.node
        if path != "/v1/health":
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given:
                return self._send(401, _NO_TOKEN)
            if not hmac.compare_digest(given.strip().encode(), node.expected):
                return self._send(401, _BAD_TOKEN)
        request = json.loads(body) if body else {}
        if path == "/v1/health":
            return self._send(200, {"status": "ok", "agent_version": __version__})
        if path == "/v1/status":
            return self._send(200, node.status())
        if path == "/v1/prepare":
            return self._prepare(request["run_id"], float(request["lease_s"]), request.get("hold_at"))
        if path == "/v1/renew":
            node.expire_if_due()
            if node.holder != request["run_id"]:
                return self._send(409, {"error": f"cannot renew: run {request['run_id']} does not hold node "
                                                 f"{node.name}", "hint": None, "holder": node.holder})
            node.expires_mono = time.monotonic() + (request.get("lease_s") or node.lease_s)
            return self._send(200, node.lease_info())
        if path == "/v1/complete":
            if _trace is not None:
                _trace.append((node.name, "arrived", time.time()))
            return self._complete(request["run_id"])
        if path == "/v1/trigger":
            return self._send(200, {"jobs": [{"target": request.get("target") or "all", "status": "succeeded",
                                              "detail": None, "duration_s": 0.0, "extra": {}}]})
        if path == "/v1/verify":
            return self._send(200, {"tables": {}, "position": {"lsn": 1}, "exact": True})
        return self._send(404, {"error": "no such endpoint", "hint": "see /openapi.json"})

    def _prepare(self, run_id: str, lease_s: float, hold_at: str | None) -> None:
        node = self.node
        node.expire_if_due()
        if node.ended.get(run_id) == _COMPLETED_FIRST:
            return self._send(409, {"error": f"node {node.name}: run {run_id} completed this node before its "
                                             "prepare arrived; nothing is held", "hint": None, "holder": None})
        if node.holder == run_id:
            node.expires_mono = time.monotonic() + lease_s
            return self._send(200, {"run_id": run_id, "lease": node.lease_info(), "state": node.state()})
        if node.holder is not None or node.preparing is not None:
            return self._send(*node.conflict(f"node {node.name} is already held by run "
                                             f"{node.holder or node.preparing}"))
        node.preparing = run_id
        delay = 0.0
        if hold_at:
            delay = max(0.0, datetime.fromisoformat(hold_at).timestamp() - time.time())

        def hold() -> None:
            # The engine's work (prepare_latency_s) ends in the hold, as in the real agent: the
            # hold begins when the engine answers, and prepared_at marks that instant.
            node.cancel_prepare = None
            node.preparing, node.holder, node.lease_s = None, run_id, lease_s
            node.prepared_at = node.acquired_at = datetime.now(UTC)
            node.acquired_mono = time.monotonic()
            node.expires_mono = node.acquired_mono + lease_s
            node.ended.pop(run_id, None)

        def answer() -> None:
            self._send(200, {"run_id": run_id, "lease": node.lease_info(), "state": node.state()})

        # Prepares that arrive before the hold instant all hold at that instant plus the engine's
        # time: one timer for all of them (see _SharedInstants); a late one holds when it can.
        instant = (hold_at, node.prepare_latency_s) if delay > 0 else None
        handle = self._later(delay + node.prepare_latency_s, answer, begin=hold, instant=instant)

        def cancel() -> None:  # a complete of this run came first (a rollback): never hold
            handle.cancel()
            node.preparing = node.cancel_prepare = None
            node.ended[run_id] = "cancelled"
            self.busy = False
            self._send(409, {"error": f"node {node.name}: the prepare of run {run_id} was cancelled by its "
                                      "complete before the hold began; nothing is held", "hint": None,
                             "holder": None})
            self._next()

        node.cancel_prepare = cancel

    def _complete(self, run_id: str) -> None:
        node = self.node
        node.expire_if_due()
        if node.holder != run_id:
            if node.preparing == run_id and node.cancel_prepare is not None:
                node.cancel_prepare()
                return self._send(200, {"run_id": run_id, "released": False, "held_for_s": None})
            if run_id in node.ended:
                return self._send(200, {"run_id": run_id, "released": False, "held_for_s": None})
            if node.holder is None:  # as the real agent: this run's prepare, if it comes later, never holds
                node.ended[run_id] = _COMPLETED_FIRST
            return self._send(409, {"error": f"cannot complete: run {run_id} does not hold node {node.name}",
                                    "hint": None, "holder": node.holder})

        def released() -> None:
            if _trace is not None:
                _trace.append((node.name, "released", time.time()))
            held_for = time.monotonic() - node.acquired_mono
            node.ended[run_id] = "completed"
            node.holder = None
            self._send(200, {"run_id": run_id, "released": True, "held_for_s": held_for})

        self._later(node.complete_latency_s, released)

    def _later(self, delay: float, then: Callable[[], None], begin: Callable[[], None] | None = None,
               instant: Hashable | None = None) -> asyncio.TimerHandle | _Cancellable:
        """Answer the current request after ``delay`` (``then``); this connection's next waits
        until then. ``begin``, if given, is what the engine does at that instant: it runs first,
        and the answer in the loop's next pass. ``instant`` names a moment other nodes of this
        process wait for too (a cluster's ``hold_at``): they all begin in one pass, before any of
        them answers."""
        self.busy = True
        loop = asyncio.get_running_loop()

        def answer() -> None:
            self.busy = False
            then()
            self._next()

        def run() -> None:
            if begin is None:
                return answer()
            begin()
            loop.call_soon(answer)

        if instant is not None:
            return self.node.instants.call_later(instant, delay, run)
        return loop.call_later(delay, run)

    def _send(self, status: int, document: dict[str, Any]) -> None:
        if self.transport is None:
            return
        body = json.dumps(document, separators=(",", ":")).encode()
        reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 409: "Conflict"}.get(status, "Error")
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                             % (status, reason.encode(), _JSON, len(body), body))


async def serve_lean(sockets: dict[str, Any], token: str, prepare_latency_s: float, complete_latency_s: float,
                     stop: asyncio.Event, tls: Any = None) -> None:
    """Serve one lean node on each listening socket (node name -> socket) until ``stop`` is set;
    over TLS with ``tls`` (a server ``ssl.SSLContext``)."""
    loop = asyncio.get_running_loop()
    servers = []
    instants = _SharedInstants()
    for name, sock in sockets.items():
        node = LeanNode(name, token, prepare_latency_s, complete_latency_s, instants)
        servers.append(await loop.create_server(lambda node=node: LeanAgentProtocol(node), sock=sock, ssl=tls))
    await stop.wait()
    for server in servers:
        server.close()
    if _trace is not None:
        _dump_trace(_trace)


def _dump_trace(trace: list[tuple[str, str, float]]) -> None:
    with open(os.path.join(os.environ[TRACE_DIR_ENV], f"{os.getpid()}.json"), "w") as out:
        json.dump(trace, out)
