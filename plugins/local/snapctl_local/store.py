"""The on-disk layout of the local snapshot store.

::

    <store>/<cluster>/<node>/<snapshot_id>/snapshot.json   metadata, written once, before publishing
    <store>/<cluster>/<node>/<snapshot_id>/data/...          the volume's files
    <store>/<cluster>/<node>/<snapshot_id>/completed.json    written last: all of it is on disk
    <store>/<cluster>/<node>/<snapshot_id>/failed.json       instead: making it durable failed
    <store>/<cluster>/<node>/.lock                           serialises snapshots of one node
    <store>/<cluster>/<node>/.partial-*  .deleting-*         work in progress (hidden from listings)

A snapshot is built under a hidden ``.partial-`` name and renamed into place with its metadata
already inside, so a listed snapshot is always a complete copy. Every call that makes a hidden
directory holds the node's lock until it is gone, so one found under that lock belongs to a call
that died: the next snapshot of that node removes it, and `snapctl gc` lists and removes it.

A listed snapshot is *pending* until ``completed.json`` exists: its copy is complete, but only
the kernel knows which of it is on disk yet. Making it durable (``LocalProvider.wait``) fsyncs
what ``snapshot.json`` lists as ``unsynced`` and then writes the marker. A pending snapshot that
was made before the host last restarted (its ``boot_id`` is not this boot's) may have lost data
in the restart, and so may one whose fsyncs failed: both are in *error* for good. Snapshots of
format 1 (before pending existed) recorded ``state: completed`` and are completed.

A restore into ``<target>`` leaves a marker beside it, ``<target>.snapctl-restore.json`` (outside
the directory, so the engine sees exactly the snapshot's files): the snapshot's cluster tag and
the target's path, which ``delete_volume`` checks before it removes anything.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from snapctl.errors import ProviderError, os_reason
from snapctl.fsmodes import fsync_dir, make_dirs, open_private, remove_tree
from snapctl.providers import TAG_CLUSTER
from snapctl.timestamps import utc_text

METADATA = "snapshot.json"
DATA = "data"
PARTIAL_PREFIX = ".partial-"
DELETING_PREFIX = ".deleting-"
RESTORE_PREFIX = ".restore-"
LEFTOVER_PREFIXES = (PARTIAL_PREFIX, DELETING_PREFIX)  # in a node's directory: work in progress, or a dead call's
COMPLETED = "completed.json"
FAILED = "failed.json"
# Where a failed snapshot's data goes when not even failed.json could be written (the same disk
# full): a rename takes no new block, and the failure must outlast the process that saw it.
FAILED_DATA = "data.not-on-disk"
# 2: a snapshot's state comes from its markers, not snapshot.json's "state"; 3: each file's size is
# the size copied, where 2 kept the size the walk saw (a held engine's log may grow in between).
METADATA_FORMAT = 3
RESTORE_MARKER_SUFFIX = ".snapctl-restore.json"

_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def check_part(kind: str, value: str) -> str:
    """Node names and snapshot ids become directory names: no separators, no dot-dot."""
    if not _SAFE_PART.match(value or ""):
        raise ProviderError(f"invalid {kind} {value!r} for the local snapshot store")
    return value


def filename_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"


class SnapshotStore:
    def __init__(self, root: Path, cluster: str) -> None:
        self.root = root
        self.cluster = cluster
        self.cluster_dir = root / check_part("cluster name", cluster)

    def node_dir(self, node: str) -> Path:
        return self.cluster_dir / check_part("node name", node)

    def snapshot_dir(self, node: str, snapshot_id: str) -> Path:
        return self.node_dir(node) / check_part("snapshot id", snapshot_id)

    @contextmanager
    def node_lock(self, node: str, *, wait_s: float | None = None,
                  stop: threading.Event | None = None) -> Iterator[None]:
        """Exclusive per node, across threads and processes (each open() is its own flock).
        ``wait_s``: give up after that long with ``StoreBusy`` (None: wait as long as it takes);
        ``stop``: give up once it is set, with ``LockWaitStopped`` (a drill's restore threads are
        out of Ctrl-C's reach, and a process that stalled holding the lock may never let go)."""
        with self._lock_file(node) as fd:
            if wait_s is None and stop is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                _flock_within(fd, wait_s, node, stop)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def node_lock_if_free(self, node: str) -> Iterator[bool]:
        """``node_lock`` without waiting: True inside when it was free (and is now held)."""
        with self._lock_file(node) as fd:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def _lock_file(self, node: str) -> Iterator[int]:
        """The node's lock file, open (its descriptor): the caller chooses how to flock it."""
        node_dir = self.node_dir(node)
        make_dirs(node_dir)
        with open(node_dir / ".lock", "a+b", opener=open_private) as lock_file:
            yield lock_file.fileno()

    def nodes(self) -> list[str]:
        return [d.name for d in _visible_dirs(self.cluster_dir)]

    def leftovers(self, node: str) -> list[Path]:
        """The node's hidden work directories; those of crashed calls only while holding ``node_lock(node)``."""
        node_dir = self.node_dir(node)
        try:
            entries = sorted(node_dir.iterdir())
        except FileNotFoundError:
            return []
        return [e for e in entries if e.name.startswith(LEFTOVER_PREFIXES) and e.is_dir() and not e.is_symlink()]

    def clean_leftovers(self, node: str) -> list[str]:
        """Remove what crashed calls left; only call while holding ``node_lock(node)``."""
        removed = []
        for entry in self.leftovers(node):
            remove_tree(entry)
            removed.append(entry.name)
        return removed

    def work_dir(self, parent: Path, prefix: str, name: str) -> Path:
        return parent / f"{prefix}{name}-{secrets.token_hex(4)}"

    def publish(self, partial: Path, final: Path, *, sync: bool = True) -> None:
        # rename(2) refuses a non-empty target, so two writers can never merge into one snapshot.
        os.rename(partial, final)
        if sync:
            fsync_dir(final.parent)

    def iter_snapshot_dirs(self, node: str | None = None) -> Iterator[Path]:
        nodes = [self.node_dir(node)] if node else _visible_dirs(self.cluster_dir)
        for node_dir in nodes:
            yield from _visible_dirs(node_dir)

    def previous(self, node: str, volume: str) -> tuple[Path, dict[str, Any]] | None:
        """The newest completed snapshot of ``volume`` on ``node``, for hard-linking unchanged files.

        Never a pending one: a linked file is not fsynced again, so it must be on disk already."""
        candidates = []
        for snap_dir in self.iter_snapshot_dirs(node):
            try:
                candidates.append((os.stat(snap_dir / METADATA).st_mtime_ns, snap_dir))
            except OSError:
                continue
        # Metadata is written once, so its mtime orders snapshots without parsing every index.
        for _, snap_dir in sorted(candidates, reverse=True):
            meta = read_metadata(snap_dir)
            if meta and meta.get("volume") == volume and snapshot_state(snap_dir, meta)[0] == "completed":
                return snap_dir, meta
        return None


def _visible_dirs(parent: Path) -> list[Path]:
    try:
        entries = sorted(parent.iterdir())
    except FileNotFoundError:
        return []
    return [e for e in entries if not e.name.startswith(".") and e.is_dir() and not e.is_symlink()]


def read_metadata(snap_dir: Path) -> dict[str, Any] | None:
    """The snapshot's metadata, or None when it is missing or unreadable."""
    return _read_json(snap_dir / METADATA)


def metadata_damage(snap_dir: Path) -> str | None:
    """What is wrong with the ``snapshot.json`` of a snapshot directory that is there ("<path> is
    not valid JSON"); None when it reads, or when the directory itself is gone. ``read_metadata``
    says None for both, and a damaged snapshot must not be reported as a missing one."""
    path = snap_dir / METADATA
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return f"{path} is missing" if snap_dir.is_dir() else None
    except OSError as exc:
        return f"{path} cannot be read: {os_reason(exc)}"
    except ValueError:
        return f"{path} is not valid JSON"
    return None if isinstance(document, dict) else f"{path} is not a JSON object"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def write_metadata(snap_dir: Path, meta: dict[str, Any], *, sync: bool = True) -> None:
    # Compact: with an indent, json leaves its C encoder for the Python one, 4x slower on the file
    # index (8 vs 2 ms per thousand files), and that is written inside the engine's freeze window.
    _write_json(snap_dir / METADATA, meta, indent=None, sync=sync)


@functools.cache
def boot_id() -> str | None:
    """This boot of the host (Linux); None elsewhere, where a restart cannot be told apart."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


# Both read after "snapshot <id> of volume <name>": a ref's error and a ProviderError's message.
NOT_ON_DISK = "was not yet on disk when the host restarted; it may be incomplete"


def snapshot_state(snap_dir: Path, meta: dict[str, Any]) -> tuple[str, str | None]:
    """("completed" | "pending" | "error", why it is in error) of a listed snapshot."""
    if (snap_dir / COMPLETED).exists() or meta.get("state") == "completed":
        return "completed", None
    failed = _read_json(snap_dir / FAILED)
    if failed is not None:
        return "error", str(failed.get("error") or "could not be written to disk")
    if (snap_dir / FAILED_DATA).exists():
        return "error", f"could not be written to disk (nor its {FAILED}: its data was moved to {FAILED_DATA})"
    if meta.get("boot_id") != boot_id():
        return "error", NOT_ON_DISK
    return "pending", None


def mark_completed(snap_dir: Path) -> None:
    """Only once every file and directory of the snapshot is fsynced: this makes it completed."""
    _write_json(snap_dir / COMPLETED, {"completed_at": utc_text(datetime.now(UTC))})


def mark_failed(snap_dir: Path, error: str) -> None:
    """After a failed fsync: the kernel may since have marked the lost pages clean, so a later
    fsync could pass without writing them; the snapshot must never become completed."""
    _write_json(snap_dir / FAILED, {"error": error, "failed_at": utc_text(datetime.now(UTC))})


def mark_failed_without_room(snap_dir: Path) -> None:
    """``mark_failed`` when failed.json could not be written: the data directory is renamed away,
    which ``snapshot_state`` reads as failed for good, and no later fsync can complete."""
    os.rename(snap_dir / DATA, snap_dir / FAILED_DATA)


def restore_marker(dest: Path) -> Path:
    return dest.with_name(dest.name + RESTORE_MARKER_SUFFIX)


def write_restore_marker(dest: Path, ref: Any, meta: dict[str, Any], *, staging: Path | None = None,
                         tags: dict[str, str] | None = None) -> None:
    """Record beside ``dest`` what a restore put there (``ref``: the SnapshotRef, ``meta``: its
    metadata), with the restore's own ``tags`` (a drill's id) and its ``staging`` copy, which a
    restore killed part-way leaves. Exclusive: ``FileExistsError`` when a marker is there already,
    another restore's into the same place (which must keep it: it names what that restore made)."""
    from snapctl.process_identity import identity, run_owner

    tags = {**(meta.get("tags") or {}), **(tags or {})}
    marker = restore_marker(dest)
    temp = marker.with_name(f".{marker.name}.{secrets.token_hex(4)}.tmp")
    _write_json(temp, {
        "format": METADATA_FORMAT,
        "path": str(dest),
        "cluster": tags.get(TAG_CLUSTER),
        "node": ref.node,
        "volume": meta.get("volume"),
        "snapshot_id": ref.snapshot_id,
        "tags": tags,
        "staging": str(staging) if staging is not None else None,
        "restored_at": utc_text(datetime.now(UTC)),
        # Who writes it: a rerun that finds the marker unfinished clears it once that process is proven gone.
        "owner": run_owner(),
        "owner_process": identity(os.getpid()),
    })
    try:
        os.link(temp, marker)  # link(2), unlike rename(2), never replaces
    finally:
        temp.unlink(missing_ok=True)


