"""The index of one cluster's runs, and the reading of the manifests it caches.

Manifests are the truth; ``<cluster>/index.json`` is a cache of them (newest first), so that a
listing need not read every manifest. It is repaired from the manifests whenever it is missing,
unreadable or out of step. A line of the index says what its manifest said when it was written, so
the manifests that decisions rest on are read again (``ManifestIndex._confirm`` and
``ManifestIndex.confirm``). Every write of the index is a compare-and-swap, tried again when
another writer got in first. ``Catalog`` (snapctl.catalog.catalog) builds what commands do on this.
See docs/catalog.md.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from pydantic import TypeAdapter, ValidationError

from snapctl.catalog import BlobStore
from snapctl.catalog.reasons import newer_snapctl
from snapctl.errors import BadInputError, CatalogError
from snapctl.manifest import IndexEntry, Manifest
from snapctl.printable import quoted

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_INDEX = TypeAdapter(list[IndexEntry])
CAS_RETRIES = 10  # compare-and-swaps lost in a row before "it keeps changing"
# How long lines_held keeps index lines before it writes them: the index lags a prune by at most
# this (a few index writes a minute, where one per run was O(N^2)).
HELD_LINES_S = 5.0
SUCCEEDED = "succeeded"
RUNNING = "running"
PRUNING = "pruning"  # a prune deletes the manifest, then the line: a line left so lost nothing


class ManifestIndex:
    """A cluster's manifests as read, and the index that caches them; ``Catalog`` is one."""

    def __init__(self, store: BlobStore, cluster: str) -> None:
        self.store = store
        self.cluster = cluster
        self.held_lines_s = HELD_LINES_S  # see lines_held
        self._manifests = f"{cluster}/manifests/"
        self._index_key = f"{cluster}/index.json"
        # Succeeded runs whose manifest, as last read here, does not say their snapshots completed
        # (`backup --no-wait`). Not an index field: older snapctl versions refuse unknown ones.
        # Kept whole (they are few, and only until a prune records them complete): retention asks
        # the provider about their snapshots without reading the manifest again.
        self._unconfirmed: dict[str, Manifest] = {}
        # See lines_held: run -> line (None: gone). Per thread: a backup's retention prunes in a
        # thread of its own, and what another thread saves meanwhile is written as it always is.
        self._held = threading.local()

    # -- reading manifests ------------------------------------------------------------------

    def _manifest_key(self, run_id: str) -> str:
        if not RUN_ID.fullmatch(run_id or ""):  # fullmatch: "$" alone lets a trailing newline in
            raise BadInputError(f"{quoted(run_id)} is not a run id", hint="run ids are letters, digits, '.', '_' and '-'")
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

    def _current(self, run_id: str) -> tuple[IndexEntry | None, str | None]:
        """The run's index line as its manifest says now; (None, reason) when it cannot be parsed,
        (None, None) when it is gone. A manifest the store cannot read at all raises: a passing
        failure to read must not make another run the newest backup."""
        manifest, problem = self._current_manifest(run_id)
        return (index_entry(manifest) if manifest is not None else None), problem

    def _current_manifest(self, run_id: str) -> tuple[Manifest | None, str | None]:
        data = self.store.read(f"{self._manifests}{run_id}.json")
        if data is None:
            return None, None  # deleted while we looked
        manifest, problem = self._parse(run_id, data) if RUN_ID.fullmatch(run_id) else (None, "not a valid run id")
        if manifest is None:
            return None, problem or "unreadable"
        if manifest.status == SUCCEEDED and not manifest.snapshots_completed:
            self._unconfirmed[run_id] = manifest
        else:
            self._unconfirmed.pop(run_id, None)
        return manifest, None

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

    # -- the index, checked against the manifests -------------------------------------------

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
            doubtful = entry.status == RUNNING or (not newest_found and entry.status == SUCCEEDED)
            if doubtful and entry.run_id not in read:
                current, problem = self._current(entry.run_id)
                if current is None:
                    if problem is not None:
                        problems[entry.run_id] = problem
                    continue
                entry = current
            newest_found = newest_found or entry.status == SUCCEEDED
            confirmed.append(entry)
        return newest_first(confirmed)

    def confirm(self, run_ids: Iterable[str],
                read: dict[str, Manifest] | None = None) -> tuple[dict[str, IndexEntry], dict[str, str]]:
        """Each run's index line as its manifest says now, every one of them read: for the runs a
        decision rests on (retention keeps a run as the reason to delete others). A manifest that
        cannot be parsed comes back as a problem (run id -> reason), a run deleted meanwhile in
        neither. The index is repaired where it was wrong: an unreadable run leaves it, so that
        `list` reports it from then on. ``read`` gets the manifests read (retention checks the
        snapshots they name against the provider's listing, without reading them again)."""
        indexed, raw = self._read_index()  # before the manifests: a save after our reads fails our swap
        current: dict[str, IndexEntry] = {}
        problems: dict[str, str] = {}
        for run_id in run_ids:
            manifest, problem = self._current_manifest(run_id)
            if manifest is not None:
                current[run_id] = index_entry(manifest)
                if read is not None:
                    read[run_id] = manifest
            elif problem is not None:
                problems[run_id] = problem
        if indexed is not None:
            repaired = [current.get(e.run_id, e) for e in indexed if e.run_id not in problems]
            if newest_first(repaired) != newest_first(indexed):
                self._write_index_quietly(repaired, raw)
        return current, problems

    def _without_manifest(self, indexed: list[IndexEntry], present: set[str]) -> list[IndexEntry]:
        missing = [e for e in indexed if e.run_id not in present and e.status != PRUNING]
        if not missing:
            return []
        stored = set(self._stored_run_ids())  # read again: one saved since the scan began is not lost
        return [e for e in missing if e.run_id not in stored]

    def runs_without_manifest(self) -> list[str]:
        """Runs the index lists, not as pruned, whose manifest is missing (lost, or deleted by hand)."""
        return [e.run_id for e in self.lines_without_manifest()]

    def lines_without_manifest(self) -> list[IndexEntry]:
        """The index lines of ``runs_without_manifest``, by run id: what each says of its run."""
        indexed, _ = self._read_index()
        return sorted(self._without_manifest(indexed or [], set()), key=lambda e: e.run_id)  # it lists the manifests

    def forget_lost_runs(self, run_ids: Iterable[str]) -> list[str]:
        """Take out the index lines of ``run_ids`` whose manifest is still missing (a prune
        killed after deleting a run whose line it had not marked, a manifest deleted by hand), for
        a caller that found none of their snapshots left: such a line guards nothing, and was
        reported on every listing, for good. Returns the runs forgotten."""
        wanted, forgotten = set(run_ids), []

        def without(entries: list[IndexEntry]) -> list[IndexEntry]:
            stored = set(self._stored_run_ids())  # under the swap: a manifest saved meanwhile keeps its line
            forgotten[:] = sorted(e.run_id for e in entries if e.run_id in wanted and e.run_id not in stored)
            return [e for e in entries if e.run_id not in forgotten]

        if wanted:
            self._update_index(without)
        return forgotten

    # -- writing the index ------------------------------------------------------------------

    def rebuild_index(self) -> list[str]:
        """Rewrite the index from the manifests alone; returns the problems found."""
        for _ in range(CAS_RETRIES):
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
        for _ in range(CAS_RETRIES):
            indexed, raw = self._read_index()
            # Missing or corrupt: rebuild from the manifests, which already hold this change.
            entries = self._collect({})[0] if indexed is None else change(indexed)
            if self._write_index(entries, raw):
                return
        raise CatalogError(f"could not update the index {self.store.describe()}/{self._index_key}: it keeps changing")

    def _put_line(self, entry: IndexEntry) -> None:
        if (held := getattr(self._held, "lines", None)) is not None:
            held[entry.run_id] = entry
            if time.monotonic() >= self._held.due:
                self._write_held()
            return
        self._update_index(lambda entries: [e for e in entries if e.run_id != entry.run_id] + [entry])

    def _drop_line(self, run_id: str) -> None:
        if (held := getattr(self._held, "lines", None)) is not None:
            held[run_id] = None
            return
        self._update_index(lambda entries: [e for e in entries if e.run_id != run_id])

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

    def _write_held(self) -> None:
        held, self._held.lines = self._held.lines or {}, {}
        self._held.due = time.monotonic() + self.held_lines_s
        if held:
            self._update_index(lambda entries: [e for e in entries if e.run_id not in held]
                               + [e for e in held.values() if e is not None])


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
