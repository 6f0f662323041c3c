"""Where a directory of this host lies within its filesystem, through bind mounts.

A directory bind-mounted from inside a volume (``/srv/db`` bound from ``/vol/db``) has the device
and inode of ``/vol/db``, but its parents are ``/srv`` and ``/``: walking up from it never meets
``/vol``. The kernel's mount table says which directory of which filesystem each mount shows, so
the place of a path within its filesystem is the same however it is reached. Linux only; elsewhere
(no ``/proc/self/mountinfo``) nothing is known and callers keep their own answer.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_ESCAPED = re.compile(r"\\([0-7]{3})")  # mountinfo writes a space as \040, a newline as \012


def _unescaped(field: str) -> str:
    return _ESCAPED.sub(lambda m: chr(int(m[1], 8)), field)


def _mounts(mountinfo: Path) -> list[tuple[str, str, str]]:
    """(mount point, the directory of its filesystem it shows, the filesystem's device), in the
    table's order: of mounts on the same point, the later hides the earlier."""
    try:
        lines = mountinfo.read_text(errors="replace").splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 5:
            mounts.append((_unescaped(fields[4]), _unescaped(fields[3]), fields[2]))
    return mounts


def filesystem_place(path: Path, mountinfo: Path = MOUNTINFO) -> tuple[str, str] | None:
    """(device, path within that filesystem) of ``path``, an existing directory or file; None when
    the mount table cannot say."""
    return _place(path, _mounts(mountinfo))


def _place(path: Path, mounts: list[tuple[str, str, str]]) -> tuple[str, str] | None:
    real = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    for mount_point, root, device in mounts:
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) >= len(best[0])):
            best = (mount_point, root, device)
    if best is None:
        return None
    mount_point, root, device = best
    rest = real[len(mount_point):].lstrip("/")
    return device, os.path.normpath(os.path.join(root, rest))


def inside_by_mounts(path: Path, directories: list[Path], mountinfo: Path = MOUNTINFO) -> bool:
    """Whether ``path`` lies in one of ``directories`` within the same filesystem, whichever mounts
    show them where they are."""
    mounts = _mounts(mountinfo)  # read once for them all
    place = _place(path, mounts)
    if place is None:
        return False
    device, within = place
    for directory in directories:
        other = _place(directory, mounts)
        if other is not None and other[0] == device and (
                within == other[1] or within.startswith(other[1].rstrip("/") + "/")):
            return True
    return False
