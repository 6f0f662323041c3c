"""snapctl's agent clients: HTTP against real agents, embedded in-process, and their error mapping."""

from __future__ import annotations

import asyncio
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from node_agent.app import create_app
from node_agent.engines.sqlite import SqliteEngine
from node_agent.service import AgentService
from snapctl.agent_client import HttpAgentClient, open_agents
from snapctl.config import Inventory, parse_inventory
from snapctl.embedded_agent import EmbeddedAgentClient
from snapctl.errors import AgentConflict, AgentError, AgentUnauthorized, AgentUnreachable
from tests.agent.certs import make_pki
from tests.agent.conftest import TOKEN, agent_process, make_db, serve, try_write, write_config
from tests.conftest import LOOPBACK, free_port


def inventory(tmp_path: Path, nodes: str, *, auth: str = "", policy: str = "") -> Inventory:
    text = f"cluster: c1\nprovider: {{type: local}}\n{auth}{policy}nodes:\n{nodes}"
    return parse_inventory(text, source="inventory.yaml", base_dir=tmp_path)


def with_token_file(tmp_path: Path, token: str = TOKEN) -> str:
    (tmp_path / "agents.token").write_text(token + "\n")
    return "auth:\n  token_file: agents.token\n"


def test_a_backup_cycle_through_open_agents(tmp_path: Path, engine: SqliteEngine, db: Path) -> None:
    make_db(tmp_path / "embedded.db")
    service = AgentService("n1", engine)
    try:
        with serve(create_app(service, TOKEN)) as url:
            inv = inventory(tmp_path, f"  - {{name: n1, agent: '{url}'}}\n"
                                      "  - {name: n2, agent: embedded, engine: {type: sqlite, path: embedded.db}}\n",
                            auth=with_token_file(tmp_path))

            async def cycle() -> None:
                async with open_agents(inv) as agents:
                    assert list(agents) == ["n1", "n2"]
                    assert isinstance(agents["n1"], HttpAgentClient)
                    assert isinstance(agents["n2"], EmbeddedAgentClient)
                    # What a cluster run sends: a float lease and an aware hold_at, which the agent's
                    # strict request models must take as they are.
                    hold_at = datetime.now(UTC) + timedelta(seconds=0.1)
                    states = await asyncio.gather(*(a.prepare("run-1", 60.0, hold_at) for a in agents.values()))
                    assert [s.state.facts.tables["items"].rows for s in states] == [10, 10]
                    assert not try_write(db) and not try_write(tmp_path / "embedded.db")
                    await agents["n1"].renew("run-1")
                    await agents["n1"].renew("run-1", 45.0)
                    assert (await agents["n1"].status()).lease.run_id == "run-1"
                    assert (await agents["n1"].complete("run-1")).released is True
                    assert (await agents["n1"].verify()).tables["items"].rows == 10
                    assert (await agents["n1"].trigger()).jobs[0].status == "succeeded"
                    await agents["n1"].restore_prepare(str(db.parent))
                    assert (await agents["n1"].health()).status == "ok"
                # leaving open_agents closes the embedded agent, which completes what it held
                assert try_write(tmp_path / "embedded.db")

            asyncio.run(cycle())
    finally:
        service.close()


def test_an_unreachable_agent_names_the_node_and_address(tmp_path: Path) -> None:
    url = f"http://{LOOPBACK}:{free_port()}"
    inv = inventory(tmp_path, f"  - {{name: n7, agent: '{url}'}}\n", policy="policy:\n  agent_timeout_s: 2s\n")

    async def call() -> None:
        async with open_agents(inv) as agents:
            await agents["n7"].status()

    with pytest.raises(AgentUnreachable) as caught:
        asyncio.run(call())
    assert caught.value.message.startswith(f"node n7: cannot reach the agent at {url}")
    assert "is snapctl-agent running there" in caught.value.hint
    assert caught.value.delivered is False  # no connection: a prepare sent this way held nothing


