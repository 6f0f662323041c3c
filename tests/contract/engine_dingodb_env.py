"""DingoDB in the engine contract: the adapter against a local store fake (both ports)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from node_agent.engines.dingodb import DingoDBEngine, DingoDBSettings
from tests.contract.conftest import EngineEnv
from tests.fakes.dingodb import FakeDingoStore


@contextlib.contextmanager
def make_env(tmp_path: Path) -> Iterator[EngineEnv]:
    data = tmp_path / "dingo-store"
    (data / "raft").mkdir(parents=True)
    with FakeDingoStore(era="debug", snapshot_polls=2) as store:
        settings = DingoDBSettings(server=store.server.address, raft=store.raft.address, data_path=str(data),
                                   timeout_s=2, snapshot_wait_s=10, poll_interval_s=0.02)
        engine = DingoDBEngine(settings, base_dir=tmp_path)
        try:
            yield EngineEnv(engine=engine, write=store.write, extra={"hang": store.hang})
        finally:
            engine.close()
