"""What a stolen agent token allows, and what it does not: it can hold (freeze) and release the
engine, but a hold it ends behind a run's back makes that run fail: never a backup that claims a
consistency it does not have. The token reaches no snapshot and no catalog."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from snapctl.errors import ExitCode
from tests.faults.harness import TOKEN, FaultCluster

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FaultCluster]:
    cluster = FaultCluster(tmp_path, nodes=("node1", "node2"))
    try:
        yield cluster.start()
    finally:
        cluster.close()


def test_a_hold_released_behind_the_runs_back_fails_the_run(cluster: FaultCluster) -> None:
    # A long lease: snapctl renews rarely, so only the answer to its own complete can tell.
    stopping = cluster.write_inventory(cluster.directory / "stopping.yaml", provider={"stop": {"node1": "after"}},
                                       policy={"lease_ttl_s": "120s", "max_freeze_s": "120s"})
    process = cluster.popen("backup", "--no-prune", inventory=stopping)
    cluster.wait_reached("node1.made")
    run_id = cluster.lease("node1")["run_id"]  # the status page shows the holder to any token holder
    stolen = httpx.post(cluster.url("node1") + "/v1/complete", headers=AUTH, json={"run_id": run_id})
    assert stolen.json()["released"] is True  # the attacker released node1 mid-snapshot
    cluster.go("node1.go")
    _, err = process.communicate(timeout=60)

    assert process.returncode == ExitCode.RUN_FAILED, err
    assert "node node1" in err and "already ended" in err
    manifest = cluster.manifest(run_id)
    assert manifest["status"] == "failed"
    assert cluster.snapshot_dirs(run_id) == []  # nothing that claims to be consistent is kept
    assert cluster.held() == set()


def test_the_token_cannot_reach_snapshots_or_the_catalog(cluster: FaultCluster) -> None:
    result = cluster.snapctl("backup", "--no-prune", "-o", "json")
    assert result.returncode == 0, result.stderr
    paths = set(httpx.get(cluster.url("node1") + "/openapi.json").json()["paths"])
    assert paths == {"/v1/health", "/v1/status", "/v1/prepare", "/v1/renew", "/v1/complete", "/v1/trigger",
                     "/v1/restore-prepare", "/v1/verify"}  # nothing that lists, deletes or restores snapshots
    status = httpx.get(cluster.url("node1") + "/v1/status", headers=AUTH).json()
    assert result.json["data"]["run_id"] not in str(status)  # no run id, so no snapshot id (they embed it)
