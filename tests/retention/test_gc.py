"""`snapctl gc`: the orphaned snapshots and store leftovers no manifest owns, listed, and with
``--delete`` removed under the cluster lock; never a running run's."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from snapctl.errors import LockHeld
from snapctl.gc import gc

from .conftest import CLUSTER, T0, Scene, gc_cli, inventory, snapctl_cli, snapshots_of


def test_gc_finds_planted_orphans_and_deletes_only_them(scene: Scene) -> None:
    scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    scene.add_run("r2-killed", T0 + timedelta(days=2), "running", recorded=False)  # SIGKILL before step 8
    # Another catalog's run (this catalog has never heard of it): a run writes its manifest first.
    [stranger] = scene.snapshot("r3-unknown", "n1")
    scene.add_run("r4-broken", T0 + timedelta(days=4))
    scene.catalog.store.write(f"{CLUSTER}/manifests/r4-broken.json", b"{ damaged")  # may own its snapshots
    planted = {"r2-killed-n1-data", "r2-killed-n2-data"}
    owned = snapshots_of(scene, {"r0", "r1"})
    inv = inventory(scene)

    found = gc(inv)

    assert {r.snapshot_id for r in found.orphans} == planted and not found.delete
    assert [r.snapshot_id for r in found.unknown_runs] == [stranger.snapshot_id]
    assert found.skipped_runs == ["r4-broken"]
    assert planted <= scene.snapshot_ids()  # listing deletes nothing

    deleted = gc(inv, delete=True)

    assert deleted.ok and set(deleted.deleted) == planted
    assert deleted.skipped_runs == ["r4-broken"]  # not gc's own lock, as if a run were in progress
    assert scene.snapshot_ids() == owned | snapshots_of(scene, {"r4-broken"}) | {stranger.snapshot_id}
    assert gc(inv).orphans == []

    assert gc(inv, delete=True, include_unknown_runs=True).deleted == [stranger.snapshot_id]
    assert scene.snapshot_ids() == owned | snapshots_of(scene, {"r4-broken"})


def test_gc_lists_and_deletes_what_a_failed_runs_manifest_still_names(scene: Scene) -> None:
    # A rollback that could not delete its snapshots keeps them in the failed manifest and says
    # "snapctl gc finds them": a failed run holds no backup, so they are orphans.
    scene.add_run("r0", T0)
    scene.add_run("r1-failed", T0 + timedelta(days=1), "failed")
    left = snapshots_of(scene, {"r1-failed"})
    # One of them also named by a run that succeeded (a manifest edited, a tag changed): its own.
    shared = sorted(left)[0]
    kept = scene.catalog.load("r0")
    kept.nodes["n1"].snapshots.append(next(r for r in scene.provider.find({}) if r.snapshot_id == shared))
    scene.catalog.save(kept)
    inv = inventory(scene)

    found = gc(inv)

    assert {r.snapshot_id for r in found.orphans} == left - {shared} and len(left) == 2
    deleted = gc(inv, delete=True)
    assert deleted.ok and set(deleted.deleted) == left - {shared}
    assert scene.snapshot_ids() == snapshots_of(scene, {"r0"}) | {shared}
    assert gc(inv).orphans == []


def test_gc_lists_and_deletes_what_killed_snapshot_calls_left_in_the_store(scene: Scene) -> None:
    from snapctl_local.store import DELETING_PREFIX, PARTIAL_PREFIX

    scene.add_run("r0", T0)
    store = scene.provider.store
    [linked] = (Path(scene.catalog.load("r0").nodes["n1"].snapshots[0].extra["path"]) / "data").iterdir()

    def left_behind(node: str, prefix: str, snapshot_id: str) -> Path:
        """What a snapshot (or delete) call SIGKILLed part-way leaves: a hidden work directory."""
        work = store.work_dir(store.node_dir(node), prefix, snapshot_id)
        (work / "data").mkdir(parents=True)
        (work / "data" / "copied.bin").write_bytes(b"x" * 5000)
        os.link(linked, work / "data" / "linked")  # an unchanged file: shared with r0, frees nothing
        return work

    partial = left_behind("n1", PARTIAL_PREFIX, "r1-n1-data")
    deleting = left_behind("n1", DELETING_PREFIX, "r-old-n1-data")
    in_use = left_behind("n2", PARTIAL_PREFIX, "r2-n2-data")  # a snapshot of n2 is under way
    inv = inventory(scene)

    with store.node_lock("n2"):
        found = gc(inv)
        assert found.orphans == [] and found.ok
        assert [(x.node, x.path, x.kind, x.bytes) for x in found.leftovers] == [
            ("n1", str(deleting), "deleting", 5000), ("n1", str(partial), "partial", 5000)]
        assert partial.is_dir() and deleting.is_dir()  # listing deletes nothing

        deleted = gc(inv, delete=True)

        assert deleted.ok and sorted(deleted.leftovers_deleted) == sorted([str(partial), str(deleting)])
        assert not partial.exists() and not deleting.exists() and in_use.is_dir()
        assert linked.is_file() and snapshots_of(scene, {"r0"}) == {"r0-n1-data", "r0-n2-data"}

    assert [x.path for x in gc(inv).leftovers] == [str(in_use)]  # its call died after all


def test_gc_spares_the_run_in_progress_and_delete_needs_the_lock(scene: Scene) -> None:
    scene.add_run("r0", T0)
    in_progress = scene.snapshot("20240305T000000Z-aaaaaa", "n1")  # made, not yet in its manifest
    scene.catalog.acquire_lock("ops@host:9", "20240305T000000Z-aaaaaa", ttl_s=300)
    found = gc(inventory(scene))
    assert found.orphans == [] and found.skipped_runs == ["20240305T000000Z-aaaaaa"]
    with pytest.raises(LockHeld, match="ops@host:9"):
        gc(inventory(scene), delete=True)
    assert in_progress[0].snapshot_id in scene.snapshot_ids()


def test_gc_never_lists_the_snapshots_of_a_backup_that_finished_while_it_looked(scene: Scene, monkeypatch) -> None:
    # gc read the manifests (the backup's still named none of its snapshots), then the lock: the
    # backup had recorded its snapshots and released the lock in between, so the lock protected
    # it no longer and its manifest was not read again: a good backup's snapshots listed as orphans.
    import snapctl.gc
    from snapctl.catalog import Catalog

    scene.add_run("r0", T0)
    running = scene.add_run("20240305T000000Z-aaaaaa", T0 + timedelta(days=4), "running", recorded=False)
    lock = scene.catalog.acquire_lock("ops@host:9", running.run_id, ttl_s=300)

    class BackupEndsAsTheLockIsRead:  # the real store
        def __init__(self, store) -> None:
            self._store = store

        def __getattr__(self, name):
            return getattr(self._store, name)

        def read(self, key):
            if key.endswith("/lock.json") and not lock._released:
                for node in running.nodes.values():
                    node.snapshots = scene.provider.find({"snapctl-run": running.run_id, "snapctl-node": node.name})
                running.status = "succeeded"
                scene.catalog.save(running)
                lock.release()
            return self._store.read(key)

    monkeypatch.setattr(snapctl.gc, "open_catalog",
                        lambda inv: Catalog(BackupEndsAsTheLockIsRead(scene.catalog.store), CLUSTER))
    found = gc(inventory(scene))

    assert running.status == "succeeded" and snapshots_of(scene, {running.run_id})
    assert found.orphans == [], [r.snapshot_id for r in found.orphans]


def test_gc_refuses_a_catalog_that_holds_no_run_while_the_cluster_has_snapshots(scene: Scene) -> None:
    """A catalog path that is wrong, not mounted or lost is an empty catalog: every backup of the
    cluster would look orphaned, and `gc --delete` deleted them all."""
    from snapctl.errors import CatalogError

    scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    backups = scene.snapshot_ids()
    right = inventory(scene)
    inv = right.model_copy(update={"catalog": right.catalog.model_copy(update={"path": "catalog-not-mounted"})})

    for delete in (False, True):
        with pytest.raises(CatalogError, match=r"the catalog at .*/catalog-not-mounted holds no run of cluster "
                                               r"prod, yet 4 snapshot\(s\) carry its tag") as caught:
            gc(inv, delete=delete)
        assert "catalog.path" in caught.value.hint
    assert scene.snapshot_ids() == backups  # every backup is still there
    assert not (scene.root / "catalog-not-mounted").exists(), "gc --delete made a catalog (its lock) there"

    assert gc(right).orphans == []  # the right catalog: nothing to refuse


def test_gc_never_takes_the_snapshots_of_a_run_whose_manifest_was_lost_for_orphans(scene: Scene) -> None:
    scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    scene.catalog.store.delete(f"{CLUSTER}/manifests/r0.json")  # its index line still says succeeded
    backups = scene.snapshot_ids()

    found = gc(inventory(scene))
    assert found.orphans == [] and "r0" in found.skipped_runs
    assert gc(inventory(scene), delete=True).deleted == [] and scene.snapshot_ids() == backups


def test_gc_with_a_catalog_restored_from_an_older_copy_never_deletes_the_newer_backups(scene: Scene) -> None:
    # Only an empty catalog was refused: one restored from last night's copy took tonight's
    # backup for an orphan, and `gc --delete` deleted the newest good backup.
    import shutil

    scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    shutil.copytree(scene.root / "catalog", scene.root / "catalog-copy")
    scene.add_run("r2", T0 + timedelta(days=2))
    shutil.rmtree(scene.root / "catalog")
    shutil.copytree(scene.root / "catalog-copy", scene.root / "catalog")
    backups = scene.snapshot_ids()
    inv = inventory(scene)

    found = gc(inv)
    assert found.orphans == [] and sorted(r.snapshot_id for r in found.unknown_runs) == ["r2-n1-data", "r2-n2-data"]
    done = gc(inv, delete=True)
    assert done.ok and done.deleted == [] and scene.snapshot_ids() == backups


def test_gc_with_another_users_catalog_never_deletes_the_backups_recorded_in_the_right_one(scene: Scene) -> None:
    from snapctl.catalog import Catalog, LocalBlobStore

    right = scene.catalog
    scene.catalog = Catalog(LocalBlobStore(scene.root / "cron-catalog"), CLUSTER)
    for day in range(3):
        scene.add_run(f"cron{day}", T0 + timedelta(days=day))
    scene.catalog = right  # the inventory's catalog, which holds one run made by hand
    scene.add_run("byhand", T0 + timedelta(days=3))
    backups = scene.snapshot_ids()

    done = gc(inventory(scene), delete=True)

    assert done.deleted == [] and scene.snapshot_ids() == backups
    assert {r.tags["snapctl-run"] for r in done.unknown_runs} == {"cron0", "cron1", "cron2"}


def test_gc_cli_lists_snapshots_of_unknown_runs_apart_and_deletes_them_only_when_told(scene: Scene) -> None:
    import json

    scene.add_run("r0", T0)
    [stranger] = scene.snapshot("r9-elsewhere", "n2")
    snapctl = gc_cli(scene)

    listed = snapctl("--delete")
    assert listed.returncode == 0, listed.stderr
    assert "1 snapshot(s) of cluster prod of runs not in this catalog" in listed.stdout
    assert f"{stranger.snapshot_id}  node n2  volume data  run r9-elsewhere" in listed.stdout
    assert "--include-unknown-runs` deletes them" in listed.stdout and stranger.snapshot_id in scene.snapshot_ids()

    refused = snapctl("--include-unknown-runs")
    assert refused.returncode == 2 and "--include-unknown-runs goes with --delete" in refused.stderr

    deleted = snapctl("--delete", "--include-unknown-runs", "-o", "json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["data"]["deleted"] == [stranger.snapshot_id]
    assert stranger.snapshot_id not in scene.snapshot_ids()


def test_gc_refuses_a_snapshot_store_that_does_not_exist(scene: Scene) -> None:
    """A mistyped or unmounted provider.store lists no snapshot: gc said "no orphaned snapshots"
    and exited 0, a wrong store read as a clean cluster."""
    from snapctl.errors import ProviderError

    scene.add_run("r0", T0)
    scene.add_run("r1-killed", T0 + timedelta(days=1), "running", recorded=False)  # orphans, in the right store
    inv = inventory(scene, store="snapshots-not-mounted")

    for delete in (False, True):
        with pytest.raises(ProviderError, match=r"the snapshot store .*/snapshots-not-mounted does not exist: gc "
                                                r"cannot tell which snapshots of cluster prod are orphaned") as caught:
            gc(inv, delete=delete)
        assert "provider.store" in caught.value.hint and "mounted" in caught.value.hint
    assert scene.catalog.read_lock() is None, "gc --delete took the lock before it refused"
    assert not (scene.root / "snapshots-not-mounted").exists()
    assert {r.snapshot_id for r in gc(inventory(scene)).orphans} == {"r1-killed-n1-data", "r1-killed-n2-data"}


def test_gc_cli_refusing_a_missing_store_exits_1_with_its_hint(scene: Scene) -> None:
    import json

    scene.add_run("r0", T0)
    snapctl = gc_cli(scene)
    (scene.root / "inv.yaml").write_text((scene.root / "inv.yaml").read_text().replace("store: snapshots",
                                                                                     "store: snapshotz"))
    said = snapctl()
    assert said.returncode == 1 and said.stdout == ""
    assert "snapctl: error: the snapshot store " in said.stderr and "snapshotz does not exist" in said.stderr
    assert "hint: check provider.store in the inventory" in said.stderr
    assert json.loads(snapctl("-o", "json").stdout)["exit_code"] == 1


def test_gc_says_why_each_run_it_passed_over_was_not_considered_and_never_that_all_is_owned(scene: Scene) -> None:
    """A run killed with its lock not expired yet had a snapshot its manifest does not name: gc said
    "every tagged snapshot has a manifest", then "not considered (run in progress, or manifest
    unreadable): RUN"."""
    import getpass
    import json
    import socket
    import subprocess

    from snapctl.catalog.lock import LockRecord, utc_now
    from snapctl.process_identity import run_owner

    scene.add_run("r0", T0)
    killed = "20240305T000000Z-aaaaaa"
    scene.add_run(killed, T0 + timedelta(days=4), "running", recorded=False)  # its snapshots, unnamed
    scene.add_run("r4-broken", T0 + timedelta(days=5))
    scene.catalog.store.write(f"{CLUSTER}/manifests/r4-broken.json", b"{ damaged")
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid runs nothing now
    now = utc_now()

    def lock(owner: str) -> None:
        record = LockRecord(owner=owner, run_id=killed, acquired_at=now, expires_at=now + timedelta(hours=1))
        scene.catalog.store.write(f"{CLUSTER}/lock.json", record.encode())

    lock(f"{getpass.getuser()}@{socket.gethostname()}:{dead.pid}")
    snapctl = gc_cli(scene)
    said = snapctl()
    assert said.returncode == 0, said.stderr
    assert "every tagged snapshot has a manifest" not in said.stdout
    assert "no orphaned snapshots of cluster prod outside the runs not considered below" in said.stdout
    assert "2 run(s) not considered: gc neither lists nor deletes their snapshots:" in said.stdout
    until = f"{(now + timedelta(hours=1)):%Y-%m-%d %H:%M:%S} UTC"
    assert (f"  run {killed}: its snapctl is gone, but its cluster lock holds until {until}: after that "
            "`snapctl gc --delete` closes the run, and lists what it left") in said.stdout
    # It points where the reason is said: `list` lists the run as its index line says, `show` reads its manifest.
    assert "  run r4-broken: its manifest cannot be read (`snapctl show r4-broken` says why)" in said.stdout
    shown = snapctl_cli(scene)("show", "r4-broken")
    assert shown.returncode == 1 and "manifest is unreadable: not valid JSON" in shown.stderr, shown.stderr
    data = json.loads(snapctl("-o", "json").stdout)["data"]
    reasons = data["skipped_reasons"]
    assert set(reasons) == {killed, "r4-broken"} and reasons[killed].startswith("its snapctl is gone")
    # docs/retention.md promises both: the runs, sorted, just before their reasons.
    assert data["skipped_runs"] == sorted(reasons)
    assert list(data).index("skipped_runs") + 1 == list(data).index("skipped_reasons")

    lock(run_owner())  # this process: a run in progress
    assert f"  run {killed}: in progress: it holds the cluster lock (until {until}" in snapctl().stdout
