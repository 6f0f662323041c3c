"""A run a SIGKILL left marked `running`, before the next backup closes it. Killed in its wait
(every snapshot taken, every node released) it is a backup: verify, restore and drill used to
refuse it as "running: nothing to restore", so that with the cluster lost right after, the newest
backup looked unrestorable. Killed earlier it is none, and is refused saying so. Meanwhile `list`
and `status` said nothing of it (status: healthy, an older failure "the newest run"), and prune and
`gc --delete`, which hold the same lock as a backup, left it running."""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import sqlite3
import subprocess
import sys
from datetime import timedelta

import pytest

from snapctl.catalog import open_catalog
from snapctl.catalog.lock import LockRecord, utc_now
from snapctl.errors import BadInputError
from snapctl.process_identity import run_owner
from tests.restore.conftest import ROWS

STOPPED = "running, its snapctl gone: the next backup, prune or gc --delete closes it"


def _dead_owner() -> str:
    process = subprocess.Popen(["true"])
    process.wait()  # reaped: no process has its pid now
    return f"{getpass.getuser()}@{socket.gethostname()}:{process.pid}"


def _left_running(cluster, *, lock_owner: str | None = None, expired: bool = False, taken_of: tuple = ()) -> str:
    """What a snapctl killed in its wait leaves: step 8's manifest, still running, naming every
    snapshot (but those of the nodes in ``taken_of``, when killed earlier), and its lock, as it was
    (live, of ``lock_owner``) or ``expired``."""
    run_id = cluster.backup()
    catalog = open_catalog(cluster.inventory)
    manifest = catalog.load(run_id)
    manifest.status, manifest.finished_at, manifest.snapshots_completed = "running", None, False
    for node in taken_of:
        manifest.nodes[node].snapshots, manifest.nodes[node].complete_acked_at = [], None
    catalog.save(manifest)
    now = utc_now()
    expires = now - timedelta(seconds=1) if expired else now + timedelta(hours=1)
    lock = LockRecord(owner=lock_owner or _dead_owner(), run_id=run_id, acquired_at=now - timedelta(minutes=1),
                      expires_at=expires)
    catalog.store.write(f"{catalog.cluster}/lock.json", lock.encode())
    return run_id


def snapctl(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapctl.cli", *args, "-i", str(cluster.inventory_path)],
                          cwd=cluster.directory, capture_output=True, text=True, timeout=180, check=False)


def test_a_run_killed_in_its_wait_is_verified_restored_and_drilled_as_the_backup_it_is(sqlite_cluster, tmp_path):
    from snapctl.drill import run_drill
    from snapctl.restore import restore_run
    from snapctl.verify import verify_run

    run_id = _left_running(sqlite_cluster)  # its lock still live: the killed process held it
    said = f"run {run_id} is still marked running, but its snapctl is gone and every snapshot was taken"

    verified = verify_run(sqlite_cluster.inventory, run_id)
    assert verified.ok and [w for w in verified.warnings if w.startswith(said)], verified.warnings

    restored = restore_run(sqlite_cluster.inventory, run_id, to=tmp_path / "restored")
    assert restored.ok and [w for w in restored.warnings if w.startswith(said)], restored.warnings
    with sqlite3.connect(tmp_path / "restored" / "n1" / "data" / "app.db") as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == ROWS

    report = run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "drill.xml")
    assert report.ok and [w for w in report.warnings if w.startswith(said)], report.warnings

    # None of them holds the lock: the catalog still says running, for the next backup to close.
    assert open_catalog(sqlite_cluster.inventory).load(run_id).status == "running"

    verify = snapctl(sqlite_cluster, "verify", run_id)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert said in " ".join(verify.stderr.split()), verify.stderr


def test_latest_names_a_newer_run_killed_in_its_wait(sqlite_cluster, tmp_path):
    # `latest` stays the newest succeeded run, but no longer passes over a newer backup unsaid.
    from snapctl.restore import restore_run
    from snapctl.verify import verify_run

    older = sqlite_cluster.backup()
    dead = _left_running(sqlite_cluster)
    said = f"latest is run {older}, not run {dead} (started "
    verified = verify_run(sqlite_cluster.inventory, "latest")
    assert verified.run_id == older and [w for w in verified.warnings if w.startswith(said)], verified.warnings
    restored = restore_run(sqlite_cluster.inventory, "latest", to=tmp_path / "restored")
    assert restored.run_id == older and [w for w in restored.warnings if w.startswith(said)], restored.warnings
    assert not [w for w in verify_run(sqlite_cluster.inventory, older).warnings if w.startswith(said)]


def test_a_run_whose_snapctl_may_still_run_is_refused_as_running(sqlite_cluster, tmp_path):
    from snapctl.verify import verify_run

    run_id = _left_running(sqlite_cluster, lock_owner=run_owner())  # this process: alive, holding it
    with pytest.raises(BadInputError, match=f"run {run_id} running: it has no snapshots to verify"):
        verify_run(sqlite_cluster.inventory, run_id)
    listed = json.loads(snapctl(sqlite_cluster, "list", "-o", "json").stdout)["data"]["runs"]
    assert [(r["status"], r["error"]) for r in listed] == [("running", None)]


