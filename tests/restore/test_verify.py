"""`snapctl verify RUN`: every snapshot there and complete, without restoring anything."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys

import pytest

from snapctl.errors import ExitCode
from snapctl.verify import verify_run


def test_a_fresh_run_verifies(sqlite_cluster):
    run_id = sqlite_cluster.backup()
    result = verify_run(sqlite_cluster.inventory, "latest")
    assert result.ok and result.run_id == run_id
    assert sorted((s.node, s.volume, s.state) for s in result.snapshots) == [("n1", "data", "ok"), ("n2", "data", "ok")]


def test_a_truncated_file_and_a_deleted_snapshot_are_named(sqlite_cluster):
    run_id = sqlite_cluster.backup()
    data = sqlite_cluster.snapshot_data("n1", run_id)
    (data / "app.db").write_bytes((data / "app.db").read_bytes()[:1024])
    shutil.rmtree(sqlite_cluster.snapshot_data("n2", run_id).parent)

    result = verify_run(sqlite_cluster.inventory, run_id)

    assert not result.ok
    n1, n2 = sorted(result.snapshots, key=lambda s: s.node)
    assert n1.state == "damaged" and n1.problems[0].startswith("file app.db has 1024 bytes, recorded ")
    assert n2.state == "missing" and n2.problems == [f"snapshot {n2.snapshot_id} no longer exists"]


def test_an_engine_file_missing_from_the_snapshot_is_found(sqlite_cluster):
    run_id = sqlite_cluster.backup()
    (sqlite_cluster.snapshot_data("n2", run_id) / "app.db").unlink()
    [_, n2] = sorted(verify_run(sqlite_cluster.inventory, run_id).snapshots, key=lambda s: s.node)
    assert "file app.db is missing" in n2.problems
    assert "file app.db recorded at prepare is not in the snapshot" in n2.problems


def test_the_cli_exits_7_when_a_snapshot_is_gone(sqlite_cluster):
    run_id = sqlite_cluster.backup()
    cli = [sys.executable, "-m", "snapctl.cli", "verify", run_id, "-i", str(sqlite_cluster.inventory_path)]
    assert subprocess.run(cli, check=False, capture_output=True, text=True, timeout=60).returncode == ExitCode.OK
    shutil.rmtree(sqlite_cluster.snapshot_data("n1", run_id).parent)
    failed = subprocess.run(cli, check=False, capture_output=True, text=True, timeout=60)
    assert failed.returncode == ExitCode.VERIFY_MISMATCH
    assert "no longer exists" in failed.stdout and "n1" in failed.stdout


def test_a_no_wait_local_run_stays_pending_until_a_restore_makes_it_durable(sqlite_cluster, tmp_path):
    # verify only reads: it says what completes such a run (prune, the next backup, a restore), and does not.
    from snapctl.orchestrator import BackupOptions, backup
    from snapctl.restore import restore_run

    manifest = asyncio.run(backup(sqlite_cluster.inventory, BackupOptions(no_wait=True)))
    assert manifest.status == "succeeded" and not manifest.snapshots_completed

    pending = verify_run(sqlite_cluster.inventory, manifest.run_id)
    assert not pending.ok and {s.state for s in pending.snapshots} == {"pending"}
    why = ("its run did not wait for the disk (backup --no-wait): a prune that keeps the run, the next backup while "
           "it is the newest, or a restore of it makes it durable")
    for check in pending.snapshots:
        assert check.problems == [f"snapshot {check.snapshot_id} is still pending", why]
    assert {s.state for s in verify_run(sqlite_cluster.inventory, manifest.run_id).snapshots} == {"pending"}

    assert restore_run(sqlite_cluster.inventory, manifest.run_id, tmp_path / "restored").ok
    assert verify_run(sqlite_cluster.inventory, manifest.run_id).ok


def test_a_no_wait_local_run_verifies_once_a_prune_has_completed_it(sqlite_cluster):
    # `verify` said "2 not yet durable" (exit 7) for good: nothing but a restore completed the run.
    from snapctl.orchestrator import BackupOptions, backup
    from snapctl.prune import prune

    run_id = asyncio.run(backup(sqlite_cluster.inventory, BackupOptions(no_wait=True))).run_id
    assert verify_run(sqlite_cluster.inventory, run_id).pending

    assert prune(sqlite_cluster.inventory).completed == [run_id]

    assert verify_run(sqlite_cluster.inventory, run_id).ok


def test_a_damaged_snapshot_json_is_reported_as_damaged_not_as_missing(sqlite_cluster, tmp_path):
    from snapctl.errors import ProviderError, SnapshotNotFound
    from snapctl.restore import restore_run

    run_id = sqlite_cluster.backup()
    metadata = sqlite_cluster.snapshot_data("n2", run_id).parent / "snapshot.json"
    metadata.write_bytes(b'{"x')  # the directory and its files are all there

    [n1, n2] = sorted(verify_run(sqlite_cluster.inventory, run_id).snapshots, key=lambda s: s.node)
    assert n1.state == "ok"
    damaged = f"snapshot {n2.snapshot_id} is damaged: {metadata} is not valid JSON"
    assert n2.state == "damaged" and n2.problems == [damaged]

    with pytest.raises(ProviderError, match=re.escape(f"node n2: {damaged}")) as raised:
        restore_run(sqlite_cluster.inventory, run_id, tmp_path / "restored")
    assert not isinstance(raised.value, SnapshotNotFound)
    assert "restore another run" in raised.value.hint

    metadata.unlink()  # a restart that lost it: still there, still not a missing snapshot
    [_, n2] = sorted(verify_run(sqlite_cluster.inventory, run_id).snapshots, key=lambda s: s.node)
    assert n2.problems == [f"snapshot {n2.snapshot_id} is damaged: {metadata} is missing"]


def test_verify_of_a_no_wait_run_says_not_yet_durable_not_that_it_cannot_be_restored(sqlite_cluster, tmp_path):
    from snapctl.orchestrator import BackupOptions, backup
    from snapctl.restore import restore_run

    run_id = asyncio.run(backup(sqlite_cluster.inventory, BackupOptions(no_wait=True))).run_id
    cli = [sys.executable, "-m", "snapctl.cli", "verify", run_id, "-i", str(sqlite_cluster.inventory_path)]

    pending = subprocess.run(cli, check=False, capture_output=True, text=True, timeout=60)
    assert pending.returncode == ExitCode.VERIFY_MISMATCH
    last = pending.stdout.strip().splitlines()[-1]
    assert last == ("verify: every snapshot is there and holds its files; 2 not yet durable: `snapctl prune`, the "
                    "next backup or a restore makes them durable"), pending.stdout
    document = json.loads(subprocess.run([*cli, "-o", "json"], check=False, capture_output=True, text=True,
                                         timeout=60).stdout)["data"]
    assert document["pending"] is True and document["ok"] is False and document["verdict"] in last

    assert restore_run(sqlite_cluster.inventory, run_id, tmp_path / "restored").ok  # what the verdict promised
    done = subprocess.run(cli, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == ExitCode.OK and done.stdout.strip().endswith("every snapshot is there and complete")


def test_a_damaged_pending_snapshot_is_damaged_not_pending(sqlite_cluster):
    from snapctl.orchestrator import BackupOptions, backup

    run_id = asyncio.run(backup(sqlite_cluster.inventory, BackupOptions(no_wait=True))).run_id
    (sqlite_cluster.snapshot_data("n1", run_id) / "app.db").unlink()

    result = verify_run(sqlite_cluster.inventory, run_id)

    n1, n2 = sorted(result.snapshots, key=lambda s: s.node)
    assert (n1.state, n2.state) == ("damaged", "pending") and "file app.db is missing" in n1.problems
    assert not result.pending and result.verdict == "the run cannot be restored as recorded"


def test_a_run_made_with_another_provider_is_refused_not_reported_gone(sqlite_cluster, tmp_path):
    """A local run read through an inventory whose provider is now gcp (a migration, the wrong
    inventory): the gcp provider cannot find local snapshots, which verify called "no longer
    exists" (the run "cannot be restored"), and restore and drill failed on "no zone"."""
    from snapctl.drill import run_drill
    from snapctl.errors import BadInputError
    from snapctl.restore import restore_run
    from tests.fakes.gcp_compute import FakeGcpCompute

    run_id = sqlite_cluster.backup()
    with FakeGcpCompute() as fake:
        sqlite_cluster.edit(provider={"type": "gcp", "project": fake.project, "api_endpoint": fake.url,
                                      "anonymous": True})
        for node in ("n1", "n2"):
            fake.add_disk("europe-west1-b", f"{node}-data")
            sqlite_cluster.edit(**{f"node_{node}": {"volumes": [{"disk": f"{node}-data", "zone": "europe-west1-b",
                                                                 "name": "data"}]}})
        inventory = sqlite_cluster.inventory
        expected = rf"run {run_id} was made with the local provider, not gcp \(the inventory's\)"
        for call in (lambda: verify_run(inventory, run_id), lambda: restore_run(inventory, run_id, tmp_path / "r"),
                     lambda: run_drill(inventory, run_id, junit=tmp_path / "drill.xml")):
            with pytest.raises(BadInputError, match=expected) as caught:
                call()
            assert "provider: {type: local" in caught.value.hint
        assert fake.requests_to("POST", "/disks") == [] and not (tmp_path / "r").exists()
