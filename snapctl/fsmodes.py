"""Directories and lock files snapctl creates, with modes that do not depend on the umask cron or
a CI runner starts it with (docs/security.md): the catalog's and the local provider's alike."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from snapctl.errors import BadInputError, os_reason


def make_dirs(path: Path, mode: int = 0o755) -> None:
    """``path`` and its missing parents, at most ``mode`` whatever the umask, none writable by group
    or others by default: under umask 0 others could otherwise swap manifests in (and steer what prune
    deletes), or a snapshot or a restored copy for their own. Directories that exist keep theirs."""
    try:
        os.mkdir(path, mode)  # as Path.mkdir(parents=True, exist_ok=True) does it, with this mode for all
    except FileNotFoundError:
        if path.parent == path:
            raise
        make_dirs(path.parent, mode)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not path.is_dir():
                raise
        except FileNotFoundError as exc:
            if not path.parent.is_dir():
                raise  # removed again meanwhile: the OS's own error
            # Its parent is there, yet mkdir says it is not: a file system that makes no directories
            # (/proc, /sys). Asked again, it recursed until RecursionError.
            raise BadInputError(f"cannot create {path}: {path.parent} is on a file system that holds no new "
                                f"directories (mkdir: {os_reason(exc)})",
                                hint="point the setting that names it (catalog.path, the provider's store, "
                                "$XDG_STATE_HOME) at a directory on a disk") from exc
    except FileExistsError:
        if not path.is_dir():
            raise


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open`` for a file only snapctl's user may open (an opener for ``open()`` too): a lock
    file anyone could open, even read-only, they could hold an ``flock`` on for as long as they
    liked. One an older snapctl made 0644 is tightened, where it is ours to change."""
    fd = os.open(path, flags, 0o600)
    if os.fstat(fd).st_mode & 0o077:
        with contextlib.suppress(OSError):  # another user's: it stays as it is
            os.fchmod(fd, 0o600)
    return fd


def remove_tree(path: Path) -> None:
    """Remove a tree of copied data (a snapshot, a drill's scratch directory), even one holding
    read-only directories copied from a volume. Only directories are made writable: files may be
    hard links shared with snapshots, and their modes must stay as recorded."""
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    os.chmod(path, stat.S_IRWXU)
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            child = os.path.join(root, name)
            if not os.path.islink(child):
                os.chmod(child, stat.S_IRWXU)
    shutil.rmtree(path)


def fsync_dir(path: Path) -> None:
    """Make a rename, creation or removal in ``path`` durable: without it the entry can be lost with
    the power though the file's own bytes were fsynced."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
