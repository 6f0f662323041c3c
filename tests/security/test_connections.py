"""Connections to the agent: past the bound per address, the oldest connection that has no whole request
under way makes room, never one being answered or one that carried the agent's token."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import uvicorn

from node_agent.app import create_app
from node_agent.engines.sqlite import SqliteEngine, SqliteSettings
from node_agent.ratelimit import MAX_CONNECTIONS_PER_CLIENT, guarded_http
from node_agent.service import AgentService
from tests.agent.conftest import TOKEN, agent_process, make_db, try_write, write_config
from tests.security.test_limits import _closed_within, serve_server

HOLDER = {"Authorization": f"Bearer {TOKEN}"}


def half_sent(host: str, port: int) -> socket.socket:
    """A connection that sends the start of a request head and stalls: needs no token."""
    sock = socket.create_connection((host, port))
    sock.sendall(b"POST /v1/renew HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return sock


def keep_alive_request(sock: socket.socket, path: str, headers: dict[str, str] | None = None) -> bytes:
    """One GET on ``sock``, left open after the answer; returns the answer's status line."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return keep_alive_answer(sock).split(b"\r\n")[0]


def keep_alive_answer(sock: socket.socket) -> bytes:
    """Read one answer (its length given) from ``sock``, leaving it open; returns the answer's head."""
    sock.settimeout(10)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, f"closed before answering: {answer!r}"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def renew_and_complete_past_squatters(url: str, db: Path, squatter: Callable[[str, int], socket.socket],
                                      headers: dict[str, str]) -> None:
    """Prepare, fill the connection bound from the holder's address with ``squatter``'s connections,
    then renew and complete, each on a connection of its own (as snapctl's after a pause): each
    closes the oldest squatting one, and the holder's calls go through."""
    host, port = url.split("//")[1].split(":")
    assert httpx.post(url + "/v1/prepare", headers=headers, json={"run_id": "r1", "lease_s": 600}).status_code == 200
    squat = [squatter(host, int(port)) for _ in range(MAX_CONNECTIONS_PER_CLIENT)]
    time.sleep(0.2)  # all of them counted
    assert httpx.post(url + "/v1/renew", headers=headers, json={"run_id": "r1"}).status_code == 200
    assert not try_write(db)  # still held, as the renew said
    squat.append(squatter(host, int(port)))  # the squatter fills the bound again
    time.sleep(0.2)
    completed = httpx.post(url + "/v1/complete", headers=headers, json={"run_id": "r1"})
    assert completed.status_code == 200 and completed.json()["released"] is True
    assert _closed_within(squat[0], 5) and _closed_within(squat[1], 5)
    assert not _closed_within(squat[-1], 0.2)
    for sock in squat:
        sock.close()


def test_half_sent_connections_from_the_holders_address_cannot_refuse_its_renew_and_complete(tmp_path: Path) -> None:
    # The 33rd connection from an address was closed at once, whoever's: anyone without a token
    # could hold 32 half-sent requests from snapctl's address (on loopback: any local user), and
    # snapctl's renew and complete were refused until its lease ran out mid-backup.
    db = make_db(tmp_path / "data.db")
    with agent_process(write_config(tmp_path, db)) as agent:
        renew_and_complete_past_squatters(agent.url, db, half_sent, HOLDER)
    assert try_write(db)
    warnings = [line.split(" WARNING snapctl.agent: ", 1)[1] for line in agent.log.splitlines() if " WARNING " in line]
    assert warnings == [f"more than {MAX_CONNECTIONS_PER_CLIENT} connections open at once from 127.0.0.1: closing "
                        "the oldest without a request under way or the agent's token (else the new one) for each "
                        "one beyond"]


def body_trickling(host: str, port: int) -> socket.socket:
    """A connection that sends a whole request head and the first byte of its body, then stalls:
    a token-less agent waits for the rest."""
    sock = socket.create_connection((host, port))
    sock.sendall(b"POST /v1/renew HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 200\r\n\r\n{")
    return sock


