"""The lean agent transport against real HTTP servers on loopback: keep-alive reuse, a connection
the server closed meanwhile, chunked and close-delimited bodies, its two error types, and all of
it over TLS, where an agent is trusted only by the CA it is given."""

from __future__ import annotations

import asyncio
import json
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapctl.agent_transport import AgentResponse, AgentTransport, TransportError, TransportTimeout
from tests.agent.certs import make_pki


class RawServer:
    """A loopback HTTP server answering each request with ``answer(n)`` bytes; counts connections."""

    def __init__(self, answer, *, close_after_each: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.answer, self.close_after_each, self.tls = answer, close_after_each, tls
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests = 0
        self.bodies: list[bytes] = []
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _handle(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):  # the client gave up on the handshake: nothing was asked
                conn.close()
                return
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                self.bodies.append(buffer[:length])
                buffer = buffer[length:]
                self.requests += 1
                conn.sendall(self.answer(self.requests))
                if self.close_after_each:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server_factory() -> Iterator:
    servers: list[RawServer] = []

    def make(answer, **kwargs) -> RawServer:
        servers.append(RawServer(answer, **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def json_answer(_n: int) -> bytes:
    body = b'{"ok": true}'
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def calls(port: int, count: int, transport: AgentTransport, scheme: str = "http",
                **request) -> list[AgentResponse]:
    try:
        return [await transport.call(request.get("method", "GET"), f"{scheme}://127.0.0.1:{port}/v1/status",
                                     request.get("json"), {}, 2) for _ in range(count)]
    finally:
        await transport.aclose()


def test_keeps_one_connection_alive_across_calls(server_factory) -> None:
    server = server_factory(json_answer)
    responses = asyncio.run(calls(server.port, 5, AgentTransport()))
    assert [r.json() for r in responses] == [{"ok": True}] * 5
    assert server.connections == 1 and server.requests == 5


def test_sends_the_json_body_and_its_length(server_factory) -> None:
    server = server_factory(json_answer)
    asyncio.run(calls(server.port, 1, AgentTransport(), method="POST", json={"run_id": "r1", "lease_s": 30}))
    assert [json.loads(body) for body in server.bodies] == [{"run_id": "r1", "lease_s": 30}]


def test_a_connection_the_server_closed_is_replaced(server_factory) -> None:
    server = server_factory(json_answer, close_after_each=True)
    responses = asyncio.run(calls(server.port, 3, AgentTransport()))
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert server.connections == 3


def test_chunked_and_close_delimited_bodies(server_factory) -> None:
    chunked = server_factory(lambda _n: b"HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n\r\n"
                                        b"6\r\n{\"a\": \r\n2\r\n1}\r\n0\r\n\r\n")
    until_close = server_factory(lambda _n: b"HTTP/1.1 200 OK\r\n\r\n[1, 2]", close_after_each=True)
    [first] = asyncio.run(calls(chunked.port, 1, AgentTransport()))
    assert first.status_code == 409 and first.json() == {"a": 1}
    [second] = asyncio.run(calls(until_close.port, 1, AgentTransport()))
    assert second.json() == [1, 2]


def test_errors_are_a_timeout_or_a_transport_error(server_factory) -> None:
    silent = server_factory(lambda _n: b"")  # reads the request, never answers
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_port = unused.getsockname()[1]
    with pytest.raises(TransportError) as refused:
        asyncio.run(calls(dead_port, 1, AgentTransport()))
    assert not isinstance(refused.value, TransportTimeout) and "refused" in str(refused.value).lower()

    with pytest.raises(TransportTimeout, match="did not answer in time"):
        asyncio.run(AgentTransport().call("GET", f"http://127.0.0.1:{silent.port}/v1/status", None, {}, 0.2))


class PausedAfterAPoll(selectors.DefaultSelector):
    """The event loop's selector, stopped once right after a poll that saw nothing: as when SIGSTOP
    (a control host paused, swapped out) lands between asyncio's poll and its timers. Whatever
    arrives meanwhile is seen only by the next poll, and the timers due by then run first."""

    def __init__(self, pause_s: float) -> None:
        super().__init__()
        self.pause_s, self.armed, self.paused = pause_s, False, False

    def select(self, timeout=None):
        events = super().select(timeout)
        if self.armed and not events:
            self.armed, self.paused = False, True
            time.sleep(self.pause_s)
        return events


def test_an_answer_that_came_while_the_process_was_paused_is_read_not_timed_out(server_factory) -> None:
    server = server_factory(lambda n: (time.sleep(0.2), json_answer(n))[1])  # answers 0.2 s after the request
    selector = PausedAfterAPoll(pause_s=1.0)  # past the call's 0.5 s deadline

    async def paused_call() -> AgentResponse:
        transport = AgentTransport()
        call = asyncio.ensure_future(transport.call("GET", f"http://127.0.0.1:{server.port}/v1/status", None, {}, 0.5))
        await asyncio.sleep(0.05)  # the request is out; its answer is 0.15 s away
        selector.armed = True
        asyncio.get_running_loop().call_later(0.01, lambda: None)  # a poll that returns with nothing
        try:
            return await call
        finally:
            await transport.aclose()

    loop = asyncio.SelectorEventLoop(selector)
    try:
        response = loop.run_until_complete(paused_call())
    finally:
        loop.close()
    assert selector.paused and server.requests == 1
    assert response.json() == {"ok": True}


def test_call_sends_json_with_its_headers_and_reuses_the_connection(server_factory) -> None:
    server = server_factory(json_answer)
    transport = AgentTransport()
    url = f"http://127.0.0.1:{server.port}/v1/prepare"

    async def two_calls() -> list[AgentResponse]:
        try:
            return [await transport.call("POST", url, {"run_id": "r1", "lease_s": 30}, {"Authorization": "Bearer t"}, 2),
                    await transport.call("POST", url, None, {}, 2)]
        finally:
            await transport.aclose()

    first, second = asyncio.run(two_calls())
    assert first.status_code == 200 and first.json() == {"ok": True} and second.is_success
    assert [json.loads(body) if body else None for body in server.bodies] == [{"run_id": "r1", "lease_s": 30}, None]
    assert server.connections == 1


def test_call_to_a_dead_port_is_a_connect_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(TransportError):
        asyncio.run(AgentTransport().call("GET", f"http://127.0.0.1:{port}/v1/status", None, {}, 2))


def _tls_server(server_factory, pki_dir: Path) -> tuple[RawServer, Path]:
    pki = make_pki(pki_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    return server_factory(json_answer, tls=context), pki.ca


def test_over_tls_one_connection_stays_alive_across_calls(server_factory, tmp_path) -> None:
    server, ca = _tls_server(server_factory, tmp_path / "pki")
    transport = AgentTransport(ssl.create_default_context(cafile=str(ca)))
    responses = asyncio.run(calls(server.port, 5, transport, scheme="https", method="POST", json={"run_id": "r1"}))
    assert [r.json() for r in responses] == [{"ok": True}] * 5
    assert [json.loads(body) for body in server.bodies] == [{"run_id": "r1"}] * 5
    assert server.connections == 1 and server.requests == 5


def test_over_tls_an_agent_another_ca_signed_is_refused_before_any_request(server_factory, tmp_path) -> None:
    server, _ = _tls_server(server_factory, tmp_path / "pki")
    rogue = make_pki(tmp_path / "rogue")
    with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED") as refused:
        asyncio.run(calls(server.port, 1, AgentTransport(ssl.create_default_context(cafile=str(rogue.ca))),
                          scheme="https"))
    assert not isinstance(refused.value, TransportTimeout)
    assert server.requests == 0


def test_an_agent_gone_from_every_address_of_its_name_is_seen_gone() -> None:
    """A name with two addresses (localhost: ::1 and 127.0.0.1) whose connects are all refused is
    an agent gone; asyncio's one connect to the name failed with "Multiple exceptions", no longer a
    refusal, and a killed agent was reported as a tls one. One address listening is no agent gone."""
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens on 127.0.0.1 nor on 127.0.0.2 at that port (both loopback)
    listening = socket.create_server(("127.0.0.2", 0))

    async def probe(name: str, at: int) -> bool:
        loop = asyncio.get_running_loop()

        async def two_addresses(host: str, p: int, *args: object, **kwargs: object) -> list:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", p))]

        loop.getaddrinfo = two_addresses  # type: ignore[method-assign]
        return await AgentTransport._refused(name, at, None)

    try:
        assert asyncio.run(probe("agent.example", port))
        assert not asyncio.run(probe("agent.example", listening.getsockname()[1]))
    finally:
        listening.close()
