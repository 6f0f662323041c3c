"""Fixtures of the fault suite: real agent clusters behind loopback proxies (see harness.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.harness import FaultCluster


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., FaultCluster]]:
    """``make_cluster(engines=..., agent_extra=...)``: a started cluster, stopped after the test."""
    started: list[FaultCluster] = []

    def make(**options) -> FaultCluster:
        directory = tmp_path / f"cluster{len(started)}"
        directory.mkdir()
        cluster = FaultCluster(directory, **options)
        started.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in started:
            cluster.close()


@pytest.fixture
def cluster(make_cluster: Callable[..., FaultCluster]) -> FaultCluster:
    return make_cluster()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    """One set of agents for a whole module, for tests that leave the agents as they found them."""
    cluster = FaultCluster(tmp_path_factory.mktemp("shared"))
    try:
        yield cluster.start()
    finally:
        cluster.close()


@pytest.fixture
def scene(shared_cluster: FaultCluster, request: pytest.FixtureRequest) -> FaultCluster:
    """The module's agents under a cluster name of this test's own: its own catalog and store."""
    shared_cluster.new_scene("t-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10])
    return shared_cluster