def test_bodies_trickling_in_from_the_holders_address_cannot_refuse_its_renew_on_a_tokenless_agent(
        tmp_path: Path) -> None:
    # A request whose head had arrived counted as under way while its body trickled in: on an
    # agent without a token (loopback), 32 of them from snapctl's address were never closed to
    # make room, and the holder's renews were refused (a reviewer: 0 of 27 got through in 6 s).
    db = make_db(tmp_path / "data.db")
    with agent_process(write_config(tmp_path, db, token=None)) as agent:
        renew_and_complete_past_squatters(agent.url, db, body_trickling, {})
    assert try_write(db)


def test_only_connections_without_a_request_under_way_or_the_token_make_room(tmp_path: Path) -> None:
    db = make_db(tmp_path / "data.db")
    service = AgentService("n1", SqliteEngine(SqliteSettings(path=db.name, timeout_s=2), base_dir=tmp_path))
    server = uvicorn.Server(uvicorn.Config(create_app(service, TOKEN), host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off", timeout_keep_alive=60,
                                           http=guarded_http(request_timeout_s=30, max_per_client=4)))
    try:
        with serve_server(server) as (host, port):
            # A prepare waiting for its hold_at is being answered: it is never closed to make room.
            hold_at = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
            prepared: list[httpx.Response] = []
            waiting = threading.Thread(target=lambda: prepared.append(httpx.post(
                f"http://{host}:{port}/v1/prepare", headers=HOLDER, timeout=20,
                json={"run_id": "r1", "lease_s": 30, "hold_at": hold_at})))
            waiting.start()
            time.sleep(0.5)
            # An idle connection that carried the token is the holder's: never closed to make room.
            holders = socket.create_connection((host, port))
            assert keep_alive_request(holders, "/v1/status", HOLDER) == b"HTTP/1.1 200 OK"
            # One that was refused the token (wrong) makes room like one that never sent anything.
            guesser = socket.create_connection((host, port))
            assert keep_alive_request(guesser, "/v1/status", {"Authorization": "Bearer guess"}).startswith(
                b"HTTP/1.1 401")
            silent = socket.create_connection((host, port))
            time.sleep(0.2)
            newcomer = half_sent(host, port)  # the 5th: the oldest that may make room is the guesser's
            assert _closed_within(guesser, 2)
            assert not _closed_within(silent, 0.2) and not _closed_within(newcomer, 0.2)
            another = socket.create_connection((host, port))  # then the silent one
            assert _closed_within(silent, 2)
            assert keep_alive_request(holders, "/v1/status", HOLDER) == b"HTTP/1.1 200 OK"
            waiting.join(timeout=20)
            assert [p.status_code for p in prepared] == [200]
            assert service.complete("r1").released
            # When every other connection is the holder's or under way, the new one is closed instead.
            newcomer.close()
            another.close()
            more = [socket.create_connection((host, port)) for _ in range(3)]
            for sock in more:
                assert keep_alive_request(sock, "/v1/status", HOLDER) == b"HTTP/1.1 200 OK"
            refused = socket.create_connection((host, port))
            assert _closed_within(refused, 2)
            assert keep_alive_request(more[0], "/v1/status", HOLDER) == b"HTTP/1.1 200 OK"
            for sock in (holders, *more):
                sock.close()
    finally:
        service.close()