def read_restore_marker(dest: Path) -> dict[str, Any] | None:
    return _read_json(restore_marker(dest))


def finish_restore_marker(dest: Path) -> None:
    """Record in the marker that the restore into ``dest`` finished: a marker that says so, beside
    a ``dest`` found gone or empty later, is one that was emptied by hand, not a restore under way."""
    document = read_restore_marker(dest)
    if document is not None:
        _write_json(restore_marker(dest), {**document, "finished_at": utc_text(datetime.now(UTC))})


def finished_restore_marker(dest: Path) -> bool:
    """The marker beside ``dest`` is one a restore that finished left there (see ``finish_restore_marker``)."""
    document = read_restore_marker(dest)
    return bool(document and document.get("finished_at") and document.get("path") == str(dest))


def _write_json(target: Path, document: dict[str, Any], indent: int | None = 1, *, sync: bool = True) -> None:
    """Atomically: a temp file beside ``target``, fsynced (unless not ``sync``), renamed over it."""
    temp = target.with_name(f".{target.name}.tmp")
    data = json.dumps(document, indent=indent, separators=None if indent else (",", ":")).encode()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, target)
    except BaseException:  # a full disk: no half-written file is left behind, hidden
        temp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(target.parent)


class StoreBusy(ProviderError):
    """Another process kept a node's store lock longer than the caller would wait."""


