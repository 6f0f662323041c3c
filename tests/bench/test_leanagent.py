"""The lean simulated agent answers snapctl's client as the real agent does: the same models, the
same lease rules (409 naming the holder, idempotent prepare, complete fenced by run id), 401 for
a wrong token, and hold_at (a complete that arrives first cancels the waiting prepare)."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta

import pytest

from bench.leanagent import serve_lean
from snapctl.agent_client import HttpAgentClient
from snapctl.agent_transport import AgentTransport
from snapctl.errors import AgentConflict, AgentUnauthorized

TOKEN = "lean-token"


async def _with_agent(check, nodes: int = 1) -> None:
    """Serve ``nodes`` lean nodes (n1, n2, ...) in this process and hand ``check`` a client
    factory: ``agent(token, name="n1")``."""
    sockets = {}
    for index in range(1, nodes + 1):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sockets[f"n{index}"] = sock
    urls = {name: f"http://127.0.0.1:{sock.getsockname()[1]}" for name, sock in sockets.items()}
    stop = asyncio.Event()
    server = asyncio.create_task(serve_lean(sockets, TOKEN, 0.02, 0.0, stop))
    await asyncio.sleep(0.05)
    transport = AgentTransport()
    try:
        await check(lambda token=TOKEN, name="n1": HttpAgentClient(name, urls[name], transport, token=token,
                                                                    timeout_s=5))
    finally:
        await transport.aclose()
        stop.set()
        await server


def test_a_lease_cycle_with_the_real_agents_models_and_rules() -> None:
    async def check(agent) -> None:
        client = agent()
        assert (await client.health()).status == "ok"
        prepared = await client.prepare("run-1", 30)
        assert prepared.lease.run_id == "run-1" and prepared.state.engine == "sim"
        assert (await client.prepare("run-1", 30)).state.prepared_at == prepared.state.prepared_at
        with pytest.raises(AgentConflict) as conflict:
            await client.prepare("run-2", 30)
        assert conflict.value.holder == "run-1"
        status = await client.status()
        assert status.engine.held and status.lease.run_id == "run-1"
        assert (await client.renew("run-1")).run_id == "run-1"
        with pytest.raises(AgentConflict):
            await client.complete("run-2")
        assert (await client.complete("run-1")).released is True
        assert (await client.complete("run-1")).released is False
        with pytest.raises(AgentUnauthorized):
            await agent("wrong").status()

    asyncio.run(_with_agent(check))


def test_hold_at_delays_the_hold_and_a_complete_first_cancels_it() -> None:
    async def check(agent) -> None:
        client = agent()
        hold_at = datetime.now(UTC) + timedelta(seconds=0.2)
        assert (await client.prepare("run-1", 30, hold_at)).state.prepared_at >= hold_at
        await client.complete("run-1")

        waiting = asyncio.create_task(client.prepare("run-2", 30, datetime.now(UTC) + timedelta(seconds=5)))
        await asyncio.sleep(0.1)
        assert (await agent().complete("run-2")).released is False
        with pytest.raises(AgentConflict, match="cancelled by its complete"):
            await waiting
        assert not (await client.status()).engine.held

    asyncio.run(_with_agent(check))


def test_a_prepare_after_its_own_runs_complete_is_refused_as_by_the_real_agent() -> None:
    async def check(agent) -> None:
        client = agent()
        with pytest.raises(AgentConflict, match="does not hold"):
            await client.complete("run-1")  # it overtook the prepare
        with pytest.raises(AgentConflict, match="completed this node before its prepare arrived"):
            await client.prepare("run-1", 30)
        assert not (await client.status()).engine.held
        assert (await client.prepare("run-2", 30)).lease.run_id == "run-2"

    asyncio.run(_with_agent(check))


def test_nodes_of_one_process_sharing_a_hold_instant_all_hold_before_any_answers(monkeypatch) -> None:
    """On hosts of their own no agent's answer delays another's hold; the simulation's nodes share
    a loop, so they must all begin before any of them writes its answer (bench.leanagent's
    _SharedInstants): otherwise the answers of the first become the others' hold skew."""
    import bench.leanagent as lean

    nodes: list[lean.LeanNode] = []
    held_at_each_answer: list[int] = []

    class RecordedNode(lean.LeanNode):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            nodes.append(self)

    send = lean.LeanAgentProtocol._send

    def recorded_send(self, status, document) -> None:
        if "lease" in document:  # a prepare's answer
            held_at_each_answer.append(sum(node.holder is not None for node in nodes))
        send(self, status, document)

    monkeypatch.setattr(lean, "LeanNode", RecordedNode)
    monkeypatch.setattr(lean.LeanAgentProtocol, "_send", recorded_send)

    async def check(agent) -> None:
        clients = [agent(name=f"n{index}") for index in range(1, 21)]
        hold_at = datetime.now(UTC) + timedelta(seconds=0.3)
        prepared = await asyncio.gather(*(client.prepare("run-1", 30, hold_at) for client in clients))
        assert all(answer.state.prepared_at >= hold_at for answer in prepared)
        # a prepare that arrives after the instant holds on its own, when its engine is done
        await asyncio.gather(*(client.complete("run-1") for client in clients))
        late = await clients[0].prepare("run-2", 30, datetime.now(UTC) - timedelta(seconds=1))
        assert late.lease.run_id == "run-2"

    asyncio.run(_with_agent(check, nodes=20))
    assert len(nodes) == 20
    assert held_at_each_answer[:20] == [20] * 20