def test_an_agent_that_never_answers_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) but never answers
        silent.bind((LOOPBACK, 0))
        silent.listen(8)
        url = f"http://{LOOPBACK}:{silent.getsockname()[1]}"
        inv = inventory(tmp_path, f"  - {{name: n1, agent: '{url}'}}\n", policy="policy:\n  agent_timeout_s: 0.2s\n")

        async def call() -> None:
            async with open_agents(inv) as agents:
                await agents["n1"].prepare("run-1", 60)

        with pytest.raises(AgentUnreachable, match="no answer from the agent at .* within 0.2s") as caught:
            asyncio.run(call())
        assert caught.value.delivered is True  # connected: the agent may have the prepare and hold
        # Something took the request: "is snapctl-agent running there" would send the operator the wrong way.
        assert caught.value.hint.startswith("the agent took the request but did not answer in time")
        assert caught.value.hint.endswith("raise policy.prepare_timeout_s")


def test_wrong_token_and_conflicts_are_mapped(tmp_path: Path, engine: SqliteEngine) -> None:
    service = AgentService("n1", engine)
    try:
        with serve(create_app(service, TOKEN)) as url:
            nodes = f"  - {{name: n1, agent: '{url}'}}\n"
            elsewhere = tmp_path / "elsewhere"
            elsewhere.mkdir()
            wrong = inventory(elsewhere, nodes, auth=with_token_file(elsewhere, "not-the-token"))

            async def unauthorized() -> None:
                async with open_agents(wrong) as agents:
                    await agents["n1"].status()

            with pytest.raises(AgentUnauthorized) as caught:
                asyncio.run(unauthorized())
            assert caught.value.status == 401 and "wrong bearer token" in caught.value.message
            assert "auth.token_file" in caught.value.hint and "not-the-token" not in str(caught.value)

            right = inventory(tmp_path, nodes, auth=with_token_file(tmp_path))

            async def conflict() -> None:
                async with open_agents(right) as agents:
                    await agents["n1"].prepare("run-1", 60)
                    await agents["n1"].prepare("run-2", 60)

            with pytest.raises(AgentConflict) as conflicted:
                asyncio.run(conflict())
            assert conflicted.value.status == 409 and conflicted.value.holder == "run-1"
            assert "held by run run-1" in conflicted.value.message
    finally:
        service.close()


def test_embedded_errors_are_translated_like_http(tmp_path: Path) -> None:
    make_db(tmp_path / "e.db")
    inv = inventory(tmp_path, "  - {name: e1, agent: embedded, engine: {type: sqlite, path: e.db}}\n"
                              "  - {name: e2, agent: embedded, engine: {type: sqlite, path: absent.db}}\n")

    async def calls() -> None:
        async with open_agents(inv) as agents:
            await agents["e1"].prepare("run-1", 60)
            with pytest.raises(AgentConflict) as conflicted:
                await agents["e1"].complete("run-2")
            assert conflicted.value.holder == "run-1" and conflicted.value.node == "e1"
            with pytest.raises(AgentError) as failed:
                await agents["e2"].prepare("run-1", 60)
            assert failed.value.status == 502 and "no sqlite database" in failed.value.message

    asyncio.run(calls())
    assert try_write(tmp_path / "e.db")


def test_every_client_bounds_every_call_with_an_error_naming_the_node() -> None:
    """Callers keep no timer of their own (the orchestrator, the probes): the clients must."""
    import threading

    class StuckService:
        def __init__(self) -> None:
            self.let_go = threading.Event()

        def status(self):
            self.let_go.wait(10)

        def prepare(self, run_id, lease_s, hold_at):
            self.let_go.wait(10)

    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # accepts (backlog), never answers
    silent.bind((LOOPBACK, 0))
    silent.listen(8)
    stuck = StuckService()

    async def calls() -> None:
        from snapctl.agent_transport import AgentTransport
        from snapctl.errors import AgentTimeout

        transport = AgentTransport()
        over_http = HttpAgentClient("h1", f"http://{LOOPBACK}:{silent.getsockname()[1]}", transport, token=TOKEN,
                                    timeout_s=0.2)
        embedded = EmbeddedAgentClient("e1", stuck, timeout_s=0.2)
        try:
            for client, node in ((over_http, "h1"), (embedded, "e1")):
                with pytest.raises(AgentTimeout) as late:
                    await client.status()
                assert late.value.node == node and "within 0.2s" in late.value.message
                # A prepare's own timeout replaces the client's: an engine's flush may take longer.
                with pytest.raises(AgentTimeout, match="within 0.5s"):
                    await client.prepare("run-1", 60, timeout_s=0.5)
        finally:
            stuck.let_go.set()
            await transport.aclose()

    try:
        asyncio.run(calls())
    finally:
        silent.close()


