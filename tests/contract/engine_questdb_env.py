"""QuestDB in the engine contract: the adapter against the local /exec fake (9.3.2)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx

from node_agent.engines.questdb import QuestDBEngine, QuestDBSettings
from tests.contract.conftest import EngineEnv
from tests.fakes.questdb import FakeQuestDB


@contextlib.contextmanager
def make_env(tmp_path: Path) -> Iterator[EngineEnv]:
    root = tmp_path / "questdb-root"
    (root / "db").mkdir(parents=True)
    with FakeQuestDB("9.3.2") as fake, httpx.Client(base_url=fake.url, timeout=5) as client:

        def sql(query: str) -> None:
            client.get("/exec", params={"query": query}).raise_for_status()

        def write(n: int) -> None:
            sql("CREATE TABLE IF NOT EXISTS trades (ts TIMESTAMP, price DOUBLE) TIMESTAMP(ts) PARTITION BY DAY WAL")
            sql("INSERT INTO trades VALUES " + ",".join(f"(now(), {i}.5)" for i in range(n)))

        write(1)
        engine = QuestDBEngine(QuestDBSettings(root=str(root), url=fake.url, timeout_s=2), base_dir=tmp_path)
        try:
            yield EngineEnv(engine=engine, write=write, supports_trigger=False, extra={"hang": fake.hang})
        finally:
            engine.close()