class LockWaitStopped(Exception):  # noqa: N818 - a stop asked for, not an error
    """The wait for a node's store lock gave up because its ``stop`` event was set."""


def _flock_within(fd: int, wait_s: float | None, node: str, stop: threading.Event | None = None) -> None:
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if stop is not None and stop.is_set():
                raise LockWaitStopped(node) from None
            if deadline is not None and time.monotonic() >= deadline:
                raise StoreBusy(
                    f"node {node}: the snapshot store is busy with another snapctl process for more than "
                    f"{wait_s:g}s (a restore or drill making a pending snapshot durable, or a run that stalled)",
                    hint="retry once it is done; a --no-wait backup's snapshots become durable before the "
                         "next backup holds its nodes, or at a prune or a restore") from None
            time.sleep(0.05)


def size_problem(rel: str, found: int, facts: object, meta: dict[str, Any]) -> str | None:
    """What is wrong with a snapshot's file of ``found`` bytes against its index entry, if anything.
    Before format 3 the index kept the size the walk saw, and a log the engine appended to while
    it was held (Tarantool's xlog) was copied longer: longer is whole there, shorter never is."""
    size = facts.get("size") if isinstance(facts, dict) else None
    if size is None or found == size:
        return None
    if found > size and _format(meta) < 3:
        return None
    return f"file {rel} has {found} bytes, recorded {size}"


def _format(meta: dict[str, Any]) -> int:
    value = meta.get("format")
    return value if isinstance(value, int) and not isinstance(value, bool) else 1
