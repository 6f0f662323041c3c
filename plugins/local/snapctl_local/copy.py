"""Copying directory trees fast and faithfully: hard links to an earlier snapshot for unchanged
files, reflinks where the filesystem has them, kernel-side copies otherwise.

Nothing here reads a whole file into memory: data moves in large chunks through
``copy_file_range``/``sendfile`` and only falls back to a bounded userspace buffer.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h
KERNEL_CHUNK = 64 * 1024 * 1024
USERSPACE_CHUNK = 1024 * 1024

# Errors that mean "this kind of copy is not possible here", as opposed to a real I/O failure.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EBADF}
_LINK_FALLBACK = {errno.ENOENT, errno.EMLINK, errno.EXDEV, errno.EPERM}

ReflinkMode = Literal["auto", "always", "never"]

# Set by copy_tree for its own thread: the files copied so far, fsynced in one pass at the end.
_unsynced: ContextVar[list[Path] | None] = ContextVar("unsynced", default=None)


class ReflinkUnsupported(OSError):
    """``reflink: always`` was asked for on a filesystem that cannot clone files."""


class TreeCopyError(Exception):
    """A file or directory of the tree could not be copied; ``path`` is the source path."""

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(f"{path}: {cause.strerror or cause}")
        self.path = path
        self.cause = cause


@dataclass(frozen=True)
class FileFacts:
    """What decides whether a file changed since the previous snapshot."""

    size: int
    mtime_ns: int
    mode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileFacts:
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, mode=stat.S_IMODE(st.st_mode))

    def to_json(self) -> dict[str, int]:
        return {"size": self.size, "mtime_ns": self.mtime_ns, "mode": self.mode}

    @classmethod
    def from_json(cls, raw: Mapping[str, int]) -> FileFacts:
        return cls(size=int(raw["size"]), mtime_ns=int(raw["mtime_ns"]), mode=int(raw.get("mode", -1)))


@dataclass
class LinkSource:
    """An earlier snapshot of the same volume whose unchanged files can be hard-linked."""

    data_dir: Path
    index: dict[str, FileFacts]


@dataclass
class CopyStats:
    files: dict[str, FileFacts] = field(default_factory=dict)
    bytes_total: int = 0
    bytes_copied: int = 0  # data of files new to this snapshot (copied or reflinked)
    linked_files: int = 0
    reflinked_files: int = 0
    copied_files: int = 0
    skipped: list[str] = field(default_factory=list)  # sockets, fifos, devices


class FileCopier:
    """Copies single files; remembers per source filesystem whether reflinks work."""

    def __init__(self, reflink: ReflinkMode = "auto") -> None:
        self.reflink = reflink
        self._reflink_works: dict[int, bool] = {}
        self._lock = threading.Lock()

    def copy_file(self, src: Path, dst: Path, src_dev: int) -> Literal["reflinked", "copied"]:
        """Copy ``src``'s data into a new file ``dst`` (which must not exist) and fsync it; inside
        ``copy_tree`` the fsync is left to its final pass (the write-back is only started here)."""
        with open(src, "rb", buffering=0) as source:
            out_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                how: Literal["reflinked", "copied"] = "copied"
                if self._clone(source.fileno(), out_fd, src_dev):
                    how = "reflinked"
                else:
                    copy_data(source.fileno(), out_fd)
                unsynced = _unsynced.get()
                if unsynced is None:
                    os.fsync(out_fd)
                else:
                    unsynced.append(dst)
                    # Starts write-back now without waiting for it, so the disk writes this file
                    # while we copy the next; the snapshot's copy is not read again soon anyway.
                    os.posix_fadvise(out_fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(out_fd)
        return how

    def _clone(self, in_fd: int, out_fd: int, src_dev: int) -> bool:
        if self.reflink == "never":
            return False
        with self._lock:
            known = self._reflink_works.get(src_dev)
        if known is False:
            return False
        try:
            fcntl.ioctl(out_fd, FICLONE, in_fd)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            with self._lock:
                self._reflink_works[src_dev] = False
            if self.reflink == "always":
                raise ReflinkUnsupported(exc.errno, "the snapshot store's filesystem cannot reflink files") from exc
            return False
        with self._lock:
            self._reflink_works[src_dev] = True
        return True


def copy_data(in_fd: int, out_fd: int) -> int:
    """Copy from the current offset of ``in_fd`` to EOF; the kernel moves the bytes when it can."""
    total = 0
    for kernel_copy in (_copy_file_range_chunk, _sendfile_chunk):
        try:
            while (n := kernel_copy(in_fd, out_fd)) > 0:
                total += n
            return total
        except OSError as exc:
            # Both calls advance the file offsets, so a fallback resumes where this one stopped.
            if exc.errno not in _UNSUPPORTED:
                raise
    while chunk := os.read(in_fd, USERSPACE_CHUNK):
        view = memoryview(chunk)
        while view:
            written = os.write(out_fd, view)
            view = view[written:]
        total += len(chunk)
    return total


def _copy_file_range_chunk(in_fd: int, out_fd: int) -> int:
    return os.copy_file_range(in_fd, out_fd, KERNEL_CHUNK)


def _sendfile_chunk(in_fd: int, out_fd: int) -> int:
    return os.sendfile(out_fd, in_fd, None, KERNEL_CHUNK)


def copy_tree(src_root: Path, dst_root: Path, copier: FileCopier, link_from: LinkSource | None = None) -> CopyStats:
    """Recreate ``src_root`` as ``dst_root`` (which must not exist).

    Regular files matching ``link_from``'s index (same relative path, size, mtime and mode) are
    hard-linked from it; all others are copied. Modes, mtimes and symlinks are kept, and so are
    owners when running as root. Directory metadata is applied last, children first, because
    creating entries would change a directory's mtime and a read-only directory takes no entries.
    """
    stats = CopyStats()
    as_root = os.geteuid() == 0
    dirs: list[tuple[Path, os.stat_result]] = []
    unsynced: list[Path] = []  # copied files whose data is durable only after the fsync pass below
    token = _unsynced.set(unsynced)
    try:
        _copy_entries(src_root, dst_root, copier, link_from, stats, as_root, dirs)
    finally:
        _unsynced.reset(token)
    # One fsync per file after all are written, not after each: waiting on the disk file by file
    # made a full snapshot twice as slow; the data is just as durable before anything is published.
    for path in unsynced:
        try:
            _fsync_file(path)
        except OSError as exc:
            raise TreeCopyError(path, exc) from exc
    for dst_dir, dir_stat in reversed(dirs):
        try:
            _apply_metadata(dst_dir, dir_stat, as_root, symlink=False)
        except OSError as exc:
            raise TreeCopyError(dst_dir, exc) from exc
    return stats


def _copy_entries(src_root: Path, dst_root: Path, copier: FileCopier, link_from: LinkSource | None,
                  stats: CopyStats, as_root: bool, dirs: list[tuple[Path, os.stat_result]]) -> None:
    pending: list[tuple[Path, Path]] = [(src_root, dst_root)]
    while pending:
        src_dir, dst_dir = pending.pop()
        try:
            dir_stat = os.lstat(src_dir)
            os.mkdir(dst_dir, 0o700)
            dirs.append((dst_dir, dir_stat))
            with os.scandir(src_dir) as entries:
                children = sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            raise TreeCopyError(src_dir, exc) from exc
        for entry in children:
            src, dst = Path(entry.path), dst_dir / entry.name
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    pending.append((src, dst))
                elif stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(src), dst)
                    _apply_metadata(dst, st, as_root, symlink=True)
                elif stat.S_ISREG(st.st_mode):
                    _copy_regular(src, dst, st, src_root, copier, link_from, stats, as_root)
                else:
                    stats.skipped.append(src.relative_to(src_root).as_posix())
            except ReflinkUnsupported:
                raise
            except OSError as exc:
                raise TreeCopyError(src, exc) from exc


def _copy_regular(
    src: Path,
    dst: Path,
    st: os.stat_result,
    src_root: Path,
    copier: FileCopier,
    link_from: LinkSource | None,
    stats: CopyStats,
    as_root: bool,
) -> None:
    rel = src.relative_to(src_root).as_posix()
    facts = FileFacts.of(st)
    stats.files[rel] = facts
    stats.bytes_total += st.st_size
    if link_from is not None and link_from.index.get(rel) == facts:
        try:
            os.link(link_from.data_dir / rel, dst, follow_symlinks=False)
            stats.linked_files += 1
            return
        except OSError as exc:
            # The earlier copy vanished (deleted meanwhile) or hit the link limit: copy instead.
            if exc.errno not in _LINK_FALLBACK:
                raise
    how = copier.copy_file(src, dst, st.st_dev)
    if how == "reflinked":
        stats.reflinked_files += 1
    else:
        stats.copied_files += 1
    stats.bytes_copied += st.st_size
    _apply_metadata(dst, st, as_root, symlink=False)


def _fsync_file(path: Path) -> None:
    """fsync a file already given its final mode, which may forbid its owner to open it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        os.chmod(path, mode | stat.S_IRUSR)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.chmod(path, mode)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _apply_metadata(path: Path, st: os.stat_result, as_root: bool, *, symlink: bool) -> None:
    if as_root:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    if not symlink:
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=not symlink)