def test_a_run_killed_before_it_took_every_snapshot_is_refused_saying_so(sqlite_cluster, tmp_path):
    from snapctl.restore import restore_run
    from snapctl.verify import verify_run

    run_id = _left_running(sqlite_cluster, expired=True, taken_of=("n2",))
    stopped = (f"run {run_id} running, but snapctl stopped before it took every snapshot: it is no backup; the next "
               "backup, prune or gc --delete closes it")
    with pytest.raises(BadInputError, match=stopped):
        verify_run(sqlite_cluster.inventory, run_id)
    with pytest.raises(BadInputError, match=stopped):
        restore_run(sqlite_cluster.inventory, run_id, to=tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_list_and_status_show_a_dead_run_as_stopped_and_the_newest_run(sqlite_cluster):
    from snapctl.status import collect_status
    from tests.status.conftest import validated

    sqlite_cluster.backup()
    failed = sqlite_cluster.backup()
    catalog = open_catalog(sqlite_cluster.inventory)
    manifest = catalog.load(failed)
    manifest.status, manifest.error = "failed", "preflight refused (injected)"
    catalog.save(manifest)
    dead = _left_running(sqlite_cluster)

    listed = json.loads(snapctl(sqlite_cluster, "list", "-o", "json").stdout)["data"]["runs"]
    assert (listed[0]["run_id"], listed[0]["status"], listed[0]["error"]) == (dead, "running", STOPPED)

    status = asyncio.run(collect_status(sqlite_cluster.inventory))
    findings = {f.message: f for f in status.verdict.findings if f.subject == "backups"}
    assert findings[f"run {dead} {STOPPED}"].severity == "degraded"
    assert status.verdict.level == "degraded"
    assert status.latest_failure.run_id == dead  # not the older failure
    backups = validated(status)["data"]["backups"]  # against docs/status.schema.json
    assert (backups["latest_failure"]["status"], backups["latest_failure"]["error"]) == ("running", STOPPED)
    assert not [m for m in findings if m.startswith(f"the newest run {failed}")]
    # Its lock is still live: the finding says what the refusal a backup would meet says.
    [held] = [f for m, f in findings.items() if m.startswith(f"run {dead} by ")]
    assert held.hint and held.hint.startswith("that process is no longer running on this host"), held.hint


def test_prune_closes_a_dead_run_as_a_backup_does(sqlite_cluster):
    from snapctl.prune import prune

    run_id = _left_running(sqlite_cluster, expired=True)
    prune(sqlite_cluster.inventory)
    closed = open_catalog(sqlite_cluster.inventory).load(run_id)
    assert closed.status == "succeeded" and not closed.error
    assert closed.degradations[-1].startswith("closed by run prune-"), closed.degradations


def test_gc_delete_closes_a_dead_run_and_deletes_the_snapshots_it_does_not_name(sqlite_cluster):
    from snapctl.gc import gc

    run_id = _left_running(sqlite_cluster, expired=True, taken_of=("n2",))
    unnamed = sorted((sqlite_cluster.directory / "store" / "restore-test" / "n2").glob(f"{run_id}-*"))
    assert unnamed

    result = gc(sqlite_cluster.inventory, delete=True)
    closed = open_catalog(sqlite_cluster.inventory).load(run_id)
    assert closed.status == "failed" and closed.error.startswith("abandoned: snapctl stopped"), closed.error
    assert result.ok and result.deleted and not any(p.exists() for p in unnamed)


def test_a_run_that_ends_between_the_listing_and_the_locks_read_is_not_shown_dead(sqlite_cluster, monkeypatch):
    # The run saves its success, then releases its lock: listed before the save and the lock read
    # after the release, it looked like a run whose snapctl was gone.
    from snapctl.abandoned_runs import listed
    from snapctl.catalog.catalog import Catalog

    run_id = _left_running(sqlite_cluster, expired=True)
    catalog = open_catalog(sqlite_cluster.inventory)
    entries, _ = catalog.list()
    real_read_lock = Catalog.read_lock

    def the_run_ends_first(self):
        manifest = self.load(run_id)
        manifest.status, manifest.finished_at = "succeeded", utc_now()
        self.save(manifest)
        return real_read_lock(self)

    monkeypatch.setattr(Catalog, "read_lock", the_run_ends_first)
    assert [(e.run_id, e.error) for e in listed(catalog, entries)] == [(run_id, None)]


def test_show_says_of_a_dead_run_what_list_says_and_nothing_of_a_live_one(sqlite_cluster):
    # `list` said "running, its snapctl gone: ..." while `show RUN` said only "running".
    dead = _left_running(sqlite_cluster)

    shown = snapctl(sqlite_cluster, "show", dead)
    assert shown.returncode == 0, shown.stderr
    assert f"run {dead} of cluster" in shown.stdout and ": running," in shown.stdout
    assert f"warning: run {dead}: {STOPPED}" in shown.stderr
    as_json = snapctl(sqlite_cluster, "show", dead, "-o", "json")
    assert json.loads(as_json.stdout)["data"]["status"] == "running"  # the document stays the manifest
    assert f"warning: run {dead}: {STOPPED}" in as_json.stderr
    listed = json.loads(snapctl(sqlite_cluster, "list", "-o", "json").stdout)["data"]["runs"]
    assert [r["error"] for r in listed if r["run_id"] == dead] == [STOPPED]  # the same judgement

    catalog, now = open_catalog(sqlite_cluster.inventory), utc_now()
    alive = LockRecord(owner=run_owner(), run_id=dead, acquired_at=now, expires_at=now + timedelta(hours=1))
    catalog.store.write(f"{catalog.cluster}/lock.json", alive.encode())  # this process: its snapctl, alive
    assert "its snapctl gone" not in snapctl(sqlite_cluster, "show", dead).stderr
