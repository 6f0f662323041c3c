"""`backup --trigger` on engines whose prepare takes the engine's own snapshot itself (DingoDB's
regions, AresDB's shards): each region or shard is snapshotted once, by the prepare, through real
agent processes against the fakes (tests/fakes/dingodb.py, aresdb.py), which count the requests.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from snapctl.errors import ExitCode
from tests.fakes.aresdb import FakeAresDB
from tests.fakes.dingodb import FakeDingoStore
from tests.faults.harness import FaultCluster

TABLES = [{"name": "dim_city", "shards": [0, 1]}]


class LiveDingoStore(FakeDingoStore):
    """A store taking writes all along: every raft_stat read finds each region's applied index moved
    on, so a second Snapshot request for a region is never answered "already at that index"."""

    def advance_snapshots(self) -> None:
        for region in self.regions.values():
            region.applied += 1
        super().advance_snapshots()


def _snapshot_posts(fake: FakeAresDB) -> list[str]:
    return [r.path for r in fake.requests if r.method == "POST" and r.path.endswith("/snapshot")]


def test_a_backup_trigger_leaves_dingodb_and_aresdb_to_their_prepare_and_snapshots_each_region_once(
        make_cluster, tmp_path: Path):
    # The trigger step snapshotted every region and shard, then the prepare did it all over again.
    with LiveDingoStore(region_ids=(1001, 1002)) as store, FakeAresDB({"dim_city": [0, 1]}) as ares:
        store.write(50)
        ares.write(10)
        root = tmp_path / "ares"
        (root / "data").mkdir(parents=True)
        cluster: FaultCluster = make_cluster(engines={
            "node1": {"type": "dingodb", "server": f"127.0.0.1:{store.server.port}",
                      "raft": f"127.0.0.1:{store.raft.port}", "data_path": str(tmp_path / "cluster0" / "node1" / "data"),
                      "poll_interval_s": 0.05},
            "node2": {"type": "aresdb", "debug_url": ares.url, "root": str(root), "tables": TABLES,
                      "poll_interval_s": 0.05}})
        # node2's engine block left out: the backup goes by the type its agent says it serves.
        data = yaml.safe_load(cluster.inventory.read_text())
        del data["nodes"][1]["engine"]
        cluster.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        result = cluster.snapctl("backup", "--trigger", "--no-prune", "-o", "json")
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    manifest = result.json["data"]
    assert manifest["status"] == "succeeded" and manifest["degradations"] == []
    assert sorted(body["region_id"] for _, body in store.rpc_calls) == [1001, 1002]
    assert sorted(_snapshot_posts(ares)) == ["/dbg/dim_city/0/snapshot", "/dbg/dim_city/1/snapshot"]
    for node in ("node1", "node2"):
        assert f"{node}: trigger skipped (its engine's prepare runs the engine's own snapshot itself" in result.stderr
        assert [job["status"] for job in manifest["nodes"][node]["state"]["details"]["snapshots"]] == ["succeeded"] * 2
    assert "node3: trigger skipped" not in result.stderr and "trigger failed" not in result.stderr


def test_snapctl_trigger_still_snapshots_a_dingodb_store_when_asked(make_cluster, tmp_path: Path):
    # Only a backup's trigger step leaves them to the prepare: `snapctl trigger` is asked for by name.
    with LiveDingoStore(region_ids=(1001,)) as store:
        store.write(50)
        cluster: FaultCluster = make_cluster(engines={
            "node1": {"type": "dingodb", "server": f"127.0.0.1:{store.server.port}",
                      "raft": f"127.0.0.1:{store.raft.port}", "data_path": str(tmp_path / "cluster0" / "node1" / "data"),
                      "poll_interval_s": 0.05}}, nodes=("node1",))
        result = cluster.snapctl("trigger", "-o", "json")
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert [body["region_id"] for _, body in store.rpc_calls] == [1001]