def test_a_holders_request_whose_body_is_still_arriving_is_not_closed_to_make_room(tmp_path: Path) -> None:
    db = make_db(tmp_path / "data.db")
    service = AgentService("n1", SqliteEngine(SqliteSettings(path=db.name, timeout_s=2), base_dir=tmp_path))
    server = uvicorn.Server(uvicorn.Config(create_app(service, TOKEN), host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off", http=guarded_http(request_timeout_s=30, max_per_client=2)))
    try:
        with serve_server(server) as (host, port):
            holders = socket.create_connection((host, port))
            body = b'{"run_id": "r1"}'
            head = (f"POST /v1/renew HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
            holders.sendall(head.encode() + body[:1])
            silent = socket.create_connection((host, port))
            time.sleep(0.2)
            # The 3rd: the token's request is the holder's, so the silent one goes.
            newcomer = body_trickling(host, port)
            assert _closed_within(silent, 2) and not _closed_within(holders, 0.2)
            holders.sendall(body[1:])
            assert keep_alive_answer(holders).split(b"\r\n")[0] == b"HTTP/1.1 409 Conflict"  # no run holds
            for sock in (holders, newcomer):
                sock.close()
    finally:
        service.close()


def answered_while_streaming(url: str, head: str, seconds: float = 6.0) -> tuple[bytes, float | None]:
    """Send ``head`` (a request head announcing a chunked body), then stream the body for up to
    ``seconds`` reading meanwhile: (the answer's head, seconds from it until the agent closed the
    connection; None if it had not by then)."""
    host, port = url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(head.encode())
    sock.setblocking(False)
    chunk = b"1000\r\n" + b" " * 4096 + b"\r\n"
    answer, answered_at, start = b"", None, time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            readable, writable, _ = select.select([sock], [sock], [], 0.1)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    return answer.partition(b"\r\n\r\n")[0], time.monotonic() - (answered_at or start)
                answer += data
                if answered_at is None and b"\r\n\r\n" in answer:
                    answered_at = time.monotonic()
            if writable:
                with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                    sock.send(chunk)
        return answer.partition(b"\r\n\r\n")[0], None
    finally:
        sock.close()


def chunked(path: str, *headers: str, host: str = "127.0.0.1") -> str:
    return "\r\n".join([f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
                        "Transfer-Encoding: chunked", *headers]) + "\r\n\r\n"


def test_an_answer_sent_before_the_body_arrived_closes_the_connection(tmp_path: Path) -> None:
    # After a 401 (413, 429, 421) decided on the head alone, uvicorn read and threw away the rest
    # of the body for the 10 s request timeout, a full core per connection: a reviewer streamed
    # 7 GB into one 401, with no token.
    config = write_config(tmp_path, make_db(tmp_path / "data.db"), extra="rate_per_s: 0.01\nburst: 5\n")
    auth = f"Authorization: Bearer {TOKEN}"
    with agent_process(config) as agent:
        for head, status in [
            (chunked("/v1/prepare"), b"401"),
            (chunked("/v1/prepare", auth).replace("Transfer-Encoding: chunked", "Content-Length: 10000000"), b"413"),
        ]:
            answer, closed_after = answered_while_streaming(agent.url, head)
            assert answer.split(b" ")[1] == status and b"connection: close" in answer.lower(), answer
            assert closed_after is not None and closed_after < 2, (status, closed_after)
        for _ in range(5):
            httpx.post(agent.url + "/v1/renew", headers={"Authorization": "Bearer guess"}, json={"run_id": "r1"})
        answer, closed_after = answered_while_streaming(agent.url, chunked("/v1/renew"))
        assert answer.split(b" ")[1] == b"429" and closed_after is not None and closed_after < 2, answer
        # A body read whole keeps its connection for the next request, whatever the answer.
        host, port = agent.url.split("//")[1].split(":")
        with socket.create_connection((host, int(port))) as sock:
            for _ in range(2):
                sock.sendall(b"POST /v1/complete HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             + auth.encode() + b"\r\nContent-Length: 2\r\n\r\n{}")
                head = keep_alive_answer(sock)
                assert head.startswith(b"HTTP/1.1 422") and b"connection:" not in head.lower(), head
            assert keep_alive_request(sock, "/v1/status", HOLDER) == b"HTTP/1.1 200 OK"
    tokenless = tmp_path / "tokenless"
    tokenless.mkdir()
    with agent_process(write_config(tokenless, make_db(tokenless / "data.db"), token=None)) as agent:
        answer, closed_after = answered_while_streaming(agent.url, chunked("/v1/prepare", host="evil.example"))
        assert answer.split(b" ")[1] == b"421" and closed_after is not None and closed_after < 2, answer
