"""Catalog faults: the disk fills while a manifest is written, manifests get corrupted, two runs
start on the same cluster at once."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapctl.errors import ExitCode
from tests.faults.harness import NODES, FaultCluster, wait_until


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a catalog that can really run out of space (ENOSPC, not a simulation)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount_point)], check=False,
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_disk_full_while_writing_the_manifest(scene: FaultCluster, small_disk: Path) -> None:
    cluster = scene
    stopping = cluster.write_inventory(cluster.directory / "stopping.yaml", provider={"stop": {"node3": "after"}},
                                       catalog={"path": str(small_disk)})
    plain = cluster.write_inventory(cluster.directory / "plain.yaml", catalog={"path": str(small_disk)})
    process = cluster.popen("backup", "--no-prune", inventory=stopping)
    cluster.wait_reached("node3.made")  # every snapshot exists; step 8's manifest write comes next
    filler = fill(small_disk)
    cluster.go("node3.go")
    _, err = process.communicate(timeout=60)

    assert process.returncode == ExitCode.RUN_FAILED, err
    assert "no space left on device" in err and "Traceback" not in err
    manifests = small_disk / cluster.cluster / "manifests"
    [run_file] = manifests.glob("*.json")
    run_id = run_file.stem
    assert json.loads(run_file.read_text())["run_id"] == run_id  # the older version, whole: never torn
    assert [p.name for p in small_disk.rglob(".*tmp*")] == []  # no temp file left behind
    assert cluster.held() == set()
    assert {cluster.released_by(n, run_id) for n in NODES} == {"completed"}
    assert cluster.snapshot_dirs(run_id) == [], err  # rolled back although every node had been snapshotted

    # Space again: the next run succeeds and records the stranded run as failed.
    filler.unlink()
    cluster.wait_lock_free(catalog=small_disk)
    after = cluster.snapctl("backup", "--no-prune", "-o", "json", inventory=plain)
    assert after.returncode == 0, after.stderr
    assert json.loads(run_file.read_text())["status"] == "failed"


def test_disk_full_when_the_success_is_recorded_keeps_the_backup(scene: FaultCluster, small_disk: Path) -> None:
    cluster = scene
    stopping = cluster.write_inventory(cluster.directory / "stopping.yaml", provider={"stop_wait": True},
                                       catalog={"path": str(small_disk)})
    plain = cluster.write_inventory(cluster.directory / "plain.yaml", catalog={"path": str(small_disk)})
    process = cluster.popen("backup", "--no-prune", inventory=stopping)
    cluster.wait_reached("wait.entered")  # step 8 recorded every snapshot; every node is released
    filler = fill(small_disk)
    cluster.go("wait.go")
    _, err = process.communicate(timeout=60)

    assert process.returncode == ExitCode.RUN_FAILED, err
    [line] = [line for line in err.splitlines() if line.startswith("snapctl: error:")]
    assert "took every snapshot and they completed, but the catalog could not record its success" in line
    assert "no space left on device" in line and "hint: nothing was rolled back" in err, err
    [run_file] = (small_disk / cluster.cluster / "manifests").glob("*.json")
    run_id = run_file.stem
    assert json.loads(run_file.read_text())["status"] == "running"  # step 8's, whole
    assert cluster.held() == set() and len(cluster.snapshot_dirs(run_id)) == len(NODES)  # kept

    # Space again: the next run closes the stranded run as the backup it is, snapshots and all.
    filler.unlink()
    cluster.wait_lock_free(catalog=small_disk)
    after = cluster.snapctl("backup", "--no-prune", "-o", "json", inventory=plain)
    assert after.returncode == 0, after.stderr
    closed = json.loads(run_file.read_text())
    assert closed["status"] == "succeeded" and closed["error"] is None
    assert len(cluster.snapshot_dirs(run_id)) == len(NODES)
    listed = cluster.snapctl("gc", "-o", "json", inventory=plain)
    assert listed.returncode == 0 and listed.json["data"]["orphans"] == [], listed.stdout


CORRUPTIONS = {
    "truncated": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "binary": lambda text: "\x00\xff\xfe garbage",
    "wrong schema": lambda text: json.dumps({**json.loads(text), "nodes": "everything"}),
    "another run": lambda text: json.dumps({**json.loads(text), "run_id": "20200101T000000Z-abcdef"}),
}


def _backups(cluster: FaultCluster, count: int) -> list[str]:
    """``count`` succeeded backups, oldest first: their run ids."""
    runs = []
    for _ in range(count):
        result = cluster.snapctl("backup", "--no-prune", "-o", "json")
        assert result.returncode == 0, result.stderr
        runs.append(result.json["data"]["run_id"])
    return runs


def test_corrupted_manifests_are_reported_and_the_rest_still_listed(scene: FaultCluster) -> None:
    cluster = scene
    good, damaged = _backups(cluster, 2)
    text = cluster.manifest_file(damaged).read_text()
    (cluster.catalog_dir / cluster.cluster / "index.json").write_text("{not an index")
    for kind, corrupt in CORRUPTIONS.items():
        cluster.manifest_file(damaged).write_text(corrupt(text))

        listed = cluster.snapctl("list", "-o", "json")
        assert listed.returncode == 0, (kind, listed.stderr)
        assert [r["run_id"] for r in listed.json["data"]["runs"]] == [good], kind
        [problem] = listed.json["data"]["problems"]
        assert problem.startswith(f"run {damaged}: "), kind

        shown = cluster.snapctl("show", damaged)
        assert shown.returncode == ExitCode.RUN_FAILED, (kind, shown.stderr)
        assert f"run {damaged}: manifest is unreadable" in shown.stderr and "Traceback" not in shown.stderr
        assert str(cluster.manifest_file(damaged)) in shown.stderr  # the hint says where it is

    assert cluster.snapctl("show", good, "-o", "json").json["data"]["run_id"] == good
    assert cluster.snapctl("show", "latest", "-o", "json").json["data"]["run_id"] == good
    # A damaged record never stops the next backup, nor does gc treat that run's snapshots as orphans.
    after = cluster.snapctl("backup", "-o", "json")
    assert after.returncode == 0, after.stderr
    assert damaged in cluster.gc().skipped_runs
    assert cluster.snapshot_dirs(damaged)


def test_a_damaged_manifest_behind_an_intact_index_is_never_taken_for_the_newest_backup(scene: FaultCluster) -> None:
    # The common case of damage: one manifest (bit rot, a bad edit, a partial copy), the index fine.
    cluster = scene
    old, good, damaged = _backups(cluster, 3)
    cluster.manifest_file(damaged).write_bytes(cluster.manifest_file(damaged).read_bytes()[:500])

    listed = cluster.snapctl("list", "-o", "json")
    assert [r["run_id"] for r in listed.json["data"]["runs"]] == [good, old]
    assert listed.json["data"]["problems"] == [f"run {damaged}: not valid JSON"]
    assert f"warning: run {damaged}: not valid JSON" in cluster.snapctl("list").stderr
    assert cluster.snapctl("show", "latest", "-o", "json").json["data"]["run_id"] == good
    status = cluster.snapctl("status", "-o", "json").json["data"]
    assert status["backups"]["latest_success"]["run_id"] == good
    assert {"severity": "degraded", "subject": "catalog", "hint": None, "forceable": True,
            "message": f"unreadable manifest: run {damaged}: not valid JSON"} in status["verdict"]["findings"]

    keep_one = cluster.write_inventory(cluster.directory / "keep-one.yaml",
                                       retention={"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    pruned = cluster.snapctl("prune", "-o", "json", inventory=keep_one)
    assert pruned.returncode == 0, pruned.stderr
    assert [v["run_id"] for v in pruned.json["data"]["kept"]] == [good]
    assert [v["run_id"] for v in pruned.json["data"]["deleted"]] == [old]
    assert cluster.snapshot_dirs(good) and cluster.snapshot_dirs(damaged)  # the damaged run is left alone
    assert cluster.snapctl("drill", "latest", "--junit", str(cluster.directory / "drill.xml")).returncode == 0


def test_two_concurrent_runs_on_one_cluster_exactly_one_runs(scene: FaultCluster) -> None:
    cluster = scene
    stopping = cluster.write_inventory(cluster.directory / "stopping.yaml", provider={"stop": {"node1": "before"}})
    seen = {node: len(cluster.agents[node].log.read_text()) for node in NODES}
    processes = [cluster.popen("backup", "--no-prune", inventory=stopping) for _ in range(3)]
    try:
        # The winner stands inside its run; the others must have given up at once, not waited.
        wait_until(lambda: sum(p.poll() is not None for p in processes) == 2, 60, "two runs to be refused")
        cluster.go("node1.go")
        outcomes = [(p.wait(60), p.stderr.read()) for p in processes]
    finally:
        for p in processes:
            p.kill()
            p.communicate()
    assert sorted(code for code, _ in outcomes) == [0, ExitCode.LOCK_HELD, ExitCode.LOCK_HELD]
    [run_id] = cluster.run_ids()  # the refused runs left no record
    assert cluster.manifest(run_id)["status"] == "succeeded"
    for code, err in outcomes:
        if code == ExitCode.LOCK_HELD:
            assert "is locked by" in err and f"(run {run_id})" in err and "Traceback" not in err
    for node in NODES:
        lines = cluster.agents[node].log.read_text()[seen[node]:].splitlines()
        assert {line.split("prepared for run ")[1].split()[0] for line in lines if "prepared for run" in line} == {run_id}