def test_tls_and_mtls_with_a_real_agent(tmp_path: Path, db: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = (f"tls:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
           f"  client_ca_file: {pki.ca}\n")
    config = write_config(tmp_path, db, extra=tls)
    client_verify = ssl.create_default_context(cafile=str(pki.ca))
    client_verify.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    with agent_process(config, verify=client_verify, scheme="https") as agent:
        nodes = f"  - {{name: n1, agent: '{agent.url}'}}\n"
        token = with_token_file(tmp_path)
        mtls = inventory(tmp_path, nodes, auth=token + f"  ca_file: {pki.ca}\n  client_cert_file: {pki.client_cert}\n"
                                                        f"  client_key_file: {pki.client_key}\n")
        no_client_cert = inventory(tmp_path, nodes, auth=token + f"  ca_file: {pki.ca}\n")
        no_ca = inventory(tmp_path, nodes, auth=token)

        async def status(inv: Inventory):
            async with open_agents(inv) as agents:
                return await agents["n1"].status()

        assert asyncio.run(status(mtls)).node == "n1"
        with pytest.raises(AgentUnreachable) as refused:
            asyncio.run(status(no_client_cert))
        assert "auth.client_cert_file" in refused.value.hint
        with pytest.raises(AgentUnreachable) as untrusted:
            asyncio.run(status(no_ca))
        assert "auth.ca_file" in untrusted.value.hint
    assert "listening on https://" in agent.log


@pytest.mark.slow  # ~10 s on two cores: a thousand connections to one in-process server
def test_a_thousand_nodes_share_one_pool_without_queueing_errors(tmp_path: Path, engine: SqliteEngine) -> None:
    service = AgentService("n1", engine)
    try:
        with serve(create_app(service, TOKEN)) as url:
            nodes = "".join(f"  - {{name: n{i}, agent: '{url}'}}\n" for i in range(1000))
            inv = inventory(tmp_path, nodes, auth=with_token_file(tmp_path), policy="policy:\n  agent_timeout_s: 60s\n")

            async def all_health() -> list[str]:
                async with open_agents(inv) as agents:
                    # one per node would hold a thousand idle connections and reuse none across nodes
                    assert len({id(agent._http) for agent in agents.values()}) == 1, "the clients share one transport"
                    answers = await asyncio.gather(*(agent.health() for agent in agents.values()))
                    return [a.status for a in answers]

            assert asyncio.run(all_health()) == ["ok"] * 1000
    finally:
        service.close()


def test_a_request_the_agent_read_before_it_died_is_never_reported_unsent(tmp_path: Path) -> None:
    # The first request answered on a kept-alive connection; the agent reads the second (a prepare:
    # its engine may be held now) and dies before answering, so the resend finds no agent.
    read: list[bytes] = []

    async def scene() -> AgentUnreachable:
        async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            health = b'{"status": "ok", "agent_version": "1"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(health), health))
            await writer.drain()
            read.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0])
            server.close()  # the agent process is gone: nothing listens any more
            writer.transport.abort()

        server = await asyncio.start_server(agent, LOOPBACK, 0)
        url = f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
        inv = inventory(tmp_path, f"  - {{name: n1, agent: '{url}'}}\n", policy="policy:\n  agent_timeout_s: 5s\n")
        async with open_agents(inv) as agents:
            await agents["n1"].health()
            with pytest.raises(AgentUnreachable) as caught:
                await agents["n1"].prepare("run-1", 60)
        return caught.value

    unreachable = asyncio.run(scene())
    assert read == [b"POST /v1/prepare HTTP/1.1"]
    assert unreachable.delivered is True  # the run's rollback sends this node a complete


