"""Tarantool in the engine contract: the adapter against one real instance (Debian's tarantool)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from node_agent.engines.base import create_engine
from tests.contract.conftest import EngineEnv
from tests.realdb.tarantool import TarantoolReplicaSet


@contextlib.contextmanager
def make_env(tmp_path: Path) -> Iterator[EngineEnv]:
    with TarantoolReplicaSet(tmp_path / "tarantool", size=1) as instance:
        instance.write(1)
        # A short timeout_s keeps the never-answers test quick; box.snapshot() has its own.
        engine = create_engine(instance.engine_settings(timeout_s=1.0), base_dir=tmp_path)
        try:
            yield EngineEnv(engine=engine, write=instance.write, extra={"hang": instance.master.process.paused})
        finally:
            engine.close()
