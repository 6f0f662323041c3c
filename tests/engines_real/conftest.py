"""Real Tarantool and etcd clusters, started once per module; destructive tests restore them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node_agent.models import EngineState
from snapctl.providers import RestoreTarget, create_provider, snapshot_tags
from tests.realdb.etcd import EtcdCluster
from tests.realdb.tarantool import TarantoolReplicaSet


@pytest.fixture(scope="module")
def replica_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TarantoolReplicaSet]:
    with TarantoolReplicaSet(tmp_path_factory.mktemp("tarantool-rs"), size=3) as rs:
        yield rs


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path_factory.mktemp("etcd-cluster"), size=3) as cluster:
        yield cluster


def backup_and_restore(engine: Any, run_id: str, volume: Path, tmp_path: Path) -> tuple[EngineState, Path]:
    """One node's backup as snapctl runs it (prepare, local-provider snapshot, complete), then a
    restore of that snapshot into a new directory; returns the prepare state and the restored path."""
    provider = create_provider({"type": "local", "store": str(tmp_path / "store")}, cluster="real", base_dir=tmp_path)
    volumes = provider.validate_volumes("n1", [{"name": "data", "path": str(volume)}], base_dir=tmp_path)
    state = engine.prepare(run_id)
    try:
        refs = provider.snapshot(volumes, snapshot_tags("real", run_id, "n1"))
    finally:
        engine.complete(run_id)
    (ref,) = provider.wait(refs, time.monotonic() + 60)
    restored = provider.restore(ref, RestoreTarget(path=tmp_path / "restored"))
    return state, Path(restored)
