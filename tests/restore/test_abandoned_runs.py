"""A run another snapctl left `running`, closed by the next backup: kept as the backup it is when
its record names every snapshot with no error, which a rollback therefore never leaves behind
with its snapshots deleted; and what `snapctl gc` makes of a run an older snapctl closed as
abandoned. And a prune stopped at the awkward moments: inside a run's mark, and between two runs."""

from __future__ import annotations

import asyncio

import pytest

from snapctl.catalog import open_catalog
from snapctl.catalog.catalog import Catalog
from snapctl.errors import CatalogError, Interrupted, ProviderError, SnapctlError
from snapctl.orchestrator import BackupOptions, backup


def _snapshot_dirs(cluster, run_id: str) -> list:
    return sorted((cluster.directory / "store" / "restore-test").glob(f"*/{run_id}-*"))


def _backup(cluster):
    return asyncio.run(backup(cluster.inventory, BackupOptions(prune=False)))


def test_a_rollback_after_step_8_that_cannot_record_itself_first_deletes_nothing(sqlite_cluster, monkeypatch):
    # The wait failed in the same outage that took the catalog away: the rollback could not record
    # its cause first, deleted every snapshot, and could not record that either. Step 8's
    # manifest, naming them all with no error, then read as a run killed in its wait, and the
    # next backup kept it: a "good backup" whose snapshots were gone.
    from snapctl_local.provider import LocalProvider

    real_save, saves = Catalog.save, []

    def save_then_fail(self, manifest):
        saves.append(manifest.status)
        if len(saves) > 2:  # the run's start and step 8 written; then the catalog is gone
            raise CatalogError("catalog unreachable (injected)")
        return real_save(self, manifest)

    def failing_wait(self, refs, deadline, progress=None):
        raise ProviderError(f"snapshot {refs[0].snapshot_id} did not complete (injected)")

    monkeypatch.setattr(Catalog, "save", save_then_fail)
    monkeypatch.setattr(LocalProvider, "wait", failing_wait)
    with pytest.raises(SnapctlError, match="did not complete") as failed:
        _backup(sqlite_cluster)
    monkeypatch.undo()
    assert "catalog unreachable" in str(failed.value)  # the failure could not be recorded: said
    [entry] = open_catalog(sqlite_cluster.inventory).list()[0]
    assert len(_snapshot_dirs(sqlite_cluster, entry.run_id)) == 2  # kept, as the record still names them

    # The record names every snapshot, and they are there: a run closed as kept is no empty one.
    assert _backup(sqlite_cluster).status == "succeeded"
    closed = open_catalog(sqlite_cluster.inventory).load(entry.run_id)
    assert closed.status == "succeeded" and closed.degradations[-1].startswith("closed by run")
    assert len(_snapshot_dirs(sqlite_cluster, entry.run_id)) == 2


def test_a_step_8_manifest_written_without_its_index_line_is_rolled_back_deleting_nothing(sqlite_cluster,
                                                                                         monkeypatch):
    # Step 8's save wrote the manifest and failed on the (larger) index rewrite: the disk filled.
    real_save, saves = Catalog.save, []

    def disk_filling(self, manifest):
        saves.append(manifest.status)
        if len(saves) == 2:
            self.store.write(self._manifest_key(manifest.run_id), manifest.model_dump_json(indent=2).encode())
            raise CatalogError("no space left on device (injected, the index)")
        if len(saves) > 2:
            raise CatalogError("no space left on device (injected)")
        return real_save(self, manifest)

    monkeypatch.setattr(Catalog, "save", disk_filling)
    with pytest.raises(SnapctlError, match="no space left on device"):
        _backup(sqlite_cluster)
    monkeypatch.undo()
    [entry] = open_catalog(sqlite_cluster.inventory).list()[0]
    assert len(_snapshot_dirs(sqlite_cluster, entry.run_id)) == 2

    assert _backup(sqlite_cluster).status == "succeeded"
    assert open_catalog(sqlite_cluster.inventory).load(entry.run_id).status == "succeeded"
    assert len(_snapshot_dirs(sqlite_cluster, entry.run_id)) == 2


def test_gc_leaves_what_a_run_closed_as_abandoned_by_an_older_snapctl_names(sqlite_cluster):
    # Before runs killed in their wait were kept as backups, the next run closed them failed,
    # "abandoned", their manifest naming every snapshot: gc must not take those for a rollback's.
    from snapctl.gc import gc

    run_id = sqlite_cluster.backup()
    catalog = open_catalog(sqlite_cluster.inventory)
    manifest = catalog.load(run_id)
    manifest.status, manifest.snapshots_completed = "failed", False
    manifest.error = ("abandoned: snapctl stopped before the run finished (run X found it unfinished); its nodes were "
                      "released by their leases, `snapctl gc` lists its snapshots that this manifest does not name")
    catalog.save(manifest)

    assert gc(sqlite_cluster.inventory, delete=True).deleted == []
    assert len(_snapshot_dirs(sqlite_cluster, run_id)) == 2


def test_a_prune_stopped_inside_a_runs_mark_unmarks_it(sqlite_cluster, monkeypatch):
    # The mark written, the Ctrl-C landed before the update returned: the run was in no list of
    # the prune's, so it stayed condemned, and the hint named nothing. (The marks' index lines come
    # after every mark, in one write.)
    from snapctl.catalog.local import LocalBlobStore
    from snapctl.prune import prune

    sqlite_cluster.edit(retention={"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    runs = [_backup(sqlite_cluster).run_id for _ in range(3)]
    real_replace, marks = LocalBlobStore.replace, []

    def replace_then_interrupt(self, key, data, expected):
        done = real_replace(self, key, data, expected)
        if b'"pruning"' in data:
            marks.append(key)
            if len(marks) == 1:  # the first run's mark
                raise KeyboardInterrupt
        return done

    monkeypatch.setattr(LocalBlobStore, "replace", replace_then_interrupt)
    with pytest.raises(Interrupted) as stopped:
        prune(sqlite_cluster.inventory)
    monkeypatch.undo()

    catalog = open_catalog(sqlite_cluster.inventory)
    assert {catalog.load(r).status for r in runs} == {"succeeded"}
    assert stopped.value.hint == f"the runs it had marked but not begun to delete are unmarked ({runs[0]})"


def test_a_prune_stopped_between_two_runs_names_no_deleted_run_as_still_marked(sqlite_cluster, monkeypatch):
    from snapctl.catalog.lock import ThreadLockKeeper
    from snapctl.prune import prune

    sqlite_cluster.edit(retention={"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    first, second, third = (_backup(sqlite_cluster).run_id for _ in range(3))
    manifest = sqlite_cluster.directory / "catalog" / "restore-test" / "manifests" / f"{first}.json"
    real_check, fired = ThreadLockKeeper.check, []

    def check(self):
        if not manifest.exists() and not fired:  # the first run wholly deleted: Ctrl-C now
            fired.append(True)
            raise KeyboardInterrupt
        return real_check(self)

    monkeypatch.setattr(ThreadLockKeeper, "check", check)
    with pytest.raises(Interrupted) as stopped:
        prune(sqlite_cluster.inventory)
    monkeypatch.undo()

    assert fired and first not in (stopped.value.hint or "")
    assert stopped.value.hint == f"the runs it had marked but not begun to delete are unmarked ({second})"
    assert open_catalog(sqlite_cluster.inventory).load(second).status == "succeeded"
    assert third in {e.run_id for e in open_catalog(sqlite_cluster.inventory).list()[0]}

