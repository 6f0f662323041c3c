"""An unknown trigger target is the caller's bad input on every engine: the agent answers 400 with
the engine's hint (docs/agent.md), as SQLite and etcd always did; DingoDB and AresDB answered 502,
as if the engine had failed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from node_agent.app import create_app
from node_agent.engines.aresdb import AresDBEngine, AresDBSettings
from node_agent.engines.dingodb import DingoDBEngine, DingoDBSettings
from node_agent.service import AgentService
from tests.agent.conftest import TOKEN, serve
from tests.fakes.aresdb import FakeAresDB
from tests.fakes.dingodb import FakeDingoStore


def _trigger(url: str, target: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/trigger", json={"target": target}, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=30)


@pytest.mark.parametrize(("target", "error"), [
    ("9999", "has no region 9999"),
    ("no_such_group", "has no raft group 'no_such_group'"),
])
def test_an_unknown_dingodb_region_or_group_is_a_400_with_the_regions_there(tmp_path: Path, target, error) -> None:
    (tmp_path / "data").mkdir()
    with FakeDingoStore() as store:
        settings = DingoDBSettings(server=f"127.0.0.1:{store.server.port}", raft=f"127.0.0.1:{store.raft.port}",
                                   data_path="data")
        with serve(create_app(AgentService("n1", DingoDBEngine(settings, base_dir=tmp_path)), TOKEN)) as url:
            answer = _trigger(url, target)
        assert store.rpc_calls == []
    assert answer.status_code == 400, answer.text
    assert error in answer.json()["error"] and answer.json()["hint"] == "regions here: 1001, 1002"


@pytest.mark.parametrize(("target", "error", "hint"), [
    ("dim_nosuch", "aresdb table 'dim_nosuch' is not configured for this node",
     "add it to engine.tables or name it as table/shard"),
    ("dim_city/x", "aresdb target 'dim_city/x': shard must be a number (table/shard)", "e.g. dim_city/0"),
])
def test_an_unconfigured_aresdb_table_or_a_shard_not_a_number_is_a_400(tmp_path: Path, target, error, hint) -> None:
    (tmp_path / "root" / "data").mkdir(parents=True)
    with FakeAresDB() as ares:
        settings = AresDBSettings(debug_url=ares.url, tables=[{"name": "dim_city"}], root="root")
        with serve(create_app(AgentService("n1", AresDBEngine(settings, base_dir=tmp_path)), TOKEN)) as url:
            answer = _trigger(url, target)
        assert ares.steps == {}
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == error and answer.json()["hint"] == hint