def test_an_agent_killed_mid_request_is_said_so_not_taken_for_a_tls_agent(tmp_path: Path, db: Path) -> None:
    # A backup's agent SIGKILLed during its request was reported as "(a tls agent does so to plain
    # http: use https:// for it)": the fix it named was wrong, and the agent was simply gone.
    import signal

    config = write_config(tmp_path, db)
    with agent_process(config) as agent:
        inv = inventory(tmp_path, f"  - {{name: n1, agent: '{agent.url}'}}\n", auth=with_token_file(tmp_path),
                        policy="policy:\n  agent_timeout_s: 20s\n")

        async def killed_mid_request() -> AgentUnreachable:
            async with open_agents(inv) as agents:
                agent.proc.send_signal(signal.SIGSTOP)  # the request stays unanswered until the kill
                call = asyncio.ensure_future(agents["n1"].status())
                await asyncio.sleep(0.5)
                assert not call.done()
                agent.proc.kill()
                with pytest.raises(AgentUnreachable) as caught:
                    await call
            return caught.value

        unreachable = asyncio.run(killed_mid_request())
    assert unreachable.reason == (f"cannot reach the agent at {agent.url}: the agent closed the connection "
                                  "mid-request (crashed or restarted?)")
    assert "tls" not in unreachable.message


def test_a_kept_alive_connection_closed_unanswered_is_no_tls_mismatch(tmp_path: Path) -> None:
    # The agent answered on this address before, in plain http: when it then drops a request, and
    # the resend too (restarting, or crashing on it), it is no tls agent, though it still listens.
    async def scene() -> AgentUnreachable:
        async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            if not answered:
                health = b'{"status": "ok", "agent_version": "1"}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(health), health))
                await writer.drain()
                answered.append(True)
                await reader.readuntil(b"\r\n\r\n")
            writer.transport.abort()

        answered: list[bool] = []
        server = await asyncio.start_server(agent, LOOPBACK, 0)
        url = f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
        inv = inventory(tmp_path, f"  - {{name: n1, agent: '{url}'}}\n", policy="policy:\n  agent_timeout_s: 5s\n")
        try:
            async with open_agents(inv) as agents:
                await agents["n1"].health()
                with pytest.raises(AgentUnreachable) as caught:
                    await agents["n1"].status()
        finally:
            server.close()
        return caught.value

    unreachable = asyncio.run(scene())
    assert unreachable.reason.endswith(": the agent closed the connection mid-request (crashed or restarted?)")
    assert "tls" not in unreachable.message and unreachable.delivered is True


def test_a_403_with_an_agent_error_but_no_hint_still_gets_one(tmp_path: Path) -> None:
    """A 403 whose agent error body has no hint (an agent before its 403s gave one, a proxy that
    answers in the agent's words) gave the CLI error no hint at all, where every other 403 path
    says what to do: the token's hint is no answer, for a 403 comes whatever the token."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from snapctl.agent_transport import AgentTransport

    async def refuse(request):
        return JSONResponse({"error": "forbidden", "hint": None, "holder": None}, status_code=403)

    app = Starlette(routes=[Route("/v1/status", refuse)])
    with serve(app) as url:
        async def status(client_cert: bool) -> AgentUnauthorized:
            transport = AgentTransport()
            try:
                client = HttpAgentClient("n1", url, transport, token=TOKEN, timeout_s=5, client_cert=client_cert)
                with pytest.raises(AgentUnauthorized) as caught:
                    await client.status()
                return caught.value
            finally:
                await transport.aclose()

        plain = asyncio.run(status(client_cert=False))
        assert plain.status == 403 and plain.message == f"node n1: the agent at {url} refused us: forbidden"
        assert plain.refused == "our request"
        assert plain.hint.startswith("the agent refused the request, not our token")
        assert "auth.token_file" not in plain.hint

        certified = asyncio.run(status(client_cert=True))
        assert certified.refused == "our client certificate"
        assert certified.hint.startswith("the agent refused our client certificate, not our token")
        assert "tls.client_names" in certified.hint
