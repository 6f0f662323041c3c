"""A node's engine snapshots (`snapctl trigger`, `backup --trigger`) through real agent processes:
waited for as long as the trigger's own timeout allows, not the agent timeout; and, in a backup,
one that fails is reported per node and the backup goes on.

node1 runs the DingoDB adapter against the fake store (tests/fakes/dingodb.py), whose snapshot
lands a few raft_stat reads after the RPC, or SQLite; node2 and node3 run SQLite.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapctl.errors import ExitCode
from tests.fakes.dingodb import FakeDingoStore
from tests.faults.harness import FaultCluster

AGENT_TIMEOUT = {"agent_timeout_s": "1s"}


class FailsFirstSnapshot(FakeDingoStore):
    """Refuses its first Snapshot RPC with DingoDB's own error, then takes them as usual."""

    def snapshot(self, region_id: int) -> dict:
        if not any(body.get("region_id") == region_id for _, body in self.rpc_calls[:-1]):
            return {"error": {"errcode": "EREGION_NOT_READY", "errmsg": f"region {region_id} is not ready"}}
        return super().snapshot(region_id)


def _dingodb(store: FakeDingoStore, volume: Path) -> dict:
    return {"type": "dingodb", "server": f"127.0.0.1:{store.server.port}", "raft": f"127.0.0.1:{store.raft.port}",
            "data_path": str(volume), "poll_interval_s": 0.1}


@pytest.fixture
def slow_store() -> Iterator[FakeDingoStore]:
    # 25 raft_stat reads at 0.1 s: the snapshot lands some 2.5 s after the RPC, past agent_timeout_s.
    with FakeDingoStore(region_ids=(1001,), snapshot_polls=25) as store:
        store.write(50)
        yield store


def test_snapctl_trigger_waits_past_the_agent_timeout_for_a_slow_engine_snapshot(make_cluster, tmp_path, slow_store):
    # The agent client's 10 s (agent_timeout_s) cut every node's trigger short, whatever --timeout said.
    cluster: FaultCluster = make_cluster(engines={"node1": _dingodb(slow_store, tmp_path / "cluster0" / "node1" / "data")})
    cluster.write_inventory(cluster.inventory, policy=AGENT_TIMEOUT)
    result = cluster.snapctl("trigger", "--node", "node1", "--timeout", "60", "-o", "json")
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    [node] = result.json["data"]["nodes"]
    assert node["ok"] and [job["target"] for job in node["jobs"]] == ["region 1001"]
    assert node["jobs"][0]["duration_s"] > 1
    assert slow_store.regions[1001].last_snapshot_index == slow_store.regions[1001].applied


def test_snapctl_trigger_past_its_timeout_says_the_agent_is_slow_not_gone(make_cluster, tmp_path, slow_store):
    # The agent took the request: "is snapctl-agent running there?" sent the operator to a running agent.
    cluster: FaultCluster = make_cluster(engines={"node1": _dingodb(slow_store, tmp_path / "cluster0" / "node1" / "data")})
    result = cluster.snapctl("trigger", "--node", "node1", "--timeout", "1", "-o", "json")
    assert result.returncode == ExitCode.RUN_FAILED, result.stdout + result.stderr
    [node] = result.json["data"]["nodes"]
    assert node["error"].endswith(" within 1s (/v1/trigger)")
    assert node["hint"].startswith("the agent took the request but did not answer in time")
    assert node["hint"].endswith("raise snapctl trigger --timeout, or policy.trigger_timeout_s for a backup's")


def test_a_backup_trigger_leaves_a_slow_dingodb_store_to_its_prepare_past_the_agent_timeout(make_cluster, tmp_path,
                                                                                             slow_store):
    # The prepare snapshots every region itself: the trigger step skips the node (test_trigger_once),
    # and the prepare is waited for up to prepare_timeout_s, past agent_timeout_s.
    cluster: FaultCluster = make_cluster(engines={"node1": _dingodb(slow_store, tmp_path / "cluster0" / "node1" / "data")})
    cluster.write_inventory(cluster.inventory, policy={**AGENT_TIMEOUT, "trigger_timeout_s": "60s"})
    result = cluster.snapctl("backup", "--trigger", "-o", "json")
    assert result.returncode == ExitCode.OK, result.stderr
    assert result.json["data"]["degradations"] == []
    assert "node1: trigger skipped (" in result.stderr
    assert slow_store.regions[1001].last_snapshot_index == slow_store.regions[1001].applied


def test_a_backup_trigger_that_fails_on_some_nodes_is_reported_and_the_backup_goes_on(make_cluster, tmp_path):
    # The failed job was dropped unseen, and an agent's error failed the whole run before the prepare.
    # node1's job fails as SQLite's does: a reader keeps the wal busy, so the checkpoint cannot finish.
    # (Not DingoDB's refusal any more: a backup leaves DingoDB and AresDB to their prepare, test_trigger_once.)
    cluster: FaultCluster = make_cluster()
    cluster.write_inventory(cluster.inventory, policy={"trigger_timeout_s": "6s"})  # past node1's busy timeout (2 s)
    writer, reader = sqlite3.connect(cluster.agents["node1"].database), sqlite3.connect(cluster.agents["node1"].database)
    gate = cluster.agents["node2"].proxy.gate("POST /v1/trigger")  # node2's agent never answers it
    try:
        writer.execute("INSERT INTO events (note) VALUES ('in the wal')")
        writer.commit()
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchone()  # reads the wal until it ends
        process = cluster.popen("backup", "--trigger", "-o", "json")
        gate.wait()
        out, err = process.communicate(timeout=120)
    finally:
        gate.drop()
        reader.close()
        writer.close()
    assert process.returncode == ExitCode.OK, err
    manifest = json.loads(out)["data"]
    assert manifest["status"] == "succeeded"
    assert all(node["snapshots"] for node in manifest["nodes"].values())
    node1, node2 = manifest["degradations"]
    assert node1 == ("the engine snapshot before the backup failed on node1: main failed: checkpoint could not "
                     "finish: other connections kept the wal busy")
    assert node2.startswith("the engine snapshot before the backup failed on node2: no answer from the agent at ")
    assert node2.endswith(" within 6s (/v1/trigger)")
    assert "node1: trigger failed (main failed: " in err and "node2: trigger failed (no answer" in err
    assert cluster.held() == set()


def test_snapctl_trigger_of_a_region_the_store_does_not_have_is_bad_input(make_cluster, tmp_path):
    # The agent answered 502 (an engine failure): exit 1, as if the cluster had failed.
    with FakeDingoStore(region_ids=(1001,)) as store:
        cluster: FaultCluster = make_cluster(engines={"node1": _dingodb(store, tmp_path / "cluster0" / "node1" / "data")})
        result = cluster.snapctl("trigger", "9999", "--node", "node1", "-o", "json")
    assert result.returncode == ExitCode.BAD_INPUT, result.stdout + result.stderr
    [node] = result.json["data"]["nodes"]
    assert node["bad_input"] and not node["ok"] and node["jobs"] == []
    assert node["error"].endswith("has no region 9999") and node["hint"] == "regions here: 1001"
