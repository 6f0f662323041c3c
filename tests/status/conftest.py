"""Helpers for `snapctl status` tests: inventories, catalog runs, and many fake agents on loopback."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from node_agent.models import AgentStatus, EngineStatus, RaftGroup
from snapctl import __version__
from snapctl.catalog import open_catalog
from snapctl.config import Inventory, load_inventory
from snapctl.manifest import Manifest, NodeRecord
from tests.conftest import LOOPBACK

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "status.schema.json"
VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()), format_checker=jsonschema.FormatChecker())


def validated(status) -> dict[str, Any]:
    """The `status -o json` document of ``status``, checked against the published schema."""
    from snapctl.render import JSON_SCHEMA_VERSION
    from snapctl.render.status import status_document

    document = json.loads(json.dumps({"schema_version": JSON_SCHEMA_VERSION, "kind": "status",
                                      "data": status_document(status)}))
    VALIDATOR.validate(document)
    return document


@pytest.fixture(autouse=True)
def _state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Busy-snapshot memory and default catalogs go under the test's directory, never $HOME."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def make_db(path: Path, rows: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, value TEXT)")
        conn.executemany("INSERT INTO items (value) VALUES (?)", [(f"v{i}",) for i in range(rows)])
    return path


def write_inventory(directory: Path, nodes: list[dict[str, Any]], **top: Any) -> Path:
    """An inventory file with a local provider and catalog under ``directory``."""
    data: dict[str, Any] = {
        "cluster": top.pop("cluster", "st"),
        "provider": {"type": "local", "store": "snapshots"},
        "catalog": {"path": "catalog"},
        "policy": {"agent_timeout_s": "3s", **top.pop("policy", {})},
        **top,
        "nodes": nodes,
    }
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sqlite_nodes(directory: Path, count: int = 2) -> list[dict[str, Any]]:
    nodes = []
    for i in range(1, count + 1):
        make_db(directory / f"n{i}" / "data.db")
        nodes.append({"name": f"n{i}", "agent": "embedded", "engine": {"type": "sqlite", "path": f"n{i}/data.db"},
                      "volumes": [{"name": "data", "path": f"n{i}"}]})
    return nodes


def record_run(inventory: Inventory, run_id: str, status: str, *, age_s: float, error: str | None = None,
               waited: bool = True) -> None:
    """A finished run in the catalog, ``age_s`` seconds old; ``waited=False``: by `backup --no-wait`."""
    finished = datetime.now(UTC) - timedelta(seconds=age_s)
    manifest = Manifest(cluster=inventory.cluster, run_id=run_id, status=status, provider="local",
                        snapctl_version=__version__, owner="test@host:1", started_at=finished - timedelta(seconds=5),
                        finished_at=finished, error=error,
                        nodes={n.name: NodeRecord(name=n.name) for n in inventory.nodes},
                        snapshots_completed=waited and status == "succeeded")
    open_catalog(inventory).save(manifest)


def agent_status(node: str, *, raft: list[RaftGroup] | None = None, reachable: bool = True) -> dict[str, Any]:
    """What a healthy agent answers on /v1/status."""
    engine = EngineStatus(engine="sqlite", version="3", reachable=reachable, raft=raft or [])
    return AgentStatus(node=node, agent_version=__version__, engine=engine, free_bytes=1 << 30).model_dump(mode="json")


# ---- many fake agents: one asyncio loop in a thread, one listening socket per node ----------------


@dataclass
class FakeAgent:
    node: str
    behaviour: str = "ok"  # ok | slow | hang
    delay_s: float = 0.0  # for slow
    port: int = 0
    requests: int = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


@dataclass
class FakeAgentFleet:
    """``/v1/status`` on many ports at once. ``hang`` accepts and never answers; ``slow`` answers late."""

    agents: list[FakeAgent]
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _servers: list[asyncio.Server] = field(default_factory=list)
    # ("asked" | "answered", node) in the order the fleet's one loop saw them
    events: list[tuple[str, str]] = field(default_factory=list)
    _handlers: set[asyncio.Task] = field(default_factory=set)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-agents", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(timeout=10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def _listen(self) -> None:
        for agent in self.agents:
            server = await asyncio.start_server(lambda r, w, a=agent: self._track(self._serve(a, r, w)), LOOPBACK, 0)
            agent.port = server.sockets[0].getsockname()[1]
            self._servers.append(server)

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def _track(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, agent: FakeAgent, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                agent.requests += 1
                self.events.append(("asked", agent.node))
                if agent.behaviour == "hang":
                    await asyncio.Event().wait()
                if agent.behaviour == "slow":
                    await asyncio.sleep(agent.delay_s)
                path = head.split(b" ", 2)[1]
                body = json.dumps(agent_status(agent.node) if path == b"/v1/status" else {"error": "no"}).encode()
                status = b"200 OK" if path == b"/v1/status" else b"404 Not Found"
                self.events.append(("answered", agent.node))
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@contextmanager
def fake_agents(agents: list[FakeAgent]) -> Iterator[FakeAgentFleet]:
    fleet = FakeAgentFleet(agents)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


def load(path: Path) -> Inventory:
    return load_inventory(path)
