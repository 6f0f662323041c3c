"""The catalog of one cluster's backups: manifests, an index to list them fast, and the run lock.

Manifests are the truth; the index is a cache of them (newest first) that is repaired from the
manifests whenever it is missing, unreadable or out of step. A line of the index says what its
manifest said when it was written, so the manifests that decisions rest on are read again (see
``Catalog._confirm`` and ``Catalog.confirm``). See docs/catalog.md.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import TypeAdapter, ValidationError

from snapctl.catalog import BlobStore
from snapctl.catalog.lock import Clock, LockRecord, RunLock, acquire, read_lock, utc_now
from snapctl.catalog.reasons import newer_snapctl, skipped_newer
from snapctl.errors import BadInputError, CatalogError, SnapctlError
from snapctl.manifest import IndexEntry, Manifest

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_INDEX = TypeAdapter(list[IndexEntry])
_MAX_CANDIDATES = 8
# Where a catalog is: the inventory's catalog.path, else a directory per user, so cron's runs
# are not in the catalog of a user who restores by hand.
_WHERE_HINT = ("the catalog is the inventory's catalog.path (or catalog.url), else $XDG_STATE_HOME/snapctl/catalog "
               "of the user running snapctl: use the inventory and user the backups run with")
_INDEX_RETRIES = 10
# How long lines_held keeps index lines before it writes them: the index lags a prune by at most
# this (a few index writes a minute, where one per run was O(N^2)).
HELD_LINES_S = 5.0
_SUCCEEDED = "succeeded"
_RUNNING = "running"
_PRUNING = "pruning"  # a prune deletes the manifest, then the line: a line left so lost nothing


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


class Catalog:
    def __init__(self, store: BlobStore, cluster: str, *, clock: Clock = utc_now) -> None:
        self.store = store
        self.cluster = cluster
        self._clock = clock
        self.held_lines_s = HELD_LINES_S  # see lines_held
        self._manifests = f"{cluster}/manifests/"
        self._index_key = f"{cluster}/index.json"
        self._lock_key = f"{cluster}/lock.json"
        # Succeeded runs whose manifest, as last read here, does not say their snapshots completed
        # (`backup --no-wait`). Not an index field: older snapctl versions refuse unknown ones.
        # Kept whole (they are few, and only until a prune records them complete): retention asks
        # the provider about their snapshots without reading the manifest again.
        self._unconfirmed: dict[str, Manifest] = {}
        # See lines_held: run -> line (None: gone). Per thread: a backup's retention prunes in a
        # thread of its own, and what another thread saves meanwhile is written as it always is.
        self._held = threading.local()

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

    def _put_line(self, entry: IndexEntry) -> None:
        if (held := getattr(self._held, "lines", None)) is not None:
            held[entry.run_id] = entry
            if time.monotonic() >= self._held.due:
                self._write_held()
            return
        self._update_index(lambda entries: [e for e in entries if e.run_id != entry.run_id] + [entry])

    def _write_held(self) -> None:
        held, self._held.lines = self._held.lines or {}, {}
        self._held.due = time.monotonic() + self.held_lines_s
        if held:
            self._update_index(lambda entries: [e for e in entries if e.run_id not in held]
                               + [e for e in held.values() if e is not None])

    @contextmanager
    def lines_held(self) -> Iterator[Callable[[], None]]:
        """The index lines of ``update`` and ``delete`` in the block, written together every
        ``held_lines_s`` seconds and at its end (or earlier by the function it gives), not one
        each: every update reads and rewrites the whole index, and a prune deleting 10,000 runs did
        that 20,000 times, O(N^2) in the catalog's size. Meanwhile the index lags the manifests by
        those seconds' lines; a lag no reader repairs (a line still "succeeded" whose manifest says
        "pruning" lists as succeeded, though restore refuses it, until the next prune), so it is
        bounded in time, and on a kill it is at most those seconds' lines. A line still "succeeded"
        whose manifest is deleted would read as a lost manifest: write marks before deleting."""
        if getattr(self._held, "lines", None) is not None:  # nested: the outer block writes them
            yield lambda: None
            return
        self._held.lines = {}
        self._held.due = time.monotonic() + self.held_lines_s
        try:
            yield self._write_held
        except BaseException:
            try:  # the lines are a cache of what was done: lost with the index's race, nothing is
                self._write_held()
            except CatalogError:
                pass
            raise
        else:
            self._write_held()
        finally:
            self._held.lines = None

    def update(self, run_id: str, change: Callable[[Manifest], bool]) -> Manifest | None:
        """``change`` (False: write nothing) on the manifest as it is now, by compare-and-swap: another
        command's change meanwhile (a drill's summary, a retention outcome) is not written over."""
        key = self._manifest_key(run_id)
        for _ in range(_INDEX_RETRIES):
            data = self.store.read(key)
            if data is None:
                return None
            manifest = self._readable(run_id, data)
            if not change(manifest):
                return manifest
            if self.store.replace(key, manifest.model_dump_json(indent=2).encode(), expected=data):
                self._put_line(index_entry(manifest))
                return manifest
        raise CatalogError(f"could not update {self._where(run_id)}: it keeps changing")

    def load(self, run_id: str) -> Manifest:
        data = self.store.read(self._manifest_key(run_id))
        if data is None:
            indexed, _ = self._read_index()
            if lost := next((e for e in indexed or [] if e.run_id == run_id and e.status != _PRUNING), None):
                # As every listing says it: not a mistyped run id, a record lost.
                raise CatalogError(f"run {run_id}: its manifest {self._where(run_id)} is missing, though the index "
                                   f"lists the run as {lost.status}",
                                   hint="put the manifest back from a copy of the catalog; its snapshots are kept "
                                        "meanwhile (gc never takes them for orphans)")
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
        if (held := getattr(self._held, "lines", None)) is not None:
            held[run_id] = None
            return
        self._update_index(lambda entries: [e for e in entries if e.run_id != run_id])

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
        return [e for e in entries if e.status == _RUNNING]

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
            running += [e for e in entries if e.status == _RUNNING]
        if ref == "latest":
            newest = next((e for e in entries if e.status == "succeeded"), None)
            if newest is not None and skipped is not None:
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
            raise BadInputError(f"no run of cluster {self.cluster} matches {ref!r} in the catalog at "
                                f"{self.store.describe()}" + (", which does not exist" if self._missing_root() else ""),
                                hint=f"`snapctl list` shows run ids; {_WHERE_HINT}")
        shown = ", ".join(matches[:_MAX_CANDIDATES]) + (f" and {len(matches) - _MAX_CANDIDATES} more" if len(matches) > _MAX_CANDIDATES else "")
        raise BadInputError(f"{ref!r} matches {len(matches)} runs: {shown}", hint="give more of the run id")

    def _missing_root(self) -> bool:
        """A local catalog whose directory does not exist (a mistyped path, another user's default)."""
        root = getattr(self.store, "root", None)
        return root is not None and not os.path.lexists(root)

    def confirm(self, run_ids: Iterable[str]) -> tuple[dict[str, IndexEntry], dict[str, str]]:
        """Each run's index line as its manifest says now, every one of them read: for the runs a
        decision rests on (retention keeps a run as the reason to delete others). A manifest that
        cannot be parsed comes back as a problem (run id -> reason), a run deleted meanwhile in
        neither. The index is repaired where it was wrong: an unreadable run leaves it, so that
        `list` reports it from then on."""
        indexed, raw = self._read_index()  # before the manifests: a save after our reads fails our swap
        current: dict[str, IndexEntry] = {}
        problems: dict[str, str] = {}
        for run_id in run_ids:
            entry, problem = self._current(run_id)
            if entry is not None:
                current[run_id] = entry
            elif problem is not None:
                problems[run_id] = problem
        if indexed is not None:
            repaired = [current.get(e.run_id, e) for e in indexed if e.run_id not in problems]
            if newest_first(repaired) != newest_first(indexed):
                self._write_index_quietly(repaired, raw)
        return current, problems

    # -- the run lock --------------------------------------------------------------------------

    def acquire_lock(self, owner: str, run_id: str, ttl_s: float) -> RunLock:
        return acquire(self.store, self._lock_key, self.cluster, owner, run_id, ttl_s, self._clock)

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

    # -- internals -------------------------------------------------------------------------------

    def _manifest_key(self, run_id: str) -> str:
        if not RUN_ID.fullmatch(run_id or ""):  # fullmatch: "$" alone lets a trailing newline in
            raise BadInputError(f"{run_id!r} is not a run id", hint="run ids are letters, digits, '.', '_' and '-'")
        return f"{self._manifests}{run_id}.json"

    def _where(self, run_id: str) -> str:
        return f"{self.store.describe()}/{self._manifests}{run_id}.json"

    def _parse(self, run_id: str, data: bytes) -> tuple[Manifest | None, str | None]:
        try:
            manifest = Manifest.model_validate_json(data)
        except ValidationError as exc:
            errors = exc.errors()
            err = errors[0]
            if err["type"] == "json_invalid":
                return None, "not valid JSON"
            newer = newer_snapctl(data, errors) if all(e["type"] == "extra_forbidden" for e in errors) else None
            if newer is not None:
                return None, newer
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "missing":
                return None, f"missing field {field}"
            return None, f"{field}: {err['msg'].lower()}"
        if manifest.run_id != run_id or manifest.cluster != self.cluster:
            return None, f"it records run {manifest.run_id} of cluster {manifest.cluster}"
        if manifest.status == "succeeded" and not manifest.nodes:  # no run succeeds with no node
            return None, "a succeeded run that names no node: nothing in it can be restored"
        return manifest, None

    def _stored_run_ids(self) -> list[str]:
        keys = self.store.list(self._manifests)
        names = (k[len(self._manifests):] for k in keys)
        return [n[: -len(".json")] for n in names if n.endswith(".json") and "/" not in n]

    def _read_index(self) -> tuple[list[IndexEntry] | None, bytes | None]:
        data = self.store.read(self._index_key)
        if data is None:
            return None, None
        try:
            return _INDEX.validate_json(data), data
        except ValidationError:
            return None, data

    def _scan(self, *, confirm_newest: bool = True,
              seen: dict[str, IndexEntry] | None = None) -> tuple[list[IndexEntry], dict[str, str]]:
        """Index entries for every stored manifest, reading only the manifests the index lacks and
        the ones decisions rest on (``_confirm``); the index is repaired where it was out of step.
        ``seen`` gets the index's lines as they were read, before that repair."""
        indexed, raw_index = self._read_index()
        if seen is not None:
            seen.update((e.run_id, e) for e in indexed or [])
        entries, problems, read = self._collect({e.run_id: e for e in indexed or []})
        entries = self._confirm(entries, problems, read, confirm_newest=confirm_newest)
        # A line whose manifest is gone, but not by a prune: the run's snapshots may be all there
        # is of a good backup. Its line stays, so that every listing reports it and gc never takes
        # its snapshots for orphans; deleting index.json (a rebuild) forgets it.
        lost = self._without_manifest(indexed or [], {e.run_id for e in entries} | set(problems))
        for entry in lost:
            problems[entry.run_id] = (f"its manifest {self._where(entry.run_id)} is missing, though the index lists "
                                      f"the run as {entry.status}")
        kept = newest_first(entries + lost)
        if kept != newest_first(indexed or []) or (indexed is None and raw_index is not None):
            self._write_index_quietly(kept, raw_index)
        return entries, problems

    def _without_manifest(self, indexed: list[IndexEntry], present: set[str]) -> list[IndexEntry]:
        missing = [e for e in indexed if e.run_id not in present and e.status != _PRUNING]
        if not missing:
            return []
        stored = set(self._stored_run_ids())  # read again: one saved since the scan began is not lost
        return [e for e in missing if e.run_id not in stored]

    def runs_without_manifest(self) -> list[str]:
        """Runs the index lists, not as pruned, whose manifest is missing (lost, or deleted by hand)."""
        indexed, _ = self._read_index()
        return sorted(e.run_id for e in self._without_manifest(indexed or [], set()))  # it lists the manifests

    def _confirm(self, entries: list[IndexEntry], problems: dict[str, str], read: set[str], *,
                 confirm_newest: bool = True) -> list[IndexEntry]:
        """``entries`` (newest first) with some manifests read again:

        - the newest succeeded run's, and the next one's if that one is not (or no longer) a good
          backup: it is what `latest` names, status's newest good backup and its age against the
          RPO. A damaged manifest behind an intact index line is then a problem, never the newest
          backup;
        - every run the index says is running: a run killed between its manifest write and its
          index update left its line behind (a good backup listed as running, never `latest`,
          deleted by retention as a dead run). There are few: the run under way, and the dead.

        Older runs are taken from the index as they are, which is what it is for: retention
        confirms the ones it keeps itself. ``read``: runs whose manifest was read just now;
        ``confirm_newest``: False reads the running ones only."""
        confirmed: list[IndexEntry] = []
        newest_found = not confirm_newest
        for entry in entries:
            doubtful = entry.status == _RUNNING or (not newest_found and entry.status == _SUCCEEDED)
            if doubtful and entry.run_id not in read:
                current, problem = self._current(entry.run_id)
                if current is None:
                    if problem is not None:
                        problems[entry.run_id] = problem
                    continue
                entry = current
            newest_found = newest_found or entry.status == _SUCCEEDED
            confirmed.append(entry)
        return newest_first(confirmed)

    def _current(self, run_id: str) -> tuple[IndexEntry | None, str | None]:
        """The run's index line as its manifest says now; (None, reason) when it cannot be parsed,
        (None, None) when it is gone. A manifest the store cannot read at all raises: a passing
        failure to read must not make another run the newest backup."""
        data = self.store.read(f"{self._manifests}{run_id}.json")
        if data is None:
            return None, None  # deleted while we looked
        manifest, problem = self._parse(run_id, data) if RUN_ID.fullmatch(run_id) else (None, "not a valid run id")
        if manifest is None:
            return None, problem or "unreadable"
        if manifest.status == _SUCCEEDED and not manifest.snapshots_completed:
            self._unconfirmed[run_id] = manifest
        else:
            self._unconfirmed.pop(run_id, None)
        return index_entry(manifest), None

    def unconfirmed(self, run_id: str) -> Manifest | None:
        """The run's manifest when, as this catalog's last ``list``/``confirm`` read it, it says the
        run succeeded without its snapshots confirmed complete; else None. A run only the index was
        read for is not known to be unconfirmed: retention reads every run it keeps, status the newest."""
        return self._unconfirmed.get(run_id)

    def _collect(self, known: dict[str, IndexEntry]) -> tuple[list[IndexEntry], dict[str, str], set[str]]:
        """Entries for every stored manifest (``known`` ones taken as they are, the rest read), the
        problems found, and the run ids whose manifests were read."""
        entries, problems, read = [], {}, set()
        for run_id in self._stored_run_ids():
            if run_id in known:
                entries.append(known[run_id])
                continue
            entry, problem = self._current(run_id)
            read.add(run_id)
            if entry is not None:
                entries.append(entry)
            elif problem is not None:
                problems[run_id] = problem
        return newest_first(entries), problems, read

    def rebuild_index(self) -> list[str]:
        """Rewrite the index from the manifests alone; returns the problems found."""
        for _ in range(_INDEX_RETRIES):
            _, raw = self._read_index()
            entries, problems, _ = self._collect({})
            if self._write_index(entries, raw):
                return [f"run {run_id}: {reason}" for run_id, reason in sorted(problems.items())]
        raise CatalogError(f"could not rebuild the index {self.store.describe()}/{self._index_key}: it keeps changing")

    def _write_index_quietly(self, entries: list[IndexEntry], expected: bytes | None) -> None:
        """A repair of the index on the way: losing a race to a save is fine (that save wrote a
        newer index), and a read-only catalog still answers; the next save repairs it."""
        try:
            self._write_index(entries, expected)
        except CatalogError:
            pass

    def _write_index(self, entries: list[IndexEntry], expected: bytes | None) -> bool:
        data = _INDEX.dump_json(newest_first(entries), indent=1)
        if expected is None:
            return self.store.create(self._index_key, data)
        return self.store.replace(self._index_key, data, expected=expected)

    def _update_index(self, change: Callable[[list[IndexEntry]], list[IndexEntry]]) -> None:
        for _ in range(_INDEX_RETRIES):
            indexed, raw = self._read_index()
            # Missing or corrupt: rebuild from the manifests, which already hold this change.
            entries = self._collect({})[0] if indexed is None else change(indexed)
            if self._write_index(entries, raw):
                return
        raise CatalogError(f"could not update the index {self.store.describe()}/{self._index_key}: it keeps changing")


def index_entry(manifest: Manifest) -> IndexEntry:
    return IndexEntry(
        run_id=manifest.run_id,
        status=manifest.status,
        started_at=manifest.started_at,
        finished_at=manifest.finished_at,
        nodes=len(manifest.nodes),
        snapshots=len(manifest.snapshot_refs()),
        max_freeze_window_s=manifest.max_freeze_window_s,
        error=manifest.error,
    )


def newest_first(entries: list[IndexEntry]) -> list[IndexEntry]:
    return sorted(entries, key=lambda e: (e.started_at.timestamp(), e.run_id), reverse=True)
