"""Requests to the agent are bounded: body size (413, declared or streamed), header size, and a
request rate per client and endpoint (429 with Retry-After)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import uvicorn

from node_agent.app import create_app
from node_agent.engines.sqlite import SqliteEngine, SqliteSettings
from node_agent.ratelimit import DEFAULT_BURST, DEFAULT_RATE_PER_S, ClientRateLimit
from node_agent.service import AgentService
from tests.agent.conftest import TOKEN as AGENT_TOKEN
from tests.agent.conftest import agent_process, make_db, try_write, wait_until, write_config
from tests.faults.harness import TOKEN, FaultCluster, create_db
from tests.security.conftest import serve

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 64 * 1024  # the agent's default max_body_bytes


def test_oversized_bodies_and_headers_are_refused_and_the_agent_carries_on(solo: FaultCluster) -> None:
    url = solo.url("solo")
    declared = httpx.post(url + "/v1/prepare", headers={**AUTH, "Content-Type": "application/json"},
                          content=b'{"run_id": "' + b"a" * (1024 * 1024) + b'", "lease_s": 60}')
    assert declared.status_code == 413
    assert declared.json()["error"] == f"request body larger than {LIMIT} bytes"

    def stream():
        yield b'{"run_id": "'
        for _ in range(64):
            yield b"b" * 16384
        yield b'", "lease_s": 60}'

    streamed = httpx.post(url + "/v1/prepare", headers={**AUTH, "Content-Type": "application/json"}, content=stream())
    assert streamed.status_code == 413  # no Content-Length: counted as it arrives

    at_the_limit = httpx.post(url + "/v1/prepare", headers={**AUTH, "Content-Type": "application/json"},
                              content=b"[" + b" " * (LIMIT - 2) + b"]")
    assert at_the_limit.status_code == 422  # within the limit: read, then refused for what it says

    try:
        huge_header = httpx.get(url + "/v1/status", headers={**AUTH, "X-Padding": "p" * (256 * 1024)}, timeout=10)
        assert 400 <= huge_header.status_code < 500
    except (httpx.RemoteProtocolError, httpx.ReadError):
        pass  # or the server drops the connection: either way it is not served

    assert solo.agents["solo"].proc.poll() is None
    assert httpx.get(url + "/v1/health").status_code == 200
    assert solo.lease("solo") is None


@pytest.fixture
def service(tmp_path: Path):
    create_db(tmp_path / "db.sqlite")
    service = AgentService("n1", SqliteEngine(SqliteSettings(path="db.sqlite", timeout_s=2), base_dir=tmp_path))
    yield service
    service.close()


def test_the_agent_limits_every_client_by_default(service: AgentService) -> None:
    guess, renew = {"Authorization": "Bearer guess"}, {"run_id": "r1"}
    with serve(create_app(service, TOKEN)) as url, httpx.Client(base_url=url) as client:  # what snapctl-agent serves
        assert client.post("/v1/renew", headers=AUTH, json=renew).status_code == 409  # its token: a holder now
        started, codes = time.monotonic(), []
        while not codes or codes[-1] != 429 and len(codes) < 10 * DEFAULT_BURST:
            refused = client.post("/v1/renew", headers=guess, json=renew)
            codes.append(refused.status_code)
        elapsed = time.monotonic() - started
        # Wrong tokens are charged (the limit is outside the token check): the burst, less the
        # holder's first request (charged to the address before its token was known), and what the
        # rate refilled meanwhile, then 429.
        assert set(codes[:-1]) == {401} and codes[-1] == 429, codes
        served = len(codes) - 1
        assert DEFAULT_BURST - 1 <= served <= DEFAULT_BURST + elapsed * DEFAULT_RATE_PER_S + 1, (served, elapsed)
        # Its 429 closes the connection, the body unread (that middleware is outside the limit).
        assert refused.headers["connection"] == "close"
        # The holder's own requests from the same address are counted apart from the guesses.
        assert client.post("/v1/renew", headers=AUTH, json=renew).status_code == 409
        time.sleep(3 / DEFAULT_RATE_PER_S)  # refilled at the rate: three guesses' worth
        assert client.post("/v1/renew", headers=guess, json=renew).status_code == 401
    assert "429" in create_app(service, TOKEN).openapi()["paths"]["/v1/prepare"]["post"]["responses"]


def test_over_the_rate_a_client_gets_429_on_that_endpoint_only(service: AgentService) -> None:
    with serve(create_app(service, TOKEN, rate_per_s=1, burst=5)) as url:
        with httpx.Client(base_url=url, headers=AUTH) as client:
            codes = [client.post("/v1/renew", json={"run_id": "r1"}).status_code for _ in range(12)]
            assert codes[:5] == [409] * 5 and set(codes[5:]) <= {409, 429} and codes[-1] == 429
            refused = client.post("/v1/renew", json={"run_id": "r1"})
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"].startswith("too many requests from 127.0.0.1 to /v1/renew")
            # Other endpoints of the same client, health, and other clients are not held back.
            assert client.get("/v1/status").status_code == 200
            assert all(client.get("/v1/health").status_code == 200 for _ in range(20))
        other = httpx.Client(base_url=url, headers=AUTH, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with other:
            assert other.post("/v1/renew", json={"run_id": "r1"}).status_code == 409
        time.sleep(int(refused.headers["retry-after"]) + 0.1)
        assert httpx.post(url + "/v1/renew", headers=AUTH, json={"run_id": "r1"}).status_code == 409


def test_requests_refused_before_reaching_the_engine_are_not_charged(service: AgentService) -> None:
    app = create_app(service, TOKEN, rate_per_s=1, burst=3)
    with serve(app) as url, httpx.Client(base_url=url, headers=AUTH) as client:
        assert {client.post("/v1/prepare", json={"run_id": "../x"}).status_code for _ in range(20)} == {422}
        prepared = client.post("/v1/prepare", json={"run_id": "r1", "lease_s": 30})
        assert prepared.status_code == 200
        assert client.post("/v1/complete", json={"run_id": "r1"}).json()["released"] is True
        # Wrong tokens are charged: guessing costs.
        codes = [client.post("/v1/prepare", headers={"Authorization": "Bearer guess"},
                             json={"run_id": "r2", "lease_s": 30}).status_code for _ in range(5)]
        assert codes[:2] == [401, 401] and codes[-1] == 429


def slow_agent_config(tmp_path: Path, extra: str = "") -> Path:
    """A real agent whose bucket refills so slowly (one request per 100 s) that no test outruns it."""
    return write_config(tmp_path, make_db(tmp_path / "data.db"), extra="rate_per_s: 0.01\nburst: 5\n" + extra)


@pytest.mark.parametrize("path", ["/v1/complete", "/v1/renew"])
def test_a_flood_of_wrong_tokens_does_not_lock_the_holder_out(tmp_path: Path, path: str) -> None:
    holder = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    with agent_process(slow_agent_config(tmp_path)) as agent, httpx.Client(base_url=agent.url) as client:
        assert client.post("/v1/prepare", headers=holder, json={"run_id": "r1", "lease_s": 600}).status_code == 200
        flood = [client.post(path, headers=headers, json={"run_id": "r1"})
                 for headers in [{"Authorization": "Bearer nope"}, {}] * 5]
        # Guessing still costs: past the burst, wrong and missing tokens share one bucket and get 429.
        assert [r.status_code for r in flood] == [401] * 5 + [429] * 5
        # The holder's own budget is untouched: it renews and completes, and the database is free.
        assert client.post("/v1/renew", headers=holder, json={"run_id": "r1"}).status_code == 200
        completed = client.post("/v1/complete", headers=holder, json={"run_id": "r1"})
        assert completed.status_code == 200 and completed.json()["released"] is True
        # ...and that budget is still limited on its own.
        codes = [client.post(path, headers=holder, json={"run_id": "r1"}).status_code for _ in range(6)]
        assert codes[-1] == 429 and 429 not in codes[:3]


def test_a_right_guess_over_the_budget_is_refused_like_a_wrong_one(tmp_path: Path) -> None:
    right = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    with agent_process(slow_agent_config(tmp_path)) as agent:
        def client(address: str) -> httpx.Client:
            return httpx.Client(base_url=agent.url, transport=httpx.HTTPTransport(local_address=address))

        # An address the token was never accepted from: once its guesses have spent the budget, the
        # right token gets the same 429 as a wrong one, so a guesser cannot tell a right guess by it.
        with client("127.0.0.2") as guesser:
            codes = [guesser.get("/v1/status", headers={"Authorization": f"Bearer guess-{i}"}).status_code
                     for i in range(6)]
            assert codes == [401] * 5 + [429]
            wrong = guesser.get("/v1/status", headers={"Authorization": "Bearer x"})
            right_guess = guesser.get("/v1/status", headers=right)
            assert (right_guess.status_code, right_guess.json()) == (wrong.status_code, wrong.json())
            assert right_guess.status_code == 429
        # An address the token was accepted from (a holder) keeps a budget of its own.
        with client("127.0.0.3") as holder:
            assert holder.get("/v1/status", headers=right).status_code == 200
            codes = [holder.get("/v1/status", headers={"Authorization": "Bearer nope"}).status_code for _ in range(6)]
            assert codes == [401] * 4 + [429] * 2  # the first right token came out of the shared budget
            assert holder.get("/v1/status", headers=right).status_code == 200
    assert try_write(tmp_path / "data.db")


def test_metrics_is_rate_limited_like_every_endpoint(tmp_path: Path) -> None:
    (tmp_path / "scrape.token").write_text("scraper-only-t0ken\n")
    (tmp_path / "scrape.token").chmod(0o600)
    config = slow_agent_config(tmp_path, "metrics_token_file: scrape.token\n")
    with agent_process(config) as agent, httpx.Client(base_url=agent.url) as client:
        def scrape(token: str) -> int:
            return client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code

        assert scrape("scraper-only-t0ken") == 200 and scrape(AGENT_TOKEN) == 200  # both accepted from here now
        # Guesses at either token are charged on /metrics too...
        assert [scrape(f"guess-{i}") for i in range(5)] == [401] * 3 + [429] * 2
        # ...and scrapes, each of which asks the engine for its status, are bounded (but not by the guesses).
        assert [scrape("scraper-only-t0ken") for _ in range(6)] == [200] * 5 + [429]
        assert [scrape(AGENT_TOKEN) for _ in range(6)] == [200] * 5 + [429]


def test_a_flood_is_logged_summed_up_not_line_by_line(tmp_path: Path) -> None:
    with agent_process(slow_agent_config(tmp_path)) as agent, httpx.Client(base_url=agent.url) as client:
        codes = [client.post("/v1/complete", headers={"Authorization": "Bearer nope"}, json={"run_id": "r1"})
                 .status_code for _ in range(40)]
    assert codes == [401] * 5 + [429] * 35
    log = agent.log.splitlines()
    assert sum('"POST /v1/complete HTTP/1.1" 401' in line for line in log) == 5  # what was answered is logged...
    assert not [line for line in log if " 429" in line]  # ...but not each refusal: one line says they began
    assert [line.split("WARNING snapctl.agent: ")[1] for line in log if "refusing requests" in line] == [
        "refusing requests from 127.0.0.1 to /v1/complete (wrong or no token, or one not yet accepted from there): "
        "more than 5 at once or 0.01 per second (429); further refusals are counted and logged every 10s"
    ]


def test_refusals_after_the_first_are_logged_as_a_count(caplog: pytest.LogCaptureFixture) -> None:
    async def ok(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "snapctl.agent"]

    def accounted() -> int:  # every refusal is in the log: one line each that begins a run, the rest counted
        lines = logged()
        return (sum(line.startswith("refusing ") for line in lines)
                + sum(int(line.split()[1]) for line in lines if line.startswith("refused ")))

    caplog.set_level("WARNING", logger="snapctl.agent")
    with serve(ClientRateLimit(ok, rate_per_s=0.01, burst=2, report_every_s=0.5)) as url, httpx.Client() as client:
        assert [client.get(url + "/v1/status").status_code for _ in range(30)] == [200] * 2 + [429] * 28
        wait_until(lambda: accounted() == 28, what="every refusal to be logged")
    assert logged()[0] == ("refusing requests from 127.0.0.1 to /v1/status: more than 2 at once or 0.01 per second "
                           "(429); further refusals are counted and logged every 0.5s")
    assert re.fullmatch(r"refused \d+ more requests? from 127\.0\.0\.1 to /v1/status in the last 0\.5s", logged()[-1])


def test_guesses_spread_over_paths_that_are_no_endpoint_share_one_budget(service: AgentService) -> None:
    # Were each unknown path its own bucket, a guesser could send every guess to a new one (a wrong
    # token gets 401, a right one 404) and never be limited.
    with serve(create_app(service, TOKEN, rate_per_s=0.01, burst=3)) as url, httpx.Client(base_url=url) as client:
        codes = [client.get(f"/v1/status-{i}", headers={"Authorization": f"Bearer guess-{i}"}).status_code
                 for i in range(6)]
        assert codes == [401] * 3 + [429] * 3
        right = client.get("/v1/status-99", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 429
        assert right.json()["error"].startswith("too many requests from 127.0.0.1 to paths that are no endpoint")
        # The endpoints keep budgets of their own.
        assert client.get("/v1/status", headers=AUTH).status_code == 200


@contextmanager
def serve_server(server: uvicorn.Server) -> Iterator[tuple[str, int]]:
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, what="uvicorn to start")
        yield server.servers[0].sockets[0].getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True  # reset: closed too


def test_half_sent_requests_are_timed_out_and_connections_per_client_bounded(service: AgentService) -> None:
    # uvicorn waited for a request's headers for ever: connections that sent half a request, from
    # anyone (no token needed), ran the agent out of file descriptors and snapctl could not connect.
    from node_agent.ratelimit import guarded_http

    app = create_app(service, TOKEN)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                                           http=guarded_http(request_timeout_s=1.0, max_per_client=4)))
    with serve_server(server) as (host, port):
        half = socket.create_connection((host, port))
        half.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
        silent = socket.create_connection((host, port))
        assert _closed_within(half, 5) and _closed_within(silent, 5)
        # A request the app is answering is not timed out: a prepare waiting for its hold_at.
        hold_at = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
        prepared = httpx.post(f"http://{host}:{port}/v1/prepare", headers=AUTH, timeout=10,
                              json={"run_id": "r1", "lease_s": 30, "hold_at": hold_at})
        assert prepared.status_code == 200
        assert service.complete("r1").released
        # At most 4 connections open at once from one address: the 5th closes the oldest that has no
        # request under way (the rest in test_connections.py), at once, not at the request timeout.
        held = [socket.create_connection((host, port)) for _ in range(4)]
        extra = socket.create_connection((host, port))
        assert _closed_within(held[0], 0.8)
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with other:
            assert other.get(f"http://{host}:{port}/v1/status", headers=AUTH).status_code == 200
        for sock in (*held, extra):
            sock.close()
        time.sleep(0.2)
        assert httpx.get(f"http://{host}:{port}/v1/status", headers=AUTH).status_code == 200


def test_the_agent_process_bounds_connections_per_client(tmp_path: Path) -> None:
    from node_agent.ratelimit import MAX_CONNECTIONS_PER_CLIENT

    with agent_process(write_config(tmp_path, make_db(tmp_path / "data.db"))) as agent:
        host, port = agent.url.split("//")[1].split(":")
        held = [socket.create_connection((host, int(port))) for _ in range(MAX_CONNECTIONS_PER_CLIENT)]
        extra = socket.create_connection((host, int(port)))
        assert _closed_within(held[0], 5)  # the oldest makes room (test_connections.py)
        assert not _closed_within(extra, 0.5) and not _closed_within(held[1], 0.05)
        for sock in held:
            sock.close()
        wait_until(lambda: httpx.get(agent.url + "/v1/status", headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
                   .status_code == 200, what="the agent to serve again")


def test_a_stalled_tls_handshake_is_timed_out_like_a_half_sent_request(tmp_path: Path, service: AgentService) -> None:
    # uvicorn did TLS before the protocol saw a connection: one that never finished its handshake
    # was held for asyncio's 60 s, whatever the agent's own request timeout.
    from node_agent.ratelimit import guarded_http
    from tests.agent.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(pki.server_cert, pki.server_key)
    client_tls = ssl.create_default_context(cafile=str(pki.ca))
    server = uvicorn.Server(uvicorn.Config(create_app(service, TOKEN), host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off", loop="asyncio",  # as the agent runs it with TLS
                                           http=guarded_http(request_timeout_s=3.0, tls=server_tls)))
    # 3 s, not less: each handshake below must finish within it while the whole suite loads the machine.
    with serve_server(server) as (host, port):
        url = f"https://{host}:{port}/v1/status"
        assert httpx.get(url, headers=AUTH, verify=client_tls).status_code == 200
        silent = socket.create_connection((host, port))  # connects, and never says hello
        half = socket.create_connection((host, port))
        half.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, and no more
        assert _closed_within(silent, 10) and _closed_within(half, 10)  # not asyncio's 60 s
        with httpx.Client(base_url=f"https://{host}:{port}", headers=AUTH, verify=client_tls) as client:
            assert client.get("/v1/status").status_code == 200
            prepared = client.post("/v1/prepare", json={"run_id": "r1", "lease_s": 30})
            assert prepared.status_code == 200
            assert client.post("/v1/complete", json={"run_id": "r1"}).json()["released"] is True
        # A request sent in the same write as the client's last handshake message (TLS 1.3) is
        # decrypted as the handshake ends, before the HTTP side has been told of the connection.
        answer = _request_with_the_handshakes_last_flight(host, port, client_tls)
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"status":"ok"' in answer


def _request_with_the_handshakes_last_flight(host: str, port: int, client_tls: ssl.SSLContext) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_tls.wrap_bio(incoming, outgoing, server_hostname=host)
    with socket.create_connection((host, port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.sendall(outgoing.read())  # the client's Finished and the request, in one segment
        answer = b""
        while not answer.endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
            with contextlib.suppress(ssl.SSLWantReadError):
                while chunk := tls.read(65536):
                    answer += chunk
    return answer


def test_the_tls_agent_process_bounds_connections_per_client_before_the_handshake(tmp_path: Path) -> None:
    # Counted only once their handshake was done, connections that never began one were not
    # counted at all: one address could hold any number open, each for 60 s.
    from node_agent.ratelimit import MAX_CONNECTIONS_PER_CLIENT
    from tests.agent.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    config = write_config(tmp_path, make_db(tmp_path / "data.db"),
                          extra=f"tls:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n")
    client_tls = ssl.create_default_context(cafile=str(pki.ca))
    holder = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    with agent_process(config, verify=client_tls, scheme="https") as agent:
        host, port = agent.url.split("//")[1].split(":")
        held = [socket.create_connection((host, int(port))) for _ in range(MAX_CONNECTIONS_PER_CLIENT)]
        extra = socket.create_connection((host, int(port)))
        # Counted before their handshake: the oldest makes room. Before, each waited in its
        # handshake for 60 s, uncounted.
        assert _closed_within(held[0], 5)
        assert not _closed_within(extra, 0.5) and not _closed_within(held[1], 0.05)
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2", verify=client_tls))
        with other:
            assert other.get(agent.url + "/v1/status", headers=holder).status_code == 200
        for sock in held:
            sock.close()
        wait_until(lambda: httpx.get(agent.url + "/v1/status", headers=holder, verify=client_tls)
                   .status_code == 200, what="the agent to serve again")


def test_prepares_waiting_for_their_hold_at_leave_the_worker_threads_free(tmp_path: Path) -> None:
    # The wait for hold_at ran in one of the 40 worker threads anyio gives starlette: a token
    # holder's prepares naming an instant 10 s ahead occupied every one, and snapctl's status and
    # complete queued behind them until that instant. 48 prepares from two addresses (under the
    # connection bound of each) now all wait at once, and are cancelled meanwhile.
    db = make_db(tmp_path / "data.db")
    holder = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    runs = [f"flood-{i}" for i in range(48)]
    with agent_process(write_config(tmp_path, db, extra="log_level: debug\n")) as agent:
        hold_at = (datetime.now(UTC) + timedelta(seconds=10)).isoformat()

        def waiting() -> int:
            return agent.log.count("for its hold_at")  # the agent's debug line as each prepare begins to wait

        async def flood() -> tuple[list[httpx.Response], httpx.Response, list[httpx.Response]]:
            senders = [httpx.AsyncClient(base_url=agent.url, headers=holder, timeout=60,
                                         transport=httpx.AsyncHTTPTransport(local_address=address))
                       for address in ("127.0.0.2", "127.0.0.3")]
            try:
                prepares = [asyncio.create_task(senders[i % 2].post(
                    "/v1/prepare", json={"run_id": run, "lease_s": 60, "hold_at": hold_at}))
                    for i, run in enumerate(runs)]
                await asyncio.to_thread(wait_until, lambda: waiting() == len(runs),
                                        what="every prepare to wait for its hold_at at once")
                async with httpx.AsyncClient(base_url=agent.url, headers=holder, timeout=60) as snapctl:
                    status = await snapctl.get("/v1/status")
                    completes = [await snapctl.post("/v1/complete", json={"run_id": run}) for run in runs]
                return completes, status, await asyncio.gather(*prepares)
            finally:
                for sender in senders:
                    await sender.aclose()

        completes, status, prepares = asyncio.run(flood())
    assert status.status_code == 200 and status.json()["lease"] is None
    assert [c.json()["released"] for c in completes] == [False] * len(runs)
    assert {p.status_code for p in prepares} == {409}
    assert all("cancelled by its complete before the hold began" in p.json()["error"] for p in prepares)
    assert "prepared for run" not in agent.log and try_write(db)


def test_an_ipv6_client_is_counted_by_its_64_not_by_each_address() -> None:
    # One host routinely has a whole /64: counted per address, it took a fresh budget (and another
    # 32 connections) with every request, from any of its 2**64 addresses.
    from node_agent.ratelimit import client_of

    async def ok(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[int] = []

    async def send(message) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    limit = ClientRateLimit(ok, rate_per_s=0.01, burst=3)

    async def calls() -> None:
        for i in range(6):
            scope = {"type": "http", "path": "/v1/status", "headers": [], "client": (f"2001:db8:1:2::{i + 1:x}", 5000)}
            await limit(scope, receive, send)

    import asyncio

    asyncio.run(calls())
    assert sent == [401] * 3 + [429] * 3
    assert client_of("2001:db8:1:2::7") == "2001:db8:1:2::/64" == client_of("2001:db8:1:2:ffff::1")
    assert client_of("::ffff:10.0.0.5") == "10.0.0.5" and client_of("10.0.0.5") == "10.0.0.5"
    assert client_of("::1") == "::1" and client_of("127.0.0.2") == "127.0.0.2"
