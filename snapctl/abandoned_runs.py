"""Runs another snapctl left marked running: closed by the next backup, which holds the cluster
lock, so whatever still says running died unfinished (SIGKILL, a lost host, a CI job's timeout).

How such a run ended is read from its manifest. One that died before its snapshots were all
taken failed: its agents' leases released its nodes, and `snapctl gc` lists the snapshots it made.
One that died after (step 8 recorded every node's snapshot, every node released, and nothing had
gone wrong yet) died while it waited for the snapshots to complete, or when it came to record its
success: its snapshots are a backup, exactly as a `backup --no-wait` run's are, so it is closed
as one (succeeded, ``snapshots_completed`` false), and prune and verify ask the provider whether
they completed, as they do for those. A rollback that began after step 8 records its cause
first, so that a run killed while deleting its snapshots is never taken for a backup; where that
record cannot be written (the catalog failing too) it deletes nothing, so that a record naming
every snapshot with no error always names snapshots that are there.

Prune and `gc --delete` close them too, under the same lock. Until one of them runs, what reads
the catalog without the lock tells such a run from a live one by the lock alone (``owner_gone``):
`list` and `status` show it stopped, and verify, restore and drill take one that took every
snapshot for the backup it will be closed as.
"""

from __future__ import annotations

from datetime import UTC, datetime

from snapctl.catalog import Catalog
from snapctl.catalog.index import index_entry
from snapctl.catalog.lock import LockRecord, gone_from_this_host, may_live_on_this_host, utc_now
from snapctl.errors import BadInputError, CatalogError, SnapctlError
from snapctl.manifest import IndexEntry, Manifest

STOPPED = "running, its snapctl gone: the next backup, prune or gc --delete closes it"


def close_abandoned_runs(catalog: Catalog, run_id: str) -> None:
    """Close every run but ``run_id`` that the catalog lists unfinished and whose manifest still
    says running. A run that died after its manifest said how it ended, but before its index line
    did, is not one of them: listing read that manifest and put its status into the index."""
    for entry in catalog.unfinished():
        if entry.run_id == run_id:
            continue
        try:
            stale = catalog.load(entry.run_id)
            if stale.status != "running":
                continue
            stale.finished_at = datetime.now(UTC)
            # Never "abandoned" for a rollback under way: gc leaves what an abandoned run names (older
            # snapctl closed runs killed in their wait so), and a rollback's leftovers are gc's.
            if stale.error is not None:  # a rollback after step 8 recorded its cause first
                stale.status = "failed"
                stale.error = (f"rolled back: snapctl stopped while rolling the run back ({stale.error}); run "
                               f"{run_id} closed it; `snapctl gc` lists the snapshots it had not deleted")
            elif every_snapshot_taken(stale):
                keep_unconfirmed(stale, f"closed by run {run_id}: snapctl stopped")
            else:
                stale.status = "failed"
                stale.error = (f"abandoned: snapctl stopped before the run finished (run {run_id} found it "
                               "unfinished); its nodes were released by their leases, `snapctl gc` lists its "
                               "snapshots that this manifest does not name")
            catalog.save(stale)
        except SnapctlError:
            continue  # a record we cannot fix is no reason to refuse a backup


def owner_gone(run_id: str, lock: LockRecord | None, now: datetime) -> bool:
    """Whether the snapctl of run ``run_id``, still marked running, is proven gone, from the cluster
    lock alone and without taking it: the lock is no longer the run's (released, expired, or taken
    by another run, which closes it: what ``close_abandoned_runs`` relies on), or its owner's
    process no longer exists on this host. A run keeps its lock from before its manifest is first
    saved until after its last save, so a live run always holds it."""
    if lock is None or lock.run_id != run_id or lock.released_at is not None:
        return True
    if not lock.held_at(now):
        # Expired, but its owner's pid lives here: a run whose renewals failed (the catalog down
        # for a while) is not proven dead; prune or a backup taking the lock over then closes it.
        return not may_live_on_this_host(lock)
    return gone_from_this_host(lock)


def marked_stopped(catalog: Catalog, entries: list[IndexEntry], lock: LockRecord | None) -> list[IndexEntry]:
    """``entries`` (listed before ``lock`` was read) with each running run whose snapctl is gone
    saying so in its error: what `list` and `status` show until a backup, prune or gc --delete
    closes it. Its manifest is read again: a run that ended between the listing and the lock's
    read released the lock, and is no dead run."""
    now, marked = utc_now(), []
    for entry in entries:
        if entry.status == "running" and owner_gone(entry.run_id, lock, now) and _still_running(catalog, entry.run_id):
            entry = entry.model_copy(update={"error": STOPPED})
        marked.append(entry)
    return marked


def _still_running(catalog: Catalog, run_id: str) -> bool:
    try:
        return catalog.load(run_id).status == "running"
    except SnapctlError:
        return False  # deleted meanwhile, or unreadable: the listing reports it


def listed(catalog: Catalog, entries: list[IndexEntry]) -> list[IndexEntry]:
    """``entries`` as `snapctl list` shows them (``marked_stopped``); as they are if the lock cannot be read."""
    try:
        lock = catalog.read_lock()
    except SnapctlError:
        return entries  # proves nothing: `status` and a backup report the lock
    return marked_stopped(catalog, entries, lock)


