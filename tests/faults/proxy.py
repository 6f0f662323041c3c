"""A TCP proxy on 127.0.0.1 in front of one agent: the network between snapctl and that agent,
with the faults a real network has.

- ``gate(b"POST /v1/prepare")`` holds every request that starts with those bytes (and whatever
  follows on its connection) until ``open()``; ``caught`` says one arrived. That is how a test
  stops a run at an exact step from outside, and how it delivers a dead run's request late.
- ``partition()`` drops every byte both ways on every connection, old and new, without closing
  anything: the peer sees silence, not a reset, as with a pulled cable. ``heal()`` ends it.
  ``dropped_requests`` counts the requests it swallowed.
- ``requests``: the request line of every request that came through (``"POST /v1/renew HTTP/1.1"``),
  held and dropped ones too: what the client itself sent, however the agent answered it.

HTTP/1.1 clients send the next request on a connection only after the previous answer, so a
request's first bytes start a ``recv`` chunk: matching on the chunk's start is enough here.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"PATCH ")


@dataclass(eq=False)
class _Connection:
    client: socket.socket
    upstream: socket.socket
    lock: threading.Lock = field(default_factory=threading.Lock)
    held_by: Gate | None = None
    held: list[bytes] = field(default_factory=list)

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class Gate:
    def __init__(self, proxy: LoopbackProxy, prefix: bytes) -> None:
        self.prefix = prefix
        self.caught = threading.Event()
        self._proxy = proxy
        self._open = False
        self._connections: list[_Connection] = []

    def matches(self, data: bytes) -> bool:
        return not self._open and data.startswith(self.prefix)

    def hold(self, conn: _Connection) -> None:
        self._connections.append(conn)
        self.caught.set()

    def wait(self, timeout: float = 30.0) -> None:
        if not self.caught.wait(timeout):
            raise AssertionError(f"no {self.prefix.decode()} request reached the proxy within {timeout:g}s")

    def open(self) -> None:
        """Let the held requests (and every later one) through."""
        with self._proxy.lock:
            self._open = True
            connections, self._connections = self._connections, []
        for conn in connections:
            with conn.lock:
                try:
                    for chunk in conn.held:
                        conn.upstream.sendall(chunk)
                except OSError:
                    conn.close()
                conn.held.clear()
                conn.held_by = None

    def drop(self) -> None:
        """Close the held connections: their requests never arrive."""
        with self._proxy.lock:
            self._open = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


class LoopbackProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._gates: list[Gate] = []
        self._partitioned = False
        self.dropped_requests = 0
        self.requests: list[str] = []
        self._connections: set[_Connection] = set()
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def gate(self, prefix: str | bytes) -> Gate:
        gate = Gate(self, prefix.encode() if isinstance(prefix, str) else prefix)
        with self.lock:
            self._gates.append(gate)
        return gate

    def partition(self) -> None:
        with self.lock:
            self._partitioned = True

    def heal(self) -> None:
        with self.lock:
            self._partitioned = False

    def reset(self) -> None:
        """Back to a plain pipe: no gates, no partition (held requests are dropped)."""
        with self.lock:
            gates, self._gates = self._gates, []
            self._partitioned = False
        for gate in gates:
            gate.drop()

    def close(self) -> None:
        with self.lock:
            self._closed = True
            connections = list(self._connections)
        try:  # close() alone leaves a socket blocked in accept() listening: shutdown wakes it
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in connections:
            conn.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the agent is down: the client sees the connection end
                continue
            conn = _Connection(client, upstream)
            with self.lock:
                if self._closed:
                    conn.close()
                    return
                self._connections.add(conn)
            threading.Thread(target=self._to_upstream, args=(conn,), daemon=True).start()
            threading.Thread(target=self._to_client, args=(conn,), daemon=True).start()

    def _to_upstream(self, conn: _Connection) -> None:
        try:
            while data := conn.client.recv(65536):
                with self.lock:
                    if data.startswith(HTTP_METHODS):
                        self.requests.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                    if self._partitioned:
                        self.dropped_requests += data.startswith(HTTP_METHODS)
                        continue
                    gate = None if conn.held_by else next((g for g in self._gates if g.matches(data)), None)
                    if gate is not None:
                        conn.held_by = gate
                        gate.hold(conn)
                with conn.lock:
                    if conn.held_by is not None:
                        conn.held.append(data)
                        continue
                    conn.upstream.sendall(data)
        except OSError:
            pass
        self._forget(conn)

    def _to_client(self, conn: _Connection) -> None:
        try:
            while data := conn.upstream.recv(65536):
                with self.lock:
                    if self._partitioned:
                        continue
                conn.client.sendall(data)
        except OSError:
            pass
        self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        with conn.lock:
            if conn.held_by is not None:
                return  # a held request outlives its client: the gate decides what happens to it
        with self.lock:
            self._connections.discard(conn)
        conn.close()
