"""`snapctl prune` and `snapctl gc` as real processes against the demo cluster: a dry run, a prune
SIGKILLed halfway and resumed, one stopped by SIGTERM, retention after a backup, and planted orphans."""

from __future__ import annotations

import fcntl
import json
import signal
import time
from pathlib import Path

from snapctl.errors import ExitCode
from snapctl.providers import create_provider, snapshot_tags

KEEP_TWO = {"keep_last": 2, "daily": 0, "weekly": 0, "monthly": 0}


def _wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _backups(cluster, count: int) -> list[str]:
    run_ids = []
    for _ in range(count):
        result = cluster.snapctl("backup", "--no-prune", "-o", "json", check_json=True)
        assert result.returncode == 0, result.stderr
        run_ids.append(result.json["data"]["run_id"])
    return run_ids


def _store(cluster) -> Path:
    return cluster.directory / ".snapctl-demo" / "snapshots" / "e2e"


def _on_disk(cluster) -> set[str]:
    return {p.name for p in _store(cluster).glob("node*/*") if not p.name.startswith(".")}


def _manifest_status(cluster, run_id: str) -> str | None:
    path = cluster.directory / ".snapctl-demo" / "catalog" / "e2e" / "manifests" / f"{run_id}.json"
    try:
        return json.loads(path.read_text())["status"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_prune_dry_run_then_sigkill_halfway_then_resume(cluster, tmp_path: Path) -> None:
    cluster.write_inventory(retention=KEEP_TWO)
    runs = _backups(cluster, 4)
    doomed, kept = runs[:2], runs[2:]

    dry = cluster.snapctl("prune", "--dry-run", "-o", "json", check_json=True)
    assert dry.returncode == 0, dry.stderr
    planned = {v["run_id"]: v["snapshots"] for v in dry.json["data"]["deleted"]}
    assert list(planned) == doomed
    assert planned[doomed[0]] == [f"{doomed[0]}-node{i}-data" for i in (1, 2, 3)]
    assert [v["run_id"] for v in dry.json["data"]["kept"]] == kept[::-1]
    text = cluster.snapctl("prune", "--dry-run")
    assert "would delete 2 run(s)" in text.stdout and doomed[0] in text.stdout
    assert {s for ids in planned.values() for s in ids} <= _on_disk(cluster)  # a dry run deletes nothing

    # Hold node2's snapshot-store lock: the prune marks both runs, deletes the oldest run's node1
    # snapshot, then blocks on node2; that is where it gets killed.
    with open(_store(cluster) / "node2" / ".lock", "a+b") as node2_lock:
        fcntl.flock(node2_lock.fileno(), fcntl.LOCK_EX)
        process = cluster.popen("prune")
        try:
            _wait_until(lambda: f"{doomed[0]}-node1-data" not in _on_disk(cluster), 60, "the first deletion")
            assert all(_manifest_status(cluster, r) == "pruning" for r in doomed)
            process.kill()
            process.wait(10)
        finally:
            process.kill()
            process.communicate()

    listed = cluster.snapctl("list", "-o", "json", check_json=True).json["data"]["runs"]
    assert [(r["run_id"], r["status"]) for r in listed] == [(kept[1], "succeeded"), (kept[0], "succeeded"),
                                                            (doomed[1], "pruning"), (doomed[0], "pruning")]
    refused = cluster.snapctl("restore", doomed[0], "--to", str(tmp_path / "half-gone"))
    assert refused.returncode == ExitCode.BAD_INPUT and "is being deleted by a prune" in refused.stderr

    # The killed prune's lock expires (lock_ttl_s 3 s); until then a prune is refused, naming it.
    deadline = time.monotonic() + 60
    while (resumed := cluster.snapctl("prune", "-o", "json")).returncode == ExitCode.LOCK_HELD:
        assert "(run prune-" in resumed.stderr and "Traceback" not in resumed.stderr
        assert time.monotonic() < deadline, "the dead prune's lock never expired"
        time.sleep(0.5)
    assert resumed.returncode == 0, resumed.stderr
    assert [v["run_id"] for v in json.loads(resumed.stdout)["data"]["deleted"]] == doomed

    assert [r["run_id"] for r in cluster.snapctl("list", "-o", "json", check_json=True).json["data"]["runs"]] == kept[::-1]
    assert _on_disk(cluster) == {f"{r}-node{i}-data" for r in kept for i in (1, 2, 3)}


def _lock_record(cluster) -> dict:
    return json.loads((cluster.directory / ".snapctl-demo" / "catalog" / "e2e" / "lock.json").read_text())


def test_a_prune_stopped_by_sigterm_releases_the_lock_and_the_next_one_finishes(cluster) -> None:
    cluster.write_inventory(retention=KEEP_TWO)
    doomed, untouched = _backups(cluster, 4)[:2]

    # As above, the prune blocks on node2's snapshot; SIGTERM (cron's `timeout`, systemd) stops it there.
    with open(_store(cluster) / "node2" / ".lock", "a+b") as node2_lock:
        fcntl.flock(node2_lock.fileno(), fcntl.LOCK_EX)
        process = cluster.popen("prune")
        try:
            _wait_until(lambda: f"{doomed}-node1-data" not in _on_disk(cluster), 60, "the first deletion")
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
        finally:
            process.kill()
            process.communicate()

    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert stderr.splitlines()[-2:] == [
        "snapctl: error: prune was interrupted (SIGTERM)",
        f"  hint: the runs it had marked but not begun to delete are unmarked ({untouched}); run {doomed}, whose "
        "snapshots it was deleting, stays marked 'pruning': the next prune finishes it"]
    assert _lock_record(cluster)["released_at"], "the lock is released, not left to expire"
    # A stop is often a mistake noticed: the run it had not begun is as it was, the other is committed.
    assert (_manifest_status(cluster, doomed), _manifest_status(cluster, untouched)) == ("pruning", "succeeded")
    resumed = cluster.snapctl("prune", "-o", "json", check_json=True)
    assert resumed.returncode == 0, resumed.stderr
    assert [v["run_id"] for v in resumed.json["data"]["deleted"]] == [doomed, untouched]


def test_backup_applies_retention_and_gc_finds_planted_orphans(cluster) -> None:
    cluster.write_inventory(retention={"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    older = _backups(cluster, 2)
    assert len(cluster.snapctl("list", "-o", "json", check_json=True).json["data"]["runs"]) == 2  # --no-prune

    newest = cluster.snapctl("backup", "-o", "json", check_json=True)
    assert newest.returncode == 0, newest.stderr
    run_id = newest.json["data"]["run_id"]
    assert newest.json["data"]["extra"]["retention"] == {"deleted": older, "kept": 1}
    assert [r["run_id"] for r in cluster.snapctl("list", "-o", "json", check_json=True).json["data"]["runs"]] == [run_id]
    owned = {f"{run_id}-node{i}-data" for i in (1, 2, 3)}
    assert _on_disk(cluster) == owned

    # A run SIGKILLed before its manifest named its snapshots: tagged, owned by nobody. Its manifest
    # was written before its first snapshot (without one, gc would take it for another catalog's run).
    from datetime import UTC, datetime

    from snapctl.catalog import Catalog, LocalBlobStore
    from snapctl.manifest import Manifest

    Catalog(LocalBlobStore(cluster.directory / ".snapctl-demo" / "catalog"), "e2e").save(Manifest(
        cluster="e2e", run_id="20240101T000000Z-dead00", provider="local", snapctl_version="0.1.0",
        owner="ops@host:1", started_at=datetime(2024, 1, 1, tzinfo=UTC)))
    provider = create_provider({"type": "local", "store": ".snapctl-demo/snapshots"}, cluster="e2e",
                               base_dir=cluster.directory)
    volumes = provider.validate_volumes("node1", [{"name": "data", "path": ".snapctl-demo/node1/data"}],
                                        base_dir=cluster.directory)
    planted = {r.snapshot_id for r in provider.snapshot(volumes, snapshot_tags("e2e", "20240101T000000Z-dead00", "node1"))}

    found = cluster.snapctl("gc", "-o", "json", check_json=True)
    assert found.returncode == 0, found.stderr
    assert {r["snapshot_id"] for r in found.json["data"]["orphans"]} == planted
    text = cluster.snapctl("gc")
    assert "snapctl gc --delete" in text.stdout and "20240101T000000Z-dead00" in text.stdout
    assert _on_disk(cluster) == owned | planted

    deleted = cluster.snapctl("gc", "--delete", "-o", "json", check_json=True)
    assert deleted.returncode == 0, deleted.stderr
    assert set(deleted.json["data"]["deleted"]) == planted
    assert _on_disk(cluster) == owned
    assert cluster.snapctl("gc", "-o", "json", check_json=True).json["data"]["orphans"] == []
