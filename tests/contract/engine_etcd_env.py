"""etcd in the engine contract: the adapter against one real single-member cluster (Debian's etcd)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from node_agent.engines.base import create_engine
from tests.contract.conftest import EngineEnv
from tests.realdb.etcd import EtcdCluster


@contextlib.contextmanager
def make_env(tmp_path: Path) -> Iterator[EngineEnv]:
    with EtcdCluster(tmp_path / "etcd", size=1) as cluster:
        cluster.write(1)
        engine = create_engine(cluster.engine_settings(0, timeout_s=1.0), base_dir=tmp_path)
        try:
            # trigger saves an operator snapshot into backup_dir: etcd cuts raft snapshots by itself.
            yield EngineEnv(engine=engine, write=cluster.write, extra={"hang": cluster.members[0].process.paused})
        finally:
            engine.close()