def stopped_warning(catalog: Catalog, manifest: Manifest) -> list[str]:
    """For `snapctl show`: what `list` says of the run, when it says its snapctl is gone (judged by
    ``listed`` itself, so that the two never disagree)."""
    if manifest.status != "running":
        return []
    [entry] = listed(catalog, [index_entry(manifest)])
    return [f"run {manifest.run_id}: {STOPPED}"] if entry.error == STOPPED else []


def as_stopped_backup(catalog: Catalog, manifest: Manifest) -> str | None:
    """For verify, restore and drill, which take no lock: a run still marked running whose snapctl
    is gone and which took every snapshot is the backup the next backup, prune or gc --delete will
    close it as, so ``manifest`` is made that here (in memory only) and a warning saying so is
    returned. One stopped before that is refused, truthfully; None: its snapctl may still run."""
    if manifest.status != "running":
        return None
    try:
        lock = catalog.read_lock()
    except SnapctlError:
        return None  # an unreadable lock proves nothing: refused as a running run
    if not owner_gone(manifest.run_id, lock, utc_now()) or not _still_running(catalog, manifest.run_id):
        return None  # the second: it ended between its load and the lock's read, which a retry sees
    closes = "the next backup, prune or gc --delete closes it"
    if manifest.error is not None or not every_snapshot_taken(manifest):
        how = (f"while it rolled the run back ({manifest.error})" if manifest.error is not None
               else "before it took every snapshot")
        raise BadInputError(f"run {manifest.run_id} running, but snapctl stopped {how}: it is no backup; {closes} "
                            "(as failed)", hint="pick a succeeded run from `snapctl list`")
    keep_unconfirmed(manifest, "snapctl stopped")
    return (f"run {manifest.run_id} is still marked running, but its snapctl is gone and every snapshot was taken: "
            f"used as the backup {closes} as (succeeded, its snapshots not confirmed complete)")


def newer_stopped_backups(catalog: Catalog, chosen: Manifest,
                          unfinished: list[IndexEntry] | None = None) -> list[str]:
    """For `latest`, which is the newest succeeded run: a warning for each newer run a killed
    snapctl left running after it took every snapshot (``as_stopped_backup`` would use it), so
    that a restore in a disaster is not of an older backup without a word. ``unfinished``: the
    runs still running as the lookup of `latest` listed them (else listed now); each is read again
    before it is named, so one that ended since the listing is not."""
    try:
        lock = catalog.read_lock()
        if unfinished is None:
            unfinished = catalog.unfinished()
    except SnapctlError:
        return []
    now, found = utc_now(), []
    for entry in unfinished:
        if entry.started_at <= chosen.started_at or not owner_gone(entry.run_id, lock, now):
            continue
        try:
            stopped = catalog.load(entry.run_id)
        except SnapctlError:
            continue
        if stopped.status == "running" and every_snapshot_taken(stopped):
            found.append(f"latest is run {chosen.run_id}, not run {stopped.run_id} (started "
                         f"{stopped.started_at:%Y-%m-%d %H:%M:%S}Z), a backup a killed snapctl left marked running "
                         f"after it took every snapshot: name run {stopped.run_id} to use it")
    return found


def stored_with_snapshots(catalog: Catalog, run_id: str) -> bool:
    """Whether the run's manifest in the catalog names snapshots; True when it cannot be read."""
    try:
        stored = catalog.load(run_id)
    except SnapctlError:
        return True  # kept then: gc lists them once no manifest names them
    return any(record.snapshots for record in stored.nodes.values())


def keep_unconfirmed(manifest: Manifest, how: str) -> None:
    """Mark a run that stopped while it waited for its snapshots to complete as the backup it is:
    succeeded, ``snapshots_completed`` left false, as a `backup --no-wait` run's."""
    manifest.status = "succeeded"
    manifest.finished_at = manifest.finished_at or datetime.now(UTC)
    manifest.degradations.append(
        f"{how} while it waited for the snapshots to complete, after every node's were taken and the node "
        "released; kept as a backup --no-wait run is (prune and verify ask the provider whether they completed)")


def every_snapshot_taken(manifest: Manifest) -> bool:
    """What the manifest of a run saved at step 8 says, and of no run saved before it or failing:
    every node's snapshots recorded and its hold completed, no error anywhere."""
    return (manifest.error is None and bool(manifest.nodes)
            and all(record.snapshots and record.complete_acked_at is not None and record.error is None
                    for record in manifest.nodes.values()))


def save_success(catalog: Catalog, manifest: Manifest) -> None:
    """A run's last save, of its success. Failing, the run is not rolled back: its snapshots are a
    backup and every node is released, so the error says so, and the next backup closes the run
    as one (``close_abandoned_runs``)."""
    try:
        catalog.save(manifest)
    except SnapctlError as exc:
        completed = " and they completed" if manifest.snapshots_completed else ""
        raise CatalogError(
            f"backup {manifest.run_id} took every snapshot{completed}, but the catalog could not record its "
            f"success: {exc.message}",
            hint="nothing was rolled back and every node is released; the next backup records the run as a backup "
                 "whose snapshots are not confirmed complete (prune and `snapctl verify` ask the provider); "
                 + (exc.hint or "check the catalog"),
        ) from exc
