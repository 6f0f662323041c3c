"""`snapctl gc`: snapshots of the cluster that no run owns, and what dead calls left behind.

Every snapshot tagged with this cluster that no manifest owns, or that only the manifest of a
failed run names (what its rollback could not delete). Snapshots of the run holding
the lock (a backup in progress) and of runs whose manifest is unreadable are never orphans. Those
of runs this catalog has never heard of are listed apart, and deleted only when asked to: every
run writes its manifest before its first snapshot, so they are another catalog's backups (an
older copy of this one, restored; another user's), not leftovers. And
what provider calls that died part-way left in the store that is no snapshot (the local
provider's ``.partial-*`` copies): the provider lists only those no running call is using. And
the scratch directories and engines of drills killed outright on this host
(``snapctl.drill_leftovers``), which the next drill would clean up too. And the temp files of
catalog writes killed between write and rename (a local catalog's; an S3 PUT leaves none).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from snapctl.abandoned_runs import close_abandoned_runs, owner_gone
from snapctl.catalog import Catalog, open_catalog
from snapctl.catalog.index import PRUNING
from snapctl.catalog.local import CatalogTemp
from snapctl.catalog.lock import LockRecord, ThreadLockKeeper
from snapctl.drill_leftovers import clean_abandoned, find_abandoned
from snapctl.errors import CatalogError, ProviderError, SnapctlError, SnapshotNotFound
from snapctl.manifest import IndexEntry
from snapctl.providers import TAG_CLUSTER, TAG_RUN, Leftover, Provider, SnapshotRef, open_provider
from snapctl.restore_leftovers import (
    clean_killed_restores,
    find_abandoned_restores,
    find_killed_restores,
    finish_abandoned_restores,
    unfinished_restores,
)

if TYPE_CHECKING:
    from snapctl.config import Inventory


@dataclass
class GcResult:
    cluster: str
    delete: bool
    orphans: list[SnapshotRef]
    # Tagged with a run id that no manifest or index line of this catalog has: not deleted
    # unless ``include_unknown_runs``.
    unknown_runs: list[SnapshotRef] = field(default_factory=list)
    include_unknown_runs: bool = False
    deleted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # snapshot id, or a leftover's path -> why not deleted
    skipped_reasons: dict[str, str] = field(default_factory=dict)  # runs whose snapshots were not considered -> why
    leftovers: list[Leftover] = field(default_factory=list)  # what dead provider calls left that is no snapshot
    leftovers_deleted: list[str] = field(default_factory=list)  # their paths
    killed_drills: list[str] = field(default_factory=list)  # drills killed outright on this host, and their scratch
    killed_drills_cleaned: list[str] = field(default_factory=list)  # --delete: what was done of each
    killed_restores: list[str] = field(default_factory=list)  # staging copies of restores killed on this host
    killed_restores_cleaned: list[str] = field(default_factory=list)  # --delete: what was done of each
    # Unfinished records of restores whose process is gone from this host (killed outright), each
    # keeping its run from prune for a day; --delete finishes them as abandoned.
    abandoned_restores: list[str] = field(default_factory=list)
    abandoned_restores_finished: list[str] = field(default_factory=list)  # --delete: what was done of each
    catalog_temps: list[CatalogTemp] = field(default_factory=list)  # of catalog writes killed before their rename
    catalog_temps_deleted: list[str] = field(default_factory=list)  # their paths
    # --delete: runs the index listed whose manifest was missing and of which no snapshot was left,
    # their lines taken out (``forget_emptied_runs``)
    forgotten_runs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def skipped_runs(self) -> list[str]:
        """The runs whose snapshots were not considered: each has its reason."""
        return sorted(self.skipped_reasons)


# -- gc ------------------------------------------------------------------------------------------


def gc(inventory: Inventory, *, delete: bool = False, include_unknown_runs: bool = False) -> GcResult:
    """`snapctl gc`: list orphans; with ``delete``, take the cluster lock and delete them, and with
    ``include_unknown_runs`` too the snapshots of runs this catalog has never heard of."""
    catalog = open_catalog(inventory)
    provider = open_provider(inventory)
    _refuse_a_missing_store(catalog, provider)
    if not delete:
        result = find_orphans(catalog, provider)
        result.killed_drills = [drill.listed() for drill in find_abandoned(catalog)]
        records = unfinished_restores(catalog)
        killed_restores, unseen = find_killed_restores(records, inventory, provider)
        result.killed_restores = [line for _, line in killed_restores]
        result.abandoned_restores = [restore.listed(unseen) for restore in find_abandoned_restores(records, inventory)]
        result.catalog_temps = _catalog_temps(catalog)
        return result
    if not catalog.store.list(f"{catalog.cluster}/manifests/"):  # refused before its lock is made there
        _refuse_a_wrong_catalog(catalog, provider.find({TAG_CLUSTER: catalog.cluster}))
    with ThreadLockKeeper(catalog, inventory.policy.lock_ttl_s, "gc") as locked:
        # First, as a backup does under the lock: a dead run's snapshots its manifest does not name
        # are orphans once it is closed, and are deleted now rather than by the gc after a backup.
        close_abandoned_runs(catalog, locked.run_id)
        forgotten = forget_emptied_runs(catalog, provider, locked.check)
        result = find_orphans(catalog, provider, ours=locked.run_id)
        result.delete, result.include_unknown_runs, result.forgotten_runs = True, include_unknown_runs, forgotten
        for ref in result.orphans + (result.unknown_runs if include_unknown_runs else []):
            locked.check()
            try:
                delete_snapshot(provider, ref, catalog.cluster)
                result.deleted.append(ref.snapshot_id)
            except SnapctlError as exc:
                result.failed[ref.snapshot_id] = exc.message
        for leftover in result.leftovers:
            locked.check()
            try:
                provider.delete_leftover(leftover)  # type: ignore[attr-defined]  # listed, so it has one
                result.leftovers_deleted.append(leftover.path)
            except SnapctlError as exc:
                result.failed[leftover.path] = exc.message
        locked.check()
        killed = find_abandoned(catalog)
        result.killed_drills = [drill.listed() for drill in killed]
        cleaned = clean_abandoned(catalog, killed, f"gc {locked.run_id}", provider)
        for drill, (line, done) in zip(killed, cleaned, strict=True):
            result.killed_drills_cleaned.append(line)
            if not done:
                result.failed[str(drill.scratch)] = line
        locked.check()
        records = unfinished_restores(catalog)  # read once: the clean-up below writes no record
        killed_restores, unseen = find_killed_restores(records, inventory, provider)
        result.killed_restores = [line for _, line in killed_restores]
        result.killed_restores_cleaned = clean_killed_restores(provider, killed_restores, result.failed, locked.check)
        abandoned = find_abandoned_restores(records, inventory)  # finished after the clean-up: its failures keep one
        result.abandoned_restores = [restore.listed(unseen) for restore in abandoned]
        result.abandoned_restores_finished = finish_abandoned_restores(catalog, abandoned, result.failed, unseen,
                                                                       f"gc {locked.run_id}", locked.check)
        result.catalog_temps = _catalog_temps(catalog)
        for temp in result.catalog_temps:
            locked.check()
            try:
                if catalog.store.remove_temp(temp):  # type: ignore[attr-defined]  # found, so it has one
                    result.catalog_temps_deleted.append(temp.path)
            except SnapctlError as exc:
                result.failed[temp.path] = exc.message
        return result


def _catalog_temps(catalog: Catalog) -> list[CatalogTemp]:
    """What catalog writes killed between write and rename left in the cluster's directory; none
    for a store that writes no temp files."""
    find = getattr(catalog.store, "find_temps", None)
    return find(catalog.cluster) if find is not None else []


def find_orphans(catalog: Catalog, provider: Provider, ours: str | None = None) -> GcResult:
    """``ours``: the run id of the lock the caller holds, which is not a run in progress."""
    entries, _ = catalog.list()
    stored = stored_runs(catalog)  # every manifest file names a run, readable or not: it may own snapshots
    why = {run_id: _unreadable(run_id) for run_id in stored - {e.run_id for e in entries}}
    # Lost manifests: their snapshots may be all that is left.
    why |= dict.fromkeys(catalog.runs_without_manifest(), "its manifest is missing, though the index lists the run")
    named, unreadable, failed = named_by(catalog, [e.run_id for e in entries])
    owned = owned_by_live_runs(named, failed)
    why |= {run_id: _unreadable(run_id) for run_id in unreadable}  # deleted or damaged since we listed: do not guess
    tagged = provider.find({TAG_CLUSTER: catalog.cluster})
    if not stored and not entries:
        _refuse_a_wrong_catalog(catalog, tagged)
    for run_id in emptied_runs(catalog.lines_without_manifest(), tagged):
        why[run_id] = ("its manifest is missing, though the index lists the run, and none of its snapshots is left: "
                       "`snapctl gc --delete` (or the next prune) forgets it")
    # After the snapshots were found: a backup in progress then holds the lock now (its snapshots are
    # not in its manifest yet), or has finished, and its manifest, read again, names them.
    lock, now = catalog.read_lock(), datetime.now(UTC)
    if lock is not None and lock.held_at(now) and lock.run_id != ours:
        why[lock.run_id] = _held(lock, now)
    unowned = {ref.tags.get(TAG_RUN, "") for ref in tagged if ref.snapshot_id not in owned} - set(why)
    named, unreadable, failed = named_by(catalog, sorted(unowned & stored_runs(catalog)))
    owned |= owned_by_live_runs(named, failed)
    why |= {run_id: _unreadable(run_id) for run_id in unreadable}  # damaged meanwhile, or deleted: do not guess
    protected = set(why)
    unowned_refs = [ref for ref in tagged if ref.snapshot_id not in owned and ref.tags.get(TAG_RUN) not in protected]
    # Read after the snapshots were found, like the lock: a run saved meanwhile is known.
    known = stored_runs(catalog) | {e.run_id for e in entries} | protected
    orphans = [ref for ref in unowned_refs if ref.tags.get(TAG_RUN, "") in known]
    unknown = [ref for ref in unowned_refs if ref.tags.get(TAG_RUN, "") not in known]
    find_leftovers = getattr(provider, "find_leftovers", None)
    leftovers = find_leftovers() if find_leftovers is not None else []
    return GcResult(catalog.cluster, False, orphans, unknown, skipped_reasons=dict(sorted(why.items())),
                    leftovers=leftovers)


def emptied_runs(lost: list[IndexEntry], tagged: list[SnapshotRef]) -> list[str]:
    """Of ``lost`` (the index lines of runs whose manifest is missing), those that say ``pruning``
    or record no snapshot, and of which no snapshot in ``tagged`` (the cluster's) carries the run
    id: nothing of them is left to guard. Any other line stays, warned of: ``tagged`` is the
    current provider's listing, and a run made under an earlier ``provider.store`` (or region)
    has its snapshots there. None where the store lists no snapshot of the cluster at all: it may
    be the wrong store, or not mounted."""
    left = {ref.tags.get(TAG_RUN) for ref in tagged}
    return [e.run_id for e in lost
            if (e.status == PRUNING or e.snapshots == 0) and e.run_id not in left] if tagged else []


def forget_emptied_runs(catalog: Catalog, provider: Provider, still_locked: Callable[[], None]) -> list[str]:
    """Under the cluster lock: the index lines taken out of runs whose manifest is missing, whose
    line says ``pruning`` or records no snapshot, and of which no snapshot is left (``emptied_runs``).
    Listed as lost manifests, they warned on every command, and status exited 5, for good. A provider that cannot list its snapshots now leaves them for the next time."""
    lost = catalog.lines_without_manifest()
    if not lost:
        return []
    try:
        emptied = emptied_runs(lost, provider.find({TAG_CLUSTER: catalog.cluster}))
    except SnapctlError:
        return []
    if not emptied:
        return []
    still_locked()
    return catalog.forget_lost_runs(emptied)


def _unreadable(run_id: str) -> str:
    # `list` reads no older run's manifest (it lists the run as its index line says): only `show` says why.
    return f"its manifest cannot be read (`snapctl show {run_id}` says why)"


def _held(lock: LockRecord, now: datetime) -> str:
    """Why the run holding the cluster lock is passed over: live, or killed (judged as `list`
    judges it) with its lock not yet expired, which keeps `gc --delete` from closing it."""
    until = f"{lock.expires_at:%Y-%m-%d %H:%M:%S} UTC"
    if owner_gone(lock.run_id, lock, now):
        return (f"its snapctl is gone, but its cluster lock holds until {until}: after that `snapctl gc --delete` "
                "closes the run, and lists what it left")
    return f"in progress: it holds the cluster lock (until {until}, renewed while it runs)"


def named_by(catalog: Catalog, run_ids: list[str]) -> tuple[dict[str, str], set[str], set[str]]:
    """Snapshot id -> the run whose manifest names it, of ``run_ids`` (one that did not fail, where
    several do); those whose manifest could not be read (gone, damaged); and those whose manifest
    says they failed, not as abandoned."""
    named: dict[str, str] = {}
    unreadable: set[str] = set()
    failed: set[str] = set()
    for run_id in run_ids:
        try:
            manifest = catalog.load(run_id)
        except SnapctlError:
            unreadable.add(run_id)
            continue
        if manifest.status == "failed" and not (manifest.error or "").startswith("abandoned"):
            # "abandoned": a run another snapctl left running, closed by the next one. Before the
            # runs killed in their wait were kept as backups, such a run named its every snapshot:
            # it keeps them, as it did, for prune to judge, not gc.
            failed.add(run_id)
        for ref in manifest.snapshot_refs():
            if ref.snapshot_id not in named or named[ref.snapshot_id] in failed:
                named[ref.snapshot_id] = run_id
    return named, unreadable, failed


def owned_by_live_runs(named: dict[str, str], failed: set[str]) -> set[str]:
    """The snapshots a run that did not fail names (``failed``: those ``named_by`` found failed
    and not abandoned). A failed run holds no backup: what its manifest still names is what its
    rollback could not delete (it says "snapctl gc finds them"), so gc lists those, as it does the
    unnamed ones of a run killed before it named them."""
    return {snapshot_id for snapshot_id, run_id in named.items() if run_id not in failed}


def stored_runs(catalog: Catalog) -> set[str]:
    manifests = f"{catalog.cluster}/manifests/"
    return {k[len(manifests):-len(".json")] for k in catalog.store.list(manifests) if k.endswith(".json")}


def _refuse_a_wrong_catalog(catalog: Catalog, tagged: list[SnapshotRef]) -> None:
    """For a catalog that holds no run: a run's manifest is written before its first snapshot, so
    snapshots with no run at all in the catalog mean the wrong catalog (a typo, a share not
    mounted, a lost one), whose every backup would look orphaned: they may be the only backups left."""
    if tagged:
        raise CatalogError(f"the catalog at {catalog.store.describe()} holds no run of cluster {catalog.cluster}, "
                           f"yet {len(tagged)} snapshot(s) carry its tag: gc would take every one for an orphan",
                           hint="check catalog.path (or catalog.url) in the inventory, and that its share is mounted; "
                                "if the catalog is lost, these snapshots may be the only backups left: delete them "
                                "with the provider's own tools only if you are sure")


def _refuse_a_missing_store(catalog: Catalog, provider: Provider) -> None:
    """A store whose directory does not exist lists no snapshot: gc would call every run's
    snapshots accounted for, the wrong store's emptiness read as a clean cluster."""
    missing = getattr(provider, "missing_store", None)
    where = missing() if missing is not None else None
    if where:
        raise ProviderError(f"the snapshot store {where} does not exist: gc cannot tell which snapshots of cluster "
                            f"{catalog.cluster} are orphaned",
                            hint="check provider.store in the inventory, and that its share is mounted; a first "
                                 "`snapctl backup` creates it")


def delete_snapshot(provider: Provider, ref: SnapshotRef, cluster: str) -> None:
    recorded = ref.tags.get(TAG_CLUSTER)
    if recorded is not None and recorded != cluster:
        # The provider checks the snapshot itself too; this catches a manifest that names the wrong one.
        raise CatalogError(f"its {TAG_CLUSTER} tag is {recorded!r}, not {cluster!r}; not deleting it")
    try:
        provider.delete(ref)
    except SnapshotNotFound:
        pass  # deleted already (by an interrupted prune, or by hand): done
