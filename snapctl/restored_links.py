"""Symbolic links in restored data that lead an engine path off the restored volumes.

A restore (or drill) on this machine moves the engine's paths onto the restored volumes; a link
in the backup's data may still lead one elsewhere: the source's file was a link to another disk,
and on this host the link names live files (a database whose -shm restore-prepare deletes, whose
rows verify counts). Such a restore is refused.

Checked before anything is copied where the provider can show the tree its restore will copy
(``restore_contents``: the local provider's snapshot directory): the links are read there, as
they will be once copied. Otherwise (a provider that makes the data only by restoring it) only
once the node's volumes are restored, from the restored files themselves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from snapctl.errors import BadInputError
from snapctl.redact import redact

if TYPE_CHECKING:
    from snapctl.providers import Provider, SnapshotRef

__all__ = ["LinkLeadsOff", "check_stays_on_the_volumes", "remove_restored", "resolve_as_restored"]

_MAX_LINKS = 40  # as the kernel's ELOOP: a loop resolves no further, and the engine's open fails on it


class LinkLeadsOff(BadInputError):
    """An engine path that a symbolic link in the backup's data leads off the restored volumes."""


def resolve_as_restored(path: str | Path, contents: Mapping[Path, Path]) -> Path:
    """``path`` with its symbolic links resolved as they will be once each restore target (a key
    of ``contents``, its links resolved) holds a copy of its value, a directory on this machine
    that the restore copies as it is (links as links). Below a target, a link is read from that
    copy's source; elsewhere, from this host. As ``os.path.realpath`` (not strict): a part that
    is not there is kept as given."""
    current = Path("/")
    pending = list(reversed(Path(os.path.abspath(path) if not os.path.isabs(path) else path).parts[1:]))
    links = 0
    while pending:
        name = pending.pop()
        if name == "..":
            current = current.parent
            continue
        candidate = current / name
        target = _link(candidate, contents) if links < _MAX_LINKS else None
        if target is None:
            current = candidate
            continue
        links += 1
        if os.path.isabs(target):
            current = Path("/")
        pending.extend(reversed([part for part in Path(target).parts if part != "/"]))
    return current


def _link(path: Path, contents: Mapping[Path, Path]) -> str | None:
    """What the link at ``path`` will point to once restored; None: not a link (or not there)."""
    for place, source in contents.items():
        if path == place:  # the restore makes it a directory, whatever a link there now points to
            return None
        if path.is_relative_to(place):
            path = source / path.relative_to(place)
            break
    try:
        return os.readlink(path)
    except (OSError, ValueError):  # not a link, not there, a NUL byte: nothing to follow
        return None


def check_stays_on_the_volumes(node: str, key: str, value: str, restored: Mapping[str, str],
                               roots: Mapping[str, Path], *, drill: bool,
                               contents: Mapping[str, Path] | None = None) -> None:
    """Refuse a moved engine path (``value``, setting ``key``) that a symbolic link leads off the
    restored volumes (``restored``: volume -> where it is restored). ``roots``: the volumes'
    places on the source, which an absolute link within a volume still names. ``contents``:
    volume -> the directory its restore will copy, to judge the links before the copy; None:
    judged on the restored files."""
    if contents is None:
        where = Path(value).resolve()
    else:
        where = resolve_as_restored(value, {Path(os.path.realpath(restored[volume])): Path(source)
                                            for volume, source in contents.items() if volume in restored})
    if any(where.is_relative_to(Path(os.path.realpath(root))) for root in restored.values()):
        return
    what = "drill" if drill else "restore"
    said = (f"node {node}: the engine's {key} {value} leads off the restored volumes through a symbolic link "
            f"in the backup's data, to {where}: the {what} would use the files there instead of the backup's")
    own = next((name for name, root in roots.items() if where.is_relative_to(root)), None)
    if own is not None:  # the data is in the backup: the link names it by the source's absolute path
        raise LinkLeadsOff(said, hint=f"the link is absolute, into volume {own} at its place on the source: make it "
                                      "relative (ln -sfr TARGET LINK) so that it stays within the volume restored")
    raise LinkLeadsOff(said, hint="the backup holds a link, not the data: list the directory it points to among "
                                  "the node's volumes, so that the data is backed up and restored too")


def remove_restored(provider: Provider, node: str, made: list[tuple[SnapshotRef, str]], exc: LinkLeadsOff) -> None:
    """After ``exc`` was found on node ``node``'s restored files: remove what this restore made
    for the node (``made``: (ref, restored) as each landed), which nothing may use, and say so in
    the hint. What cannot be removed stays in ``made``, for the refusal to name with the rest."""
    removed = []
    for ref, restored in [entry for entry in made if entry[0].node == node]:
        try:
            provider.delete_volume(restored)
        except Exception as failed:  # noqa: BLE001 - the refusal is the error; what is left gets named
            logging.getLogger("snapctl.restore").warning("could not remove %s, restored for node %s: %s",
                                                         restored, node, redact(str(failed)))
            continue
        made.remove((ref, restored))
        removed.append(restored)
    if removed:
        exc.hint = f"{exc.hint}; this restore's copy of node {node} was removed again: {', '.join(removed)}"
