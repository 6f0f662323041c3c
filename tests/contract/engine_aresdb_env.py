"""AresDB in the engine contract: the adapter against the local /dbg fake."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from node_agent.engines.aresdb import AresDBEngine, AresDBSettings
from tests.contract.conftest import EngineEnv
from tests.fakes.aresdb import FakeAresDB


@contextlib.contextmanager
def make_env(tmp_path: Path) -> Iterator[EngineEnv]:
    root = tmp_path / "aresdb-root"
    (root / "data").mkdir(parents=True)
    with FakeAresDB({"dim_city": [0, 1], "dim_driver": [0]}) as fake:
        settings = AresDBSettings(
            debug_url=fake.url, root=str(root), timeout_s=2, job_wait_s=10, poll_interval_s=0.02,
            tables=[{"name": "dim_city", "shards": [0, 1]}, {"name": "dim_driver", "shards": [0]}],
        )
        engine = AresDBEngine(settings, base_dir=tmp_path)
        try:
            yield EngineEnv(
                engine=engine, write=fake.write,
                extra={"hang": fake.hang, "no_version": "aresdb's HTTP APIs report no version"},
            )
        finally:
            engine.close()
