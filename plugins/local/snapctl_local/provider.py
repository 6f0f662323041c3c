"""Snapshots as directory copies on the local filesystem: for on-prem nodes and for trying
snapctl out on one machine. See docs/providers/local.md."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from snapctl.errors import BadInputError, ProviderError, SnapshotNotFound, os_reason
from snapctl.fsmodes import fsync_dir, remove_tree
from snapctl.providers import (
    TAG_CLUSTER,
    TAG_RUN,
    TAG_VOLUME,
    Capabilities,
    Leftover,
    NodeVolumes,
    ProgressFn,
    SnapshotRef,
    check_cluster_tag,
)
from snapctl.timestamps import utc_text

from .copy import (
    CopyStats,
    FileCopier,
    FileFacts,
    LinkSource,
    ReflinkUnsupported,
    SyncDeadline,
    TreeCopyError,
    can_reflink,
    copy_tree,
    fsync_tree,
)
from .durable import fsync_path
from .restores import LocalRestores, damaged
from .settings import LocalSettings, LocalVolume, nearest_existing, parse_volumes, resolve_store
from .store import (
    DATA,
    DELETING_PREFIX,
    LEFTOVER_PREFIXES,
    METADATA,
    METADATA_FORMAT,
    PARTIAL_PREFIX,
    SnapshotStore,
    StoreBusy,
    boot_id,
    check_part,
    filename_safe,
    mark_completed,
    mark_failed,
    mark_failed_without_room,
    metadata_damage,
    read_metadata,
    snapshot_state,
    write_metadata,
)

PROVIDER = "local"
HELD_LOCK_WAIT_S = 5.0  # how long a snapshot, inside the engine's hold, waits for its node's store lock
# How long a delete waits for it: a process that hung holding it (a restore on a stalled mount)
# must not hang a failed backup's rollback, and the cluster lock it keeps, for good. Longer than
# any snapshot's copy under the default max_freeze_s; what is not deleted is retried later.
DELETE_LOCK_WAIT_S = 90.0


class LocalProvider(LocalRestores):
    """Copies each volume directory into ``<store>/<cluster>/<node>/<snapshot_id>/``.

    ``snapshot()`` returns once the copy is complete (its point in time is fixed: the engine can be
    released) while the disk is still writing it: the snapshot is pending. ``wait()`` fsyncs it and
    marks it completed, outside the engine's hold, as a cloud's snapshot completes some time after
    its create call. See docs/providers/local.md#durability.
    """

    name = PROVIDER
    settings_model = LocalSettings
    # Not instant: the content is fixed when snapshot() returns, but on disk only after wait().
    capabilities = Capabilities(crash_consistent_group=False, incremental=True, instant=False)

    def __init__(self, settings: LocalSettings, *, cluster: str, base_dir: Path) -> None:
        self.settings = settings
        self.cluster = cluster
        self.base_dir = Path(base_dir)
        self.store = SnapshotStore(resolve_store(settings, self.base_dir), cluster)
        self._copier = FileCopier(settings.reflink)
        # A restore target may sit on another filesystem than the store: never insist on reflinks.
        self._restore_copier = FileCopier("never" if settings.reflink == "never" else "auto")

    def validate_volumes(self, node: str, raw: list[Any], *, base_dir: Path) -> NodeVolumes:
        volumes = parse_volumes(node, raw, base_dir=base_dir)
        # A store inside a volume is copied into itself, deeper on each level, until the path is
        # too long; a volume inside the store is copied from what snapctl writes and deletes.
        store = Path(os.path.realpath(self.store.root))
        for volume in volumes:
            path = Path(os.path.realpath(volume.path))
            if store.is_relative_to(path) or path.is_relative_to(store):
                where = "contains" if store.is_relative_to(path) else "is inside"
                raise BadInputError(
                    f"node {node}: volume {volume.name} ({volume.path}) {where} the snapshot store {self.store.root}",
                    hint="set provider.store to a directory apart from every node's data directories",
                )
        return NodeVolumes(node=node, volumes=volumes, directories=[v.path for v in volumes])

    def warm_up(self) -> None:
        """No SDK, no client: a snapshot's first copy costs what every other one does. With
        ``reflink: always``, whether the store's filesystem can clone at all: before any hold, and
        in a dry run too, which otherwise passes where the run fails."""
        if self.settings.reflink != "always":
            return
        try:  # resolve_store refused a nearest existing part that is no directory
            works = can_reflink(nearest_existing(self.store.root))
        except OSError as exc:
            raise ProviderError(f"cannot check that the store {self.store.root} can reflink files: "
                                f"{os_reason(exc)}") from exc
        if works is False:
            raise ProviderError(f"the store {self.store.root} cannot reflink files (reflink: always)",
                                hint=_REFLINK_HINT)

    def snapshot(self, volumes: NodeVolumes, tags: Mapping[str, str]) -> list[SnapshotRef]:
        node = volumes.node
        local_volumes = [self._volume(node, v) for v in volumes.volumes]
        check_cluster_tag(self.cluster, node, tags)
        run = filename_safe(tags.get(TAG_RUN) or datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ"))
        refs: list[SnapshotRef] = []
        try:
            # The engine is held: another process's use of the store (a restore making a pending
            # snapshot durable, a stalled run) may delay it a little, not for max_freeze_s.
            with self.store.node_lock(node, wait_s=HELD_LOCK_WAIT_S):  # leftovers: cleaned by wait()
                try:
                    for volume in local_volumes:
                        refs.append(self._snapshot_volume(node, volume, run, tags))
                except BaseException:
                    for ref in refs:
                        remove_tree(Path(ref.extra["path"]))
                    raise
        except OSError as exc:
            raise ProviderError(
                f"node {node}: cannot use the snapshot store {self.store.root}: {os_reason(exc)}",
                hint="check that the store directory is writable by this user",
            ) from exc
        return refs

    def wait(self, refs: list[SnapshotRef], deadline: float, progress: ProgressFn | None = None) -> list[SnapshotRef]:
        """Make each pending snapshot durable (fsync its files and directories, then mark it
        completed); one not finished by ``deadline`` or made before the host restarted raises."""
        done = []
        for ref in refs:
            snap_dir = self._snapshot_dir(ref)
            meta = read_metadata(snap_dir)
            if meta is None:
                if damage := metadata_damage(snap_dir):
                    raise damaged(ref, damage, hint="take a new backup")
                raise SnapshotNotFound(
                    f"node {ref.node}: snapshot {ref.snapshot_id} of volume {ref.volume} is missing from "
                    f"{self.store.cluster_dir}",
                )
            self._make_durable(ref.node, snap_dir, meta, deadline)
            updated = self._ref(meta, snap_dir)
            if progress:
                progress(updated)
            done.append(updated)
        return done

    def complete(self, refs: list[SnapshotRef], deadline: float) -> list[SnapshotRef]:
        """What ``wait`` does, for the snapshots of a run that did not wait (`backup --no-wait`):
        nothing else but a restore would ever put them on disk for sure. By now the kernel's
        write-back has usually written them, so the fsyncs find little left to do. See the
        Provider protocol's ``complete``."""
        return self.wait(refs, deadline)

    def delete(self, ref: SnapshotRef) -> None:
        snap_dir = self._snapshot_dir(ref)
        if not snap_dir.exists():
            if where := self.elsewhere(ref):  # not gone: the store moved, and it may be a kept backup's twin
                raise ProviderError(f"node {ref.node}: cannot delete snapshot {ref.snapshot_id}: {where}",
                                    hint=self.elsewhere_hint(ref))
            return
        meta = read_metadata(snap_dir)
        if meta is None:
            damage = metadata_damage(snap_dir) or f"{snap_dir / METADATA} is unreadable"
            raise ProviderError(
                f"node {ref.node}: refusing to delete snapshot {ref.snapshot_id}: {damage}",
                hint=f"without it snapctl cannot tell whose snapshot this is: remove {snap_dir} by hand if you "
                     "are sure",
            )
        recorded = (meta.get("tags") or {}).get(TAG_CLUSTER)
        if recorded != self.cluster:
            raise ProviderError(
                f"node {ref.node}: refusing to delete snapshot {ref.snapshot_id}: its {TAG_CLUSTER} tag is "
                f"{recorded!r}, not {self.cluster!r}",
                hint="snapctl only deletes snapshots it made for this cluster",
            )
        doomed = self.store.work_dir(snap_dir.parent, DELETING_PREFIX, ref.snapshot_id)
        try:
            # Under the node lock, so a concurrent snapshot's leftover cleanup never races this removal.
            with self.store.node_lock(ref.node, wait_s=DELETE_LOCK_WAIT_S):
                # Renaming first hides it from find() at once; a crash mid-removal leaves only a hidden leftover.
                os.rename(snap_dir, doomed)
                remove_tree(doomed)
        except StoreBusy as exc:
            raise StoreBusy(
                f"node {ref.node}: snapshot {ref.snapshot_id} not deleted: another snapctl process has held the "
                f"node's part of the store for more than {DELETE_LOCK_WAIT_S:g}s (a restore or drill making a "
                "pending snapshot durable, or a call that hung)",
                hint="`snapctl prune` or `snapctl gc --delete` retries it once that process is done",
            ) from exc
        except FileNotFoundError:
            return
        except OSError as exc:
            if not doomed.exists():
                raise ProviderError(f"node {ref.node}: cannot delete snapshot {ref.snapshot_id}: {os_reason(exc)}") from exc
            raise ProviderError(
                f"node {ref.node}: snapshot {ref.snapshot_id} is hidden but not fully removed: {os_reason(exc)}",
                hint=f"the next snapshot of node {ref.node} retries the removal of {doomed}",
            ) from exc

    def find(self, tags: Mapping[str, str]) -> list[SnapshotRef]:
        found = []
        for snap_dir in self.store.iter_snapshot_dirs():
            meta = read_metadata(snap_dir)
            if meta is None:
                continue
            recorded = meta.get("tags") or {}
            if all(recorded.get(key) == value for key, value in tags.items()):
                found.append(self._ref(meta, snap_dir))
        return sorted(found, key=lambda r: (r.created_at or "", r.node, r.volume))

    def describe(self, refs: Sequence[SnapshotRef]) -> list[SnapshotRef]:
        found = []
        for ref in refs:
            snap_dir = self._snapshot_dir(ref)
            meta = read_metadata(snap_dir)
            if meta is not None:  # unreadable: `verify` asks damage() why
                found.append(self._ref(meta, snap_dir))
        return found

    def missing_store(self) -> str | None:
        """The store's directory when it does not exist: a typo or a share not mounted, where
        ``find`` would report no snapshot at all, which gc would read as nothing orphaned."""
        return None if os.path.lexists(self.store.root) else str(self.store.root)

    def find_leftovers(self) -> list[Leftover]:
        """The hidden work directories of calls that died. Each node's are listed under its lock,
        taken only if free: every call that makes one holds that lock until it is gone, so what is
        there then is a dead call's; a node in use now is passed over (its call cleans up itself,
        or the next gc lists it)."""
        found = []
        for node in self.store.nodes():
            with self.store.node_lock_if_free(node) as free:
                if free:
                    for path in self.store.leftovers(node):
                        kind = "partial" if path.name.startswith(PARTIAL_PREFIX) else "deleting"
                        found.append(Leftover(node=node, path=str(path), kind=kind, bytes=_unshared_bytes(path)))
        return found

    def delete_leftover(self, leftover: Leftover) -> None:
        path = Path(leftover.path)
        node_dir = self.store.node_dir(leftover.node)
        if path.parent != node_dir or not path.name.startswith(LEFTOVER_PREFIXES):
            raise ProviderError(f"refusing to delete {path}: it is not a leftover in {node_dir}")
        with self.store.node_lock_if_free(leftover.node) as free:
            if not free:
                raise ProviderError(f"node {leftover.node}: not deleting {path}: a snapctl call is using the node's "
                                    "part of the store now", hint="run `snapctl gc --delete` again once it is done")
            if not os.path.lexists(path):
                return
            try:
                remove_tree(path)
            except OSError as exc:
                raise ProviderError(f"node {leftover.node}: cannot delete {path}: {os_reason(exc)}") from exc

    def damage(self, ref: SnapshotRef) -> str | None:
        """Why a snapshot that ``find`` does not list is there but unusable (its snapshot.json is
        damaged or missing, so its tags cannot be read); None when it is gone. For `snapctl verify`."""
        return metadata_damage(self._snapshot_dir(ref))

    def elsewhere(self, ref: SnapshotRef) -> str | None:
        """Why a snapshot missing from this store is not gone: it is where its run recorded it, in
        another store (``provider.store`` changed since the run); None otherwise. For `snapctl
        verify`, restore and delete, which would otherwise call it gone (and a prune drop its run)."""
        recorded = Path(str(ref.extra.get("path") or ""))
        if not recorded.is_absolute() or len(recorded.parents) < 3:
            return None
        try:
            if self._snapshot_dir(ref).exists() or not (recorded / METADATA).is_file():
                return None
        except OSError as exc:  # the old store unreadable (another user's, a root-squashed mount): not proof it is gone
            return (f"it is not in the store {self.store.root}, and where its run recorded it ({recorded}) cannot be "
                    f"looked at: {os_reason(exc)}")
        return (f"it is not in the store {self.store.root} but in {recorded.parents[2]}, where its run recorded it: "
                "provider.store has changed since the run")

    def elsewhere_hint(self, ref: SnapshotRef) -> str:
        old = Path(str(ref.extra.get("path"))).parents[2]
        return f"set provider.store back to {old} for this run, or move the snapshots in {old} into {self.store.root}"

    def _volume(self, node: str, volume: Any) -> LocalVolume:
        if isinstance(volume, LocalVolume):
            return volume
        return parse_volumes(node, [volume], base_dir=self.base_dir)[0]

    def _snapshot_dir(self, ref: SnapshotRef) -> Path:
        if ref.provider != PROVIDER:
            raise ProviderError(f"snapshot {ref.snapshot_id} belongs to provider {ref.provider!r}, not {PROVIDER!r}")
        try:
            return self.store.snapshot_dir(ref.node, ref.snapshot_id)
        except ProviderError as exc:
            raise ProviderError(f"node {ref.node}: {exc.message}") from exc

    def _snapshot_volume(self, node: str, volume: LocalVolume, run: str, tags: Mapping[str, str]) -> SnapshotRef:
        snapshot_id = check_part("snapshot id", f"{run}-{node}-{volume.name}")
        final = self.store.snapshot_dir(node, snapshot_id)
        if final.exists():
            raise ProviderError(
                f"node {node}: snapshot {snapshot_id} already exists at {final}",
                hint="each run snapshots a volume once; start a new run",
            )
        previous = self.store.previous(node, volume.name)
        link_from = None
        if previous is not None:
            prev_dir, prev_meta = previous
            index = {rel: FileFacts.from_json(facts) for rel, facts in (prev_meta.get("files") or {}).items()}
            link_from = LinkSource(data_dir=prev_dir / DATA, index=index)
        partial = self.store.work_dir(final.parent, PARTIAL_PREFIX, snapshot_id)
        where = f"node {node}: snapshot of volume {volume.name} ({volume.path})"
        try:
            os.mkdir(partial, 0o700)
            # Nothing here waits for the disk: an fsync now (even of snapshot.json alone) would wait
            # for the journal, and so for much of the data just copied, inside the engine's hold.
            stats = copy_tree(volume.path, partial / DATA, self._copier, link_from, sync="later")
            meta = self._metadata(node, volume, snapshot_id, tags, stats, previous[0].name if previous else None)
            write_metadata(partial, meta, sync=False)
            self.store.publish(partial, final, sync=False)
        except ReflinkUnsupported as exc:
            raise ProviderError(
                f"{where} failed: the store {self.store.root} cannot reflink files", hint=_REFLINK_HINT,
            ) from exc
        except TreeCopyError as exc:
            if exc.writing:
                raise ProviderError(f"{where} failed writing {exc.path}: {os_reason(exc.cause)}",
                                    hint=_store_hint(exc.cause, self.store.root)) from exc
            raise ProviderError(f"{where} failed at {exc.path}: {os_reason(exc.cause)}") from exc
        except OSError as exc:
            raise ProviderError(f"{where} failed writing {partial}: {os_reason(exc)}") from exc
        finally:
            if partial.exists():
                remove_tree(partial)
        return self._ref(meta, final)

    def _metadata(
        self,
        node: str,
        volume: LocalVolume,
        snapshot_id: str,
        tags: Mapping[str, str],
        stats: CopyStats,
        linked_from: str | None,
    ) -> dict[str, Any]:
        return {
            "format": METADATA_FORMAT,
            "snapshot_id": snapshot_id,
            "cluster": self.cluster,
            "node": node,
            "volume": volume.name,
            "source": str(volume.path),
            "state": "pending",
            "boot_id": boot_id(),
            "created_at": utc_text(datetime.now(UTC)),
            "tags": {**tags, TAG_VOLUME: volume.name},
            "bytes": stats.bytes_total,
            "copied_bytes": stats.bytes_copied,
            "linked_files": stats.linked_files,
            "reflinked_files": stats.reflinked_files,
            "copied_files": stats.copied_files,
            "linked_from": linked_from,
            "skipped": stats.skipped,
            "files": {rel: facts.to_json() for rel, facts in stats.files.items()},
            "unsynced": stats.unsynced,  # under data/
        }

    def _make_durable(self, node: str, snap_dir: Path, meta: dict[str, Any], deadline: float | None,
                      stop: threading.Event | None = None) -> None:
        """Bring a pending snapshot to completed: fsync what the copy left unsynced, then the
        metadata and the entries that name it, and only then write the completed marker. ``stop``:
        the wait for the node's lock gives up once it is set (``LockWaitStopped``), and so do the
        fsyncs, before the next file's (``CopyStopped``): the snapshot stays pending, for later."""
        if snapshot_state(snap_dir, meta)[0] == "completed":
            return
        snapshot_id = str(meta.get("snapshot_id") or snap_dir.name)
        where = f"node {node}: snapshot {snapshot_id} of volume {meta.get('volume')}"
        # Under the node lock: a restore and a wait may finalize the same snapshot at once, and a
        # delete must not rename it away half way. Not past the deadline: a process that stalled
        # holding the lock must not stall a backup's wait, nor a completion, for good.
        wait_s = None if deadline is None else max(0.0, deadline - time.monotonic())
        with self.store.node_lock(node, wait_s=wait_s, stop=stop):
            # What crashed calls left, removed here, after the hold: a killed copy's .partial can be
            # as large as the volume (`snapctl gc --delete` removes them too).
            self.store.clean_leftovers(node)
            if not (snap_dir / METADATA).exists():
                raise SnapshotNotFound(f"{where} was deleted meanwhile")
            state, error = snapshot_state(snap_dir, meta)
            if state == "completed":
                return
            if state == "error":
                raise ProviderError(f"{where} {error}", hint="take a new backup")
            if deadline is not None and time.monotonic() > deadline:
                raise self._deadline_error(where)
            try:
                fsync_tree(snap_dir / DATA, list(meta.get("unsynced") or ()), deadline=deadline, stop=stop)
                fsync_path(snap_dir / METADATA)
                fsync_dir(snap_dir)
                fsync_dir(snap_dir.parent)  # publishing renamed it into place
            except SyncDeadline as exc:
                raise self._deadline_error(where) from exc
            except (TreeCopyError, OSError) as exc:
                path, cause = (exc.path, exc.cause) if isinstance(exc, TreeCopyError) else (snap_dir, exc)
                why = f"could not be written to disk ({path}: {os_reason(cause)})"
                try:
                    mark_failed(snap_dir, why)
                except OSError:  # the same disk failing: the failure must still outlast this process
                    with contextlib.suppress(OSError):
                        mark_failed_without_room(snap_dir)
                raise ProviderError(f"{where} {why}", hint="check the store's disk; take a new backup") from exc
            try:
                mark_completed(snap_dir)
            except OSError as exc:  # all of it is on disk: marking it again later is safe
                raise ProviderError(f"{where}: cannot mark it completed: {os_reason(exc)}",
                                    hint="make room on the store's disk, then wait or restore again") from exc

    def _deadline_error(self, where: str) -> ProviderError:
        return ProviderError(
            f"{where} was not on disk by the deadline",
            hint="raise policy.wait_timeout_s, or use --no-wait (the next backup, a prune or a restore completes "
                 "such a snapshot later)",
        )

    def _ref(self, meta: dict[str, Any], snap_dir: Path) -> SnapshotRef:
        state, error = snapshot_state(snap_dir, meta)
        return SnapshotRef(
            provider=PROVIDER,
            snapshot_id=str(meta.get("snapshot_id") or snap_dir.name),
            node=str(meta.get("node") or snap_dir.parent.name),
            volume=str(meta.get("volume") or ""),
            state=state,  # type: ignore[arg-type]
            error=error,
            progress=100.0 if state == "completed" else None,
            bytes=meta.get("bytes"),
            created_at=meta.get("created_at"),
            tags=dict(meta.get("tags") or {}),
            extra={
                "copied_bytes": meta.get("copied_bytes"),
                "linked_files": meta.get("linked_files"),
                "path": str(snap_dir),
            },
        )


def _unshared_bytes(path: Path) -> int:
    """The size of the regular files under ``path`` that nothing else links to (an unchanged file
    is a hard link into the previous snapshot): about what removing it frees."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                facts = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(facts.st_mode) and facts.st_nlink == 1:
                total += facts.st_size
    return total


_REFLINK_HINT = "set reflink: auto (falls back to copies) or put the store on btrfs/xfs/zfs with reflink"


def _store_hint(cause: OSError, store: Path) -> str | None:
    if cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free space in the snapshot store {store} (snapctl prune deletes old runs), or point provider.store elsewhere"
    if cause.errno == errno.EROFS:
        return f"the snapshot store {store} is read-only: remount it read-write, or point provider.store elsewhere"
    return None
