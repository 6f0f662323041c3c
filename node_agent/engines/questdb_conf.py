"""The files QuestDB's restore-prepare writes into a restored root (node_agent/engines/questdb.py):
the ``_restore`` marker (8.0 on) and server.conf's instance id (before 8.0).

The restored root holds whatever the source's data directory held, symbolic links included. A
link planted there (``conf/server.conf.snapctl-tmp`` -> a file of the host) must not be written
through, by the agent or by snapctl's own process: every name is opened relative to a descriptor
of its directory, never following a link, and a link is refused rather than replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from snapctl.errors import EngineError, os_reason

_INSTANCE_ID_KEY = "cairo.snapshot.instance.id"
_CONF = "server.conf"
_TMP = "server.conf.snapctl-tmp"
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_LINK_HINT = "remove it from the restored files (it came with the backup) and run restore-prepare again"


def touch_restore_marker(root: Path) -> None:
    """Create ``root/_restore`` (8.0 on: the server then recovers from the checkpoint's files)."""
    with _directory(root) as root_fd:
        try:
            # O_NONBLOCK: a FIFO planted under the name would otherwise block the open forever.
            fd = os.open("_restore", os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW, 0o644, dir_fd=root_fd)
        except OSError as exc:
            raise _refused(root / "_restore", exc) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise EngineError(f"questdb restore: {root / '_restore'} is not a regular file", hint=_LINK_HINT)
        finally:
            os.close(fd)


def write_instance_id(root: Path, instance_id: str) -> None:
    """Set ``cairo.snapshot.instance.id`` in ``root/conf/server.conf``, so a pre-8 server sees a new
    instance and runs recovery."""
    with _directory(root) as root_fd:
        with contextlib.suppress(FileExistsError):  # an existing link is refused by the open below
            os.mkdir("conf", 0o755, dir_fd=root_fd)
        with _directory(root / "conf", parent_fd=root_fd) as conf_fd:
            _rewrite(root / "conf", conf_fd, instance_id)


def _rewrite(conf_dir: Path, conf_fd: int, instance_id: str) -> None:
    before = _stat(conf_dir / _CONF, conf_fd)
    lines: list[str] = []
    if before is not None:
        if not stat.S_ISREG(before.st_mode):
            raise EngineError(f"questdb restore: {conf_dir / _CONF} is not a regular file", hint=_LINK_HINT)
        try:
            fd = os.open(_CONF, os.O_RDONLY | _NOFOLLOW, dir_fd=conf_fd)
        except OSError as exc:
            raise _refused(conf_dir / _CONF, exc) from exc
        with open(fd, encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    kept = [line for line in lines if not line.strip().startswith(_INSTANCE_ID_KEY)]
    kept.append(f"{_INSTANCE_ID_KEY}={instance_id}")
    # A leftover temp file (or a link planted under its name) goes: O_EXCL then makes a new one.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_TMP, dir_fd=conf_fd)
    # server.conf may hold QuestDB's passwords (pg.password, http.password): the copy that replaces
    # it keeps its mode and owner, not the agent's umask (0644 under 022 made it readable by all).
    try:
        fd = os.open(_TMP, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600 if before else 0o644,
                     dir_fd=conf_fd)
    except OSError as exc:
        raise _refused(conf_dir / _TMP, exc) from exc
    try:
        with open(fd, "w", encoding="utf-8", errors="surrogateescape", closefd=False) as handle:
            if before is not None:
                os.fchmod(fd, stat.S_IMODE(before.st_mode))
                with contextlib.suppress(OSError):  # only root may give a file away; the agent's user owns it then
                    os.fchown(fd, before.st_uid, before.st_gid)
            handle.write("\n".join(kept) + "\n")
            handle.flush()
            os.fsync(fd)
    finally:
        os.close(fd)
    # rename() replaces a name, never what a link at it points to.
    os.replace(_TMP, _CONF, src_dir_fd=conf_fd, dst_dir_fd=conf_fd)


def _stat(path: Path, dir_fd: int) -> os.stat_result | None:
    try:
        found = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(found.st_mode):
        raise EngineError(f"questdb restore: {path} is a symbolic link, which restore-prepare does not follow",
                          hint=_LINK_HINT)
    return found


@contextlib.contextmanager
def _directory(path: Path, *, parent_fd: int | None = None) -> Iterator[int]:
    """A descriptor of the directory ``path``; under ``parent_fd``, its last part must not be a link."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        if parent_fd is None:
            fd = os.open(path, flags)  # the root itself: the engine's data path, checked by the agent
        else:
            fd = os.open(path.name, flags | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError as exc:
        raise _refused(path, exc) from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _refused(path: Path, exc: OSError) -> EngineError:
    # O_NOFOLLOW on a link fails with ELOOP; O_DIRECTORY|O_NOFOLLOW on a link to a directory, ENOTDIR.
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST, errno.ENXIO) and os.path.islink(path):
        return EngineError(f"questdb restore: {path} is a symbolic link, which restore-prepare does not follow",
                           hint=_LINK_HINT)
    return EngineError(f"questdb restore: cannot write {path}: {os_reason(exc)}")
