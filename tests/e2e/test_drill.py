"""Restore drills end to end through the CLI: the demo cluster (SQLite agents under writers), a
Tarantool replica set and an etcd cluster, each backed up while data is being written, drilled
green; a tampered snapshot fails its drill naming the node and what differs."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from snapctl.errors import ExitCode
from tests.e2e.conftest import Cluster
from tests.realdb.etcd import EtcdCluster
from tests.realdb.tarantool import TarantoolReplicaSet


def junit_cases(path: Path) -> dict[str, ET.Element]:
    return {case.get("name"): case for case in ET.parse(path).getroot().iter("testcase")}


def test_drill_of_the_demo_cluster_backed_up_under_writers_passes_and_is_recorded(cluster, tmp_path):
    backup = cluster.snapctl("backup", "-o", "json", check_json=True)
    assert backup.returncode == 0, backup.stderr
    manifest = backup.json["data"]

    report = tmp_path / "drill.xml"
    drill = cluster.snapctl("drill", "latest", "--junit", str(report), "-o", "json", check_json=True)

    assert drill.returncode == ExitCode.OK, drill.stderr
    data = drill.json["data"]
    assert data["ok"] and data["run_id"] == manifest["run_id"] and data["rto_s"] > 0
    assert [node["node"] for node in data["nodes"]] == list(manifest["nodes"]) == list(cluster.nodes)
    for node in data["nodes"]:
        recorded = manifest["nodes"][node["node"]]["state"]["facts"]["tables"]["events"]
        restored = node["facts"]["tables"]["events"]
        assert node["verdict"] == "passed"
        assert (restored["rows"], restored["checksum"]) == (recorded["rows"], recorded["checksum"])
    assert not Path(data["scratch_dir"]).exists()
    cases = junit_cases(report)
    assert len(cases) == 4 and all(len(case) == 1 for case in cases.values()), "only system-out: nothing failed"
    shown = cluster.snapctl("show", manifest["run_id"], "-o", "json", check_json=True).json["data"]
    assert shown["last_drill"]["ok"] and shown["last_drill"]["drill_id"] == data["drill_id"]


def test_a_tampered_snapshot_fails_its_drill_naming_the_node_and_the_table(cluster, tmp_path):
    # No writes after prepare's checkpoint: a WAL frame committed between it and prepare's lock
    # would grow demo.db when the tampering below moves the WAL into it.
    cluster.stop_writer()
    backup = cluster.snapctl("backup", "-o", "json", check_json=True)
    assert backup.returncode == 0, backup.stderr
    [snapshot] = backup.json["data"]["nodes"]["node2"]["snapshots"]
    data = Path(snapshot["extra"]["path"]) / "data"
    sidecars = {path: path.stat().st_size for path in data.glob("demo.db-*")}
    assert sidecars[data / "demo.db-wal"] == 0
    conn = sqlite3.connect(data / "demo.db")
    try:
        with conn:
            conn.execute("UPDATE events SET payload = upper(payload) WHERE id = (SELECT min(id) FROM events)")
    finally:
        conn.close()  # the last connection moves the WAL into demo.db and removes the -wal and -shm
    # Every file keeps its recorded size (one that does not is refused as damaged before anything
    # is restored), so only the drill's check finds the change. SQLite reads a -shm of zeros, which
    # has no valid header, as empty.
    for path, size in sidecars.items():
        path.write_bytes(bytes(size))

    report = tmp_path / "drill.xml"
    drill = cluster.snapctl("drill", "--junit", str(report))

    assert drill.returncode == ExitCode.VERIFY_MISMATCH, drill.stdout + drill.stderr
    assert "node2: table events: checksum" in " ".join(drill.stdout.split())
    failure = junit_cases(report)["node node2 (sqlite)"].find("failure")
    assert failure is not None and failure.get("message").startswith("node node2: table events: checksum")
    assert junit_cases(report)["node node1 (sqlite)"].find("failure") is None


# ---- real engines -------------------------------------------------------------------------


@contextlib.contextmanager
def writing(write: Callable[[], None]) -> Iterator[Callable[[], int]]:
    """Keep writing in the background for the duration; yields how many writes went in."""
    stop, count, failures = threading.Event(), [0], []

    def loop() -> None:
        while not stop.is_set():
            try:
                write()
                count[0] += 1
            except Exception as exc:  # noqa: BLE001 - reported below, the backup must not be blamed for it
                failures.append(exc)
                return
            stop.wait(0.01)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield lambda: count[0]
    finally:
        stop.set()
        thread.join(10)
    assert not failures, failures


def embedded_cluster(directory: Path, name: str, nodes: list[dict]) -> Cluster:
    inventory = {"cluster": name, "provider": {"type": "local", "store": "store"}, "catalog": {"path": "catalog"},
                 "drill": {"scratch_dir": "scratch", "start_timeout_s": "60s"}, "nodes": nodes}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return Cluster(directory, path, {})


def backup_while_writing(cluster: Cluster, write: Callable[[], None]) -> dict:
    with writing(write) as written:
        backup = cluster.snapctl("backup", "-o", "json", check_json=True)
        assert written() > 0
    assert backup.returncode == 0, backup.stderr
    return backup.json["data"]


def drill_green(cluster: Cluster, tmp_path: Path) -> dict:
    drill = cluster.snapctl("drill", "--junit", str(tmp_path / "drill.xml"), "-o", "json", check_json=True)
    assert drill.returncode == ExitCode.OK, (drill.json, drill.stderr)
    return drill.json["data"]


@pytest.mark.slow
def test_drill_of_a_tarantool_replica_set_backed_up_under_writes(tmp_path):
    with TarantoolReplicaSet(tmp_path / "tt", size=3) as rs:
        rs.write(100)
        rs.wait_replicated()
        cluster = embedded_cluster(tmp_path, "tt", [
            {"name": inst.name, "agent": "embedded", "engine": rs.engine_settings(index),
             "volumes": [{"name": "work", "path": str(inst.work_dir)}]}
            for index, inst in enumerate(rs.instances)])
        manifest = backup_while_writing(cluster, lambda: rs.write(5))
        data = drill_green(cluster, tmp_path)
        names = [inst.name for inst in rs.instances]

    assert [node["node"] for node in data["nodes"]] == list(manifest["nodes"]) == names
    for node in data["nodes"]:
        recorded = manifest["nodes"][node["node"]]["state"]["facts"]
        assert node["runs_on"] == "this machine" and node["start_s"] > 0
        for space in ("items", "vitems"):
            assert node["facts"]["tables"][space]["rows"] >= recorded["tables"][space]["rows"] >= 100
        assert node["facts"]["position"]["instance_uuid"] == recorded["position"]["instance_uuid"]
    assert not list((tmp_path / "scratch").iterdir()), "the scratch instances and their data are gone"


@pytest.mark.slow
def test_drill_of_an_etcd_cluster_backed_up_under_writes(tmp_path):
    with EtcdCluster(tmp_path / "etcd", size=3) as etcd:
        etcd.write(100)
        nodes = []
        for index, member in enumerate(etcd.members):
            settings = etcd.engine_settings(index)
            del settings["data_dir"]  # the saved snapshot is the backup; the live data dir is not snapshotted
            Path(settings["backup_dir"]).mkdir(parents=True)
            nodes.append({"name": member.name, "agent": "embedded", "engine": settings,
                          "volumes": [{"name": "backup", "path": settings["backup_dir"]}]})
        cluster = embedded_cluster(tmp_path, "etcd", nodes)
        manifest = backup_while_writing(cluster, lambda: etcd.write(5))
        data = drill_green(cluster, tmp_path)
        names = [node["name"] for node in nodes]

    assert [node["node"] for node in data["nodes"]] == list(manifest["nodes"]) == names
    for node in data["nodes"]:
        recorded = manifest["nodes"][node["node"]]["state"]["facts"]
        assert node["facts"]["tables"]["keys"]["rows"] >= recorded["tables"]["keys"]["rows"] >= 100
        assert node["facts"]["position"]["revision"] >= recorded["position"]["revision"]
    assert not list((tmp_path / "scratch").iterdir())
