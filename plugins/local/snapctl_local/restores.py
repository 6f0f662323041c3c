"""Restoring a local snapshot into a directory, and removing a directory a restore made: the
restore half of ``LocalProvider``, which mixes this class in."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapctl.errors import BadInputError, Interrupted, ProviderError, SnapshotNotFound, os_reason
from snapctl.fsmodes import fsync_dir, make_dirs, remove_tree
from snapctl.providers import GONE_HINT, TAG_CLUSTER, RestoreTarget, SnapshotRef, check_restore_options, stop_requested

from .copy import CopyStopped, FileCopier, TreeCopyError, can_reflink, copy_tree
from .settings import nearest_existing
from .space import Room
from .store import (
    DATA,
    RESTORE_PREFIX,
    LockWaitStopped,
    SnapshotStore,
    finish_restore_marker,
    finished_restore_marker,
    metadata_damage,
    read_metadata,
    read_restore_marker,
    restore_marker,
    size_problem,
    snapshot_state,
    write_restore_marker,
)


class LocalRestores:
    """Full copies out of the store, never links (snapshot files are shared between snapshots),
    into a target that must be new or empty, with a marker beside it that names this cluster."""

    if TYPE_CHECKING:  # LocalProvider's
        cluster: str
        base_dir: Path
        store: SnapshotStore
        _restore_copier: FileCopier

        def _snapshot_dir(self, ref: SnapshotRef) -> Path: ...

        def elsewhere(self, ref: SnapshotRef) -> str | None: ...

        def elsewhere_hint(self, ref: SnapshotRef) -> str: ...

        def _make_durable(self, node: str, snap_dir: Path, meta: dict[str, Any], deadline: float | None,
                          stop: threading.Event | None = None) -> None: ...

    def check_restore(self, ref: SnapshotRef, target: RestoreTarget) -> None:
        """What ``restore`` would refuse, without copying anything: a restore of several volumes
        checks them all first, so that a bad target or snapshot is not found after other volumes
        were copied (and then block the retry: a target must be empty)."""
        # A copy has no type or size to choose: restore.options (a cloud's) can only be a mistake.
        check_restore_options("local", ref.node, target.extra, ())
        dest = self._restore_dest(ref, target)
        # restore() makes the missing directories and renames its staging directory into place
        # there; the nearest one that exists must let it.
        parent = nearest_existing(dest.parent)
        if not parent.is_dir():
            raise BadInputError(f"node {ref.node}: cannot restore to {dest}: {parent} is not a directory",
                                hint=_TARGET_HINT)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BadInputError(f"node {ref.node}: cannot restore to {dest}: {parent} is not writable",
                                hint=_TARGET_HINT)
        # The target is empty: a restore is under way or died, or one finished and its directory
        # was emptied by hand since (restore() then removes that marker).
        if os.path.lexists(restore_marker(dest)) and not finished_restore_marker(dest) and not self._killed(dest):
            raise _busy_target(ref, dest)
        snap_dir = self._snapshot_dir(ref)
        meta = self._restorable_metadata(ref, snap_dir)
        state, error = snapshot_state(snap_dir, meta)
        if state == "error":
            raise ProviderError(f"node {ref.node}: snapshot {ref.snapshot_id} of volume {meta.get('volume')} {error}",
                                hint="take a new backup")
        self._check_contents(ref, snap_dir, meta)

    def restore_contents(self, ref: SnapshotRef) -> Path:
        """The directory ``restore`` copies into the target, links as links: a restore reads the
        links in it before copying (``snapctl.restored_links``), not once they are restored."""
        return self._snapshot_dir(ref) / DATA

    def check_restore_space(self, planned: Sequence[tuple[SnapshotRef, RestoreTarget]]) -> None:
        """Room on every filesystem the restore writes to, for all its volumes there together,
        before anything is copied (after ``check_restore`` passed for each)."""
        rooms: dict[int, Room] = {}
        clones: dict[tuple[int, int], bool] = {}  # (store's device, target's) -> restore() reflinks there
        for ref, target in planned:
            dest = self._restore_dest(ref, target)
            # restore() makes the copy beside dest, in the directories it makes from this one.
            where = nearest_existing(dest.parent)
            try:
                device = os.stat(where).st_dev
                room = rooms.get(device) or rooms.setdefault(device, Room(where, os.statvfs(where)))
            except OSError as exc:
                raise _unusable_target(ref, dest, exc) from exc
            snap_dir = self._snapshot_dir(ref)
            meta = self._restorable_metadata(ref, snap_dir)
            room.add(f"node {ref.node} volume {ref.volume}", meta, clones=self._clones_into(snap_dir, where, clones))
        for room in rooms.values():
            room.check()

    def _clones_into(self, snap_dir: Path, where: Path, known: dict[tuple[int, int], bool]) -> bool:
        """Whether restore()'s copies from ``snap_dir`` into ``where`` will be reflinks, which share
        the snapshot's blocks (the store's own filesystem, one that clones): then the data needs no
        room. Probed from one to the other, as the copy goes; when that cannot be told, no."""
        if self._restore_copier.reflink == "never":
            return False
        try:
            devices = (os.stat(snap_dir).st_dev, os.stat(where).st_dev)
            if devices not in known:
                known[devices] = can_reflink(snap_dir, where) is True
        except OSError:
            return False
        return known[devices]

    def restore(self, ref: SnapshotRef, target: RestoreTarget) -> str:
        check_restore_options("local", ref.node, target.extra, ())
        dest = self._restore_dest(ref, target)
        snap_dir = self._snapshot_dir(ref)
        meta = self._restorable_metadata(ref, snap_dir)
        self._check_contents(ref, snap_dir, meta)
        # A backup run with --no-wait left it pending: copy out nothing that is not on disk yet.
        # As long as it takes (another restore may be fsyncing it), but not past a stop.
        try:
            self._make_durable(ref.node, snap_dir, meta, deadline=None, stop=stop_requested())
        except (LockWaitStopped, CopyStopped) as exc:  # a drill interrupted: the store held, or its fsyncs
            raise Interrupted(f"node {ref.node}: restore of snapshot {ref.snapshot_id} to {dest}") from exc
        try:
            make_dirs(dest.parent)
        except OSError as exc:  # e.g. --to names a file, or a directory snapctl may not write to
            raise _unusable_target(ref, dest, exc) from exc
        staging = self.store.work_dir(dest.parent, RESTORE_PREFIX, dest.name)
        marked = False
        try:
            # The marker goes first, so every directory a restore made is one delete_volume may remove.
            if finished_restore_marker(dest):  # its restore's directory was removed by hand: it names nothing
                restore_marker(dest).unlink(missing_ok=True)
            else:
                self._clear_killed(dest)
            try:
                write_restore_marker(dest, ref, meta, staging=staging, tags=target.tags)
            except FileExistsError:
                raise _busy_target(ref, dest) from None
            marked = True
            # Full copies, never links: snapshot files are shared between snapshots.
            copy_tree(snap_dir / DATA, staging, self._restore_copier, stop=stop_requested())
            os.rename(staging, dest)  # replaces an empty directory atomically
            fsync_dir(dest.parent)
            marked = False
            with contextlib.suppress(OSError):  # restored: a marker left unfinished only blocks a rerun
                finish_restore_marker(dest)
        except CopyStopped as exc:  # a drill interrupted: its other nodes' copies stop too
            raise Interrupted(f"node {ref.node}: restore of snapshot {ref.snapshot_id} to {dest}") from exc
        except TreeCopyError as exc:
            raise ProviderError(
                f"node {ref.node}: restore of snapshot {ref.snapshot_id} to {dest} failed "
                f"{'writing' if exc.writing else 'at'} {exc.path}: {os_reason(exc.cause)}",
                hint=_full_target_hint(exc.cause, dest) if exc.writing else None,
            ) from exc
        except OSError as exc:
            raise ProviderError(f"node {ref.node}: restore of snapshot {ref.snapshot_id} to {dest} failed: "
                                f"{os_reason(exc)}", hint=_full_target_hint(exc, dest)) from exc
        finally:
            if staging.exists():
                remove_tree(staging)
            if marked:
                restore_marker(dest).unlink(missing_ok=True)
        return str(dest)

    def find_restored(self, tags: Mapping[str, str], places: Sequence[str]) -> list[str]:
        """Of ``places`` (restore targets), those whose marker says a restore made or began there
        for this cluster, carrying ``tags``: directories have no tags of their own to list by."""
        found = []
        for place in places:
            dest = self._restore_path(place)
            if dest.is_symlink():  # as restore() resolved it: the marker is beside the place it points to
                dest = Path(os.path.realpath(dest))
            recorded = read_restore_marker(dest)
            if (recorded is not None and recorded.get("cluster") == self.cluster and recorded.get("path") == str(dest)
                    and all((recorded.get("tags") or {}).get(k) == v for k, v in tags.items())):
                found.append(str(dest))
        return found

    def delete_volume(self, volume_id: str) -> None:
        """Remove a directory ``restore`` made, and its marker; only one whose marker names this cluster.
        A restore killed part-way (its marker unfinished) made only its staging copy: that goes,
        and the target, absent or empty as it was before, stays."""
        dest = self._restore_path(volume_id)
        marker = restore_marker(dest)
        recorded = read_restore_marker(dest)
        if recorded is not None and recorded.get("cluster") == self.cluster and recorded.get("path") == str(dest):
            self._remove_staging(dest, recorded)
            if not recorded.get("finished_at") and (not os.path.lexists(dest) or _empty_dir(dest)):
                marker.unlink(missing_ok=True)
                return
        if not os.path.lexists(dest):
            if recorded is not None and recorded.get("cluster") == self.cluster:
                marker.unlink(missing_ok=True)
            return
        if recorded is None:
            raise ProviderError(
                f"refusing to delete {dest}: there is no readable {marker.name} beside it, so snapctl's local "
                "restore did not make it",
                hint="remove it by hand if you are sure it is a scratch copy",
            )
        if recorded.get("cluster") != self.cluster or recorded.get("path") != str(dest):
            raise ProviderError(
                f"refusing to delete {dest}: its {marker.name} names {TAG_CLUSTER} {recorded.get('cluster')!r} "
                f"at {recorded.get('path')!r}, not {self.cluster!r} at this path",
                hint="snapctl only deletes directories it restored for this cluster",
            )
        if dest.is_symlink() or not dest.is_dir():
            raise ProviderError(f"refusing to delete {dest}: it is no longer the directory restore made")
        try:
            remove_tree(dest)
            marker.unlink(missing_ok=True)  # last: a removal that fails part way can be retried
        except OSError as exc:
            raise ProviderError(f"cannot delete the restored directory {dest}: {os_reason(exc)}") from exc

    def find_killed_restores(self, places: Mapping[str, str | None]) -> tuple[list[tuple[str, str, int]], dict[str, str]]:
        """Of ``places`` (restore targets), those where a restore proven killed (``_killed``) left
        its marker: (target, its staging copy or "", the copy's bytes); and the places that could
        not be looked at, and why. For `snapctl gc`, which learns the places from the catalog's
        unfinished restore records, and keeps a record open while one of its places is unseen.
        Each place maps to the directory its restore made the target's missing directories below
        (``--to DIR``), or None: its own directory must be there."""
        found, unseen = [], {}
        for place, root in places.items():
            dest = self._restore_path(place)
            try:
                if dest.is_symlink():
                    dest = Path(os.path.realpath(dest))
                if (why := _unseen(dest, root)) is not None:
                    unseen[place] = why
                    continue
                recorded = read_restore_marker(dest)
                if recorded is None or not self._killed(dest, recorded):
                    continue
                staging = self._staging_of(dest, recorded)
                found.append((str(dest), str(staging or ""), _tree_bytes(staging) if staging is not None else 0))
            except OSError as exc:
                # A place this user cannot look into (another user's restore, a name too long here):
                # nothing it can prove killed, and nothing it can prove clear either.
                unseen[place] = os_reason(exc)
        return found, unseen

    def clear_killed_restore(self, place: str) -> None:
        """What ``find_killed_restores`` found at ``place``, removed: its staging copy, then its marker."""
        dest = self._restore_path(place)
        try:
            self._clear_killed(dest)
        except OSError as exc:
            raise ProviderError(f"cannot remove what a killed restore left beside {dest}: {os_reason(exc)}") from exc

    def _killed(self, dest: Path, recorded: dict[str, Any] | None = None) -> bool:
        """The unfinished marker beside ``dest`` is this cluster's, of a restore that made nothing
        there yet, whose process is proven gone from this host (killed: SIGKILL, the OOM killer, a
        reboot). Any doubt (another host, an older marker naming no process) is not gone."""
        from snapctl.drill_leftovers import gone_from_this_host

        recorded = read_restore_marker(dest) if recorded is None else recorded
        return bool(recorded is not None and not recorded.get("finished_at") and recorded.get("cluster") == self.cluster
                    and recorded.get("path") == str(dest) and (not os.path.lexists(dest) or _empty_dir(dest))
                    and gone_from_this_host(str(recorded.get("owner") or ""), recorded.get("owner_process")))

    def _clear_killed(self, dest: Path) -> None:
        """A killed restore's marker and staging copy, before this restore writes its own marker.
        The marker is first moved aside, and checked to be the one judged: a rerun racing this one
        may have replaced it with the marker of a restore that is running."""
        marker = restore_marker(dest)
        recorded = read_restore_marker(dest)
        if recorded is None or not self._killed(dest, recorded):
            return
        claimed = marker.with_name(f".{marker.name}.{secrets.token_hex(4)}.killed")
        try:
            os.rename(marker, claimed)
        except FileNotFoundError:
            return  # another rerun cleared it
        try:
            if json.loads(claimed.read_bytes()) != recorded:  # not the one judged: put it back
                with contextlib.suppress(FileExistsError):
                    os.link(claimed, marker)
                return
            self._remove_staging(dest, recorded)
        finally:
            claimed.unlink(missing_ok=True)

    @staticmethod
    def _staging_of(dest: Path, recorded: dict[str, Any]) -> Path | None:
        """The staging copy the marker names, if it is there and one of this target's (beside it, named for it)."""
        staging = Path(str(recorded.get("staging") or ""))
        if (recorded.get("staging") and staging.parent == dest.parent
                and staging.name.startswith(f"{RESTORE_PREFIX}{dest.name}-") and os.path.lexists(staging)):
            return staging
        return None

    def _remove_staging(self, dest: Path, recorded: dict[str, Any]) -> None:
        staging = self._staging_of(dest, recorded)
        if staging is not None:
            try:
                if staging.is_dir() and not staging.is_symlink():
                    remove_tree(staging)
                else:
                    staging.unlink()
            except OSError as exc:
                raise ProviderError(f"cannot delete {staging}, a restore's staging copy: {os_reason(exc)}") from exc

    def _restore_dest(self, ref: SnapshotRef, target: RestoreTarget) -> Path:
        """The target's directory, which must not exist yet or be empty."""
        if target.path is None:
            raise BadInputError(f"node {ref.node}: restoring a local snapshot needs a target path")
        dest = self._restore_path(str(target.path))
        if dest.is_symlink():
            # The place it points to (a larger disk, say): the copy is made beside that place and
            # renamed over it (a rename over the link itself fails: "not a directory").
            dest = Path(os.path.realpath(dest))
        # The store is snapctl's own (its files are shared between snapshots): a restore there would
        # be left in it for good, found by nothing that cleans the store.
        store = Path(os.path.realpath(self.store.root))
        if Path(os.path.realpath(dest)).is_relative_to(store):
            raise BadInputError(f"node {ref.node}: cannot restore to {dest}: it is inside the snapshot store {store}",
                                hint="restore into a directory apart from provider.store (--to DIR, or restore.path)")
        try:
            if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
                raise BadInputError(
                    f"node {ref.node}: restore target {dest} is not an empty directory",
                    hint="restore into a new or empty directory; snapctl never overwrites files",
                )
        except OSError as exc:
            raise _unusable_target(ref, dest, exc) from exc
        if os.path.ismount(dest):  # a fresh disk mounted there: the copy would go to the one below
            raise BadInputError(
                f"node {ref.node}: cannot restore to {dest}: it is a mount point, and a restore is built beside "
                "its target (here: on the file system below it) and renamed into place, which a mount point refuses",
                hint=f"restore into a directory inside it, e.g. restore.path: {dest}/restore (or --to a directory "
                     "on that disk)")
        return dest

    def _restorable_metadata(self, ref: SnapshotRef, snap_dir: Path) -> dict[str, Any]:
        meta = read_metadata(snap_dir)
        if meta is None:
            if damage := metadata_damage(snap_dir):
                raise damaged(ref, damage, hint=GONE_HINT)
            if where := self.elsewhere(ref):
                raise ProviderError(f"node {ref.node}: snapshot {ref.snapshot_id}: {where}", hint=self.elsewhere_hint(ref))
            raise SnapshotNotFound(f"node {ref.node}: snapshot {ref.snapshot_id} not found in {self.store.cluster_dir}")
        return meta

    def _check_contents(self, ref: SnapshotRef, snap_dir: Path, meta: dict[str, Any]) -> None:
        """Every file the snapshot's index records is there with its recorded size (as `snapctl
        verify` checks): a copy without one, or with one cut short, would restore "fine" when no
        in-place check reads that file (a Tarantool xlog). A changed byte of the same size is left
        to the in-place check and the drill, which name what differs."""
        data = snap_dir / DATA
        problems = []
        for rel, facts in sorted((meta.get("files") or {}).items()):
            try:
                found = os.lstat(data / rel)
            except FileNotFoundError:
                problems.append(f"file {rel} is missing")
                continue
            except OSError as exc:
                problems.append(f"file {rel} cannot be read: {os_reason(exc)}")
                continue
            if not stat.S_ISREG(found.st_mode):
                problems.append(f"file {rel} is no longer a regular file")
            elif (wrong := size_problem(rel, found.st_size, facts, meta)) is not None:
                problems.append(wrong)
        if problems:
            more = len(problems) - _NAMED
            shown = ", ".join(problems[:_NAMED]) + (f" and {more} more" if more > 0 else "")
            raise damaged(ref, shown, hint=GONE_HINT)

    def _restore_path(self, volume_id: str) -> Path:
        dest = Path(os.path.expanduser(volume_id))
        return Path(os.path.abspath(dest if dest.is_absolute() else self.base_dir / dest))


def _unseen(dest: Path, root: str | None) -> str | None:
    """Why the marker beside ``dest`` cannot be looked for (None: it can, and was there or not).
    A directory that is not there is no proof that nothing is: a share not mounted, a disk gone.
    Below ``root`` it is, when ``root`` is there: the restore makes those directories as it gets
    to each node, and one killed before never made them."""
    try:
        if not stat.S_ISDIR(os.stat(dest.parent).st_mode):
            return f"{dest.parent} is not a directory"
    except (FileNotFoundError, NotADirectoryError):
        if root is not None and dest.parent.is_relative_to(root) and os.path.isdir(root):
            return None
        return (f"{dest.parent} is not there (a share not mounted?); if nothing should be there, make it an empty "
                "directory and gc looks again")
    marker = restore_marker(dest)
    try:
        with open(marker, "rb"):  # one there that cannot be read names nothing gc could judge
            pass
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read {marker}: {os_reason(exc)}"
    return None


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    except OSError:
        return False


def damaged(ref: SnapshotRef, damage: str, *, hint: str) -> ProviderError:
    # Not SnapshotNotFound: for a delete that counts as done, and the directory is still there.
    return ProviderError(f"node {ref.node}: snapshot {ref.snapshot_id} is damaged: {damage}", hint=hint)


_NAMED = 5  # damaged files an error names, of a snapshot's thousands
_TARGET_HINT = "restore into a directory that snapctl can create and write to (--to DIR, or restore.path)"


def _full_target_hint(exc: OSError, dest: Path) -> str | None:
    """A disk that filled up during the copy, though it had room when the restore began: something
    else wrote to it meanwhile (or its metadata took the last blocks)."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return (f"free space at {dest.parent} (it had room for the data when the restore began: something else "
            "wrote there meanwhile, or the filesystem's own metadata took the rest), or restore onto a disk with "
            "room (--to DIR or restore.path; a drill: drill.scratch_dir)")


def _unusable_target(ref: SnapshotRef, dest: Path, exc: OSError) -> BadInputError:
    return BadInputError(f"node {ref.node}: cannot restore to {dest}: {os_reason(exc)}", hint=_TARGET_HINT)


def _busy_target(ref: SnapshotRef, dest: Path) -> BadInputError:
    marker = restore_marker(dest)
    recorded = read_restore_marker(dest) or {}
    owner = f" by {recorded['owner']}" if recorded.get("owner") else ""
    staging = recorded.get("staging") or str(dest.parent / f"{RESTORE_PREFIX}{dest.name}-*")
    return BadInputError(f"node {ref.node}: another restore is writing to {dest}{owner} (its marker {marker} "
                         "is there)",
                         hint=f"wait for it; if it is not running (killed, or on another host), remove {marker} "
                              f"and {staging}")
