"""The catalog of one cluster's backups: manifests, an index to list them fast, and the run lock.

What commands do with it: save a run, update its manifest by compare-and-swap, load or delete it,
list the runs and resolve a run reference, take the cluster lock, and look at all of it as a
backup's first step would. The index, a cache of the manifests, and how it is read, confirmed
against them, repaired and written, is snapctl.catalog.index. See docs/catalog.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from snapctl.catalog import BlobStore
from snapctl.catalog.index import CAS_RETRIES, PRUNING, RUNNING, ManifestIndex, index_entry
from snapctl.catalog.lock import Clock, LockRecord, RunLock, acquire, read_lock, utc_now
from snapctl.catalog.reasons import ahead_warning, behind_warning, skipped_newer
from snapctl.errors import BadInputError, CatalogError, SnapctlError
from snapctl.manifest import IndexEntry, Manifest
from snapctl.printable import quoted
from snapctl.timestamps import started_ahead

_MAX_CANDIDATES = 8
# Where a catalog is: the inventory's catalog.path, else a directory per user, so cron's runs
# are not in the catalog of a user who restores by hand.
_WHERE_HINT = ("the catalog is the inventory's catalog.path (or catalog.url), else $XDG_STATE_HOME/snapctl/catalog "
               "of the user running snapctl: use the inventory and user the backups run with")


@dataclass
class CatalogLook:
    """The catalog as the first step of a backup would find it, looked at without taking the lock
    or writing anything: what `snapctl status` and `backup --dry-run` report."""

    entries: list[IndexEntry] | None = None  # None: the runs could not be read
    problems: list[str] = field(default_factory=list)  # manifests that cannot be read: reported, no obstacle
    lock: LockRecord | None = None
    # Each fails a backup before it holds anything: the error the run would raise, its hint apart
    # from its message, as `status -o json` and a dry run give a finding's fix.
    obstacles: list[SnapctlError] = field(default_factory=list)
    unconfirmed: set[str] = field(default_factory=set)  # succeeded runs read whose snapshots may not have completed
    missing: str | None = None  # where a local catalog was looked for whose directory does not exist
    lock_where: str = "the cluster lock"  # the lock's store and key, as a LockHeld hint names it

    def holder(self, now: datetime) -> str | None:
        """Who holds the cluster lock at ``now`` (a backup would exit 4), or None."""
        lock = self.lock
        if lock is None or not lock.held_at(now):
            return None
        return f"run {lock.run_id} by {lock.owner} holds the cluster lock until {lock.expires_at:%H:%M:%S}Z"


class Catalog(ManifestIndex):
    def __init__(self, store: BlobStore, cluster: str, *, clock: Clock = utc_now) -> None:
        super().__init__(store, cluster)
        self._clock = clock
        self._lock_key = f"{cluster}/lock.json"

    def now(self) -> datetime:
        """This catalog's clock (the lock's): what retention and ``latest`` take as now."""
        return self._clock()

    def describe(self, *, say_missing: bool = False) -> str:
        """Where the catalog is; ``say_missing``: and that its directory does not exist, if so."""
        missing = say_missing and self._missing_root()
        return f"{self.store.describe()} (cluster {self.cluster})" + (", which does not exist" if missing else "")

    # -- manifests ---------------------------------------------------------------------------

    def save(self, manifest: Manifest) -> None:
        """Write the run's manifest, then its line in the index (both atomically)."""
        if manifest.cluster != self.cluster:
            raise CatalogError(f"manifest of run {manifest.run_id} is for cluster {manifest.cluster}, not {self.cluster}")
        self.store.write(self._manifest_key(manifest.run_id), manifest.model_dump_json(indent=2).encode())
        self._put_line(index_entry(manifest))

    def update(self, run_id: str, change: Callable[[Manifest], bool], *, line_anyway: bool = False) -> Manifest | None:
        """``change`` (False: write nothing) on the manifest as it is now, by compare-and-swap: another
        command's change meanwhile (a drill's summary, a retention outcome) is not written over.
        ``line_anyway``: the run's index line is written even where ``change`` wrote nothing, for a
        caller about to act on what the manifest says (a prune's mark, put on by an earlier prune
        killed before it wrote the mark's line: deleting that run left a line still "succeeded")."""
        key = self._manifest_key(run_id)
        for _ in range(CAS_RETRIES):
            data = self.store.read(key)
            if data is None:
                return None
            manifest = self._readable(run_id, data)
            if not change(manifest):
                if line_anyway:
                    self._put_line(index_entry(manifest))
                return manifest
            if self.store.replace(key, manifest.model_dump_json(indent=2).encode(), expected=data):
                self._put_line(index_entry(manifest))
                return manifest
        raise CatalogError(f"could not update {self._where(run_id)}: it keeps changing")

    def load(self, run_id: str) -> Manifest:
        data = self.store.read(self._manifest_key(run_id))
        if data is None:
            indexed, _ = self._read_index()
            if lost := next((e for e in indexed or [] if e.run_id == run_id and e.status != PRUNING), None):
                # As every listing says it: not a mistyped run id, a record lost.
                raise CatalogError(f"run {run_id}: its manifest {self._where(run_id)} is missing, though the index "
                                   f"lists the run as {lost.status}",
                                   hint="put the manifest back from a copy of the catalog; what is left of its "
                                        "snapshots is kept meanwhile (gc never takes them for orphans)" + (
                                        ", and where none is left the next `snapctl prune` or `snapctl gc --delete` "
                                        "forgets the run" if lost.snapshots == 0 else ""))
            raise BadInputError(f"no run {run_id} in the catalog {self.describe()}", hint="`snapctl list` shows the runs")
        return self._readable(run_id, data)

    def _readable(self, run_id: str, data: bytes) -> Manifest:
        manifest, problem = self._parse(run_id, data)
        if manifest is None:
            raise CatalogError(f"run {run_id}: manifest is unreadable: {problem}", hint=f"see {self._where(run_id)}")
        return manifest

    def delete(self, run_id: str) -> None:
        """Forget a run (its manifest and index line); a missing run is fine."""
        self.store.delete(self._manifest_key(run_id))
        self._drop_line(run_id)

    def list(self, *, confirm_newest: bool = True) -> tuple[list[IndexEntry], list[str]]:
        """Runs newest first, and problems ("run <id>: <reason>") for manifests that cannot be read.
        ``confirm_newest`` False: the newest good backup is taken from the index, for a caller that
        reads the runs it relies on itself (``confirm``); the running ones are read either way."""
        entries, problems = self._scan(confirm_newest=confirm_newest)
        return entries, [f"run {run_id}: {reason}" for run_id, reason in sorted(problems.items())]

    def unfinished(self) -> list[IndexEntry]:
        """The runs whose manifests say they are still running, newest first: what a run that holds
        the cluster lock closes as abandoned. Unlike ``list``, it does not read the newest good
        backup's manifest (a megabyte at 1000 nodes, tens of milliseconds before the preflight
        can start): which backup is the newest is no concern of that step."""
        entries, _ = self._scan(confirm_newest=False)
        return [e for e in entries if e.status == RUNNING]

    def latest(self, status: str | None = "succeeded") -> IndexEntry | None:
        """The newest run with ``status`` (any status when None)."""
        entries, _ = self._scan()
        return next((e for e in entries if status is None or e.status == status), None)

    def resolve(self, ref: str, skipped: list[str] | None = None, running: list[IndexEntry] | None = None) -> str:
        """A run id from a full id, a unique prefix of one, or ``latest`` (the newest succeeded run).
        ``skipped`` collects a warning for each run ``latest`` passed over that may be newer: its
        manifest cannot be read (or is missing), so whether it is a good backup cannot be told.
        ``running`` collects the runs the lookup found still running (``unfinished``'s answer), for
        a caller that judges them next: the catalog is not listed again."""
        ref = ref.strip()
        indexed: dict[str, IndexEntry] = {}
        entries, problems = self._scan(seen=indexed)
        if running is not None:
            running += [e for e in entries if e.status == RUNNING]
        if ref == "latest":
            succeeded = [e for e in entries if e.status == "succeeded"]
            now = self._clock()
            newest, ahead, written = self._newest_in_time(succeeded, now)
            if newest is not None and skipped is not None:
                skipped += [ahead_warning(newest, e, now) for e in ahead]
                if written is not None:
                    skipped.append(behind_warning(newest, written, now))
                skipped += skipped_newer(newest, problems, indexed, self._where)
            if newest is None and problems:  # there may be one: its manifest cannot be read
                unreadable = ", ".join(f"{r} ({why})" for r, why in sorted(problems.items())[:_MAX_CANDIDATES])
                raise BadInputError(
                    f"no readable succeeded backup of cluster {self.cluster}: the manifests of {unreadable} "
                    "cannot be read", hint="name a run to restore, or repair the manifest from a copy of the catalog")
            if newest is None:
                missing = self._missing_root()
                raise BadInputError(
                    f"no succeeded backup of cluster {self.cluster} in the catalog at {self.store.describe()}"
                    + (", which does not exist" if missing else " yet"),
                    hint=(_WHERE_HINT if missing else f"`snapctl list` shows every run; `snapctl backup` makes one; "
                          f"{_WHERE_HINT}"),
                )
            return newest.run_id
        run_ids = [e.run_id for e in entries] + sorted(problems)
        if ref in run_ids:
            return ref
        matches = [r for r in run_ids if ref and r.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise BadInputError(f"no run of cluster {self.cluster} matches {quoted(ref)} in the catalog at "
                                f"{self.store.describe()}" + (", which does not exist" if self._missing_root() else ""),
                                hint=f"`snapctl list` shows run ids; {_WHERE_HINT}")
        shown = ", ".join(matches[:_MAX_CANDIDATES]) + (f" and {len(matches) - _MAX_CANDIDATES} more" if len(matches) > _MAX_CANDIDATES else "")
        raise BadInputError(f"{quoted(ref)} matches {len(matches)} runs: {shown}", hint="give more of the run id")

    def _newest_in_time(self, succeeded: list[IndexEntry], now: datetime
                        ) -> tuple[IndexEntry | None, list[IndexEntry], datetime | None]:
        """The newest of ``succeeded`` (newest first) not stamped in the future, the runs passed
        over for it, and its manifest's write time where this host's clock is what was behind.
        A run stamped in the future (a wrong clock) is no newer backup: its real age is unknown, and
        retention does not count it either; the newest of them only when every run is. Ahead of
        this host's clock is judged again by the store's: a run whose start is not ahead of when
        the store wrote its manifest was stamped by a right clock, and this host's is behind (a
        recovery host booted without NTP must not restore a backup days old). One store call per
        run that looks ahead, none for the others."""
        ahead: list[IndexEntry] = []
        for entry in succeeded:
            if not started_ahead(entry.started_at, now):
                return entry, ahead, None
            written = self.store.written_at(self._manifest_key(entry.run_id))
            if written is not None and not started_ahead(entry.started_at, written):
                return entry, ahead, written
            ahead.append(entry)
        return (succeeded[0], succeeded[:1], None) if succeeded else (None, [], None)

    def _missing_root(self) -> bool:
        """A local catalog whose directory does not exist (a mistyped path, another user's default)."""
        root = getattr(self.store, "root", None)
        return root is not None and not os.path.lexists(root)

    # -- the run lock --------------------------------------------------------------------------

    def acquire_lock(self, owner: str, run_id: str, ttl_s: float, *, take_over_dead: bool = False) -> RunLock:
        return acquire(self.store, self._lock_key, self.cluster, owner, run_id, ttl_s, self._clock,
                       take_over_dead=take_over_dead)

    def read_lock(self) -> LockRecord | None:
        """The lock record as stored (held or not: see ``LockRecord.held_at``), None if never taken."""
        return read_lock(self.store, self._lock_key)

    def look(self) -> CatalogLook:
        """What a backup's first step needs, checked without taking the lock or writing: the runs
        readable (the run lists them as soon as it holds the lock), the lock readable (a record no
        run can parse, no run can take over) and not held, and where the store can tell, the
        directories of the lock, the index and the manifests writable."""
        look = CatalogLook(lock_where=f"{self.store.describe()}/{self._lock_key}")
        if self._missing_root():  # a first backup makes it; or a mistyped path, a share not mounted
            look.missing = self.store.describe()
        try:
            look.entries, look.problems = self.list()
            look.unconfirmed = set(self._unconfirmed)
        except SnapctlError as exc:
            look.obstacles.append(CatalogError(f"cannot read the catalog: {exc.message}", hint=exc.hint))
        try:
            look.lock = self.read_lock()
        except SnapctlError as exc:
            if not look.obstacles:  # else most likely the same cause, said once
                look.obstacles.append(exc)
        if not look.obstacles:
            try:
                for directory in (self.cluster, self._manifests.rstrip("/")):
                    self.store.check_writable(directory)
            except SnapctlError as exc:
                look.obstacles.append(exc)
        return look
