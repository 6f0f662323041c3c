"""Copying directory trees fast and faithfully: hard links to an earlier snapshot for unchanged
files, reflinks where the filesystem has them, kernel-side copies otherwise.

Nothing here reads a whole file into memory: data moves in large chunks through
``copy_file_range``/``sendfile`` and only falls back to a bounded userspace buffer. Several files
are copied at once (the kernel does the copying, outside the GIL), and a copied tree is durable
when ``copy_tree`` returns, or when the caller's ``fsync_tree`` does: see ``durable.py``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from snapctl.errors import os_reason

from .durable import Durability, current_durability, fsync_path, using_durability

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h
KERNEL_CHUNK = 64 * 1024 * 1024
USERSPACE_CHUNK = 1024 * 1024

# Errors that mean "this kind of copy is not possible here", as opposed to a real I/O failure.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EBADF}
_LINK_FALLBACK = {errno.ENOENT, errno.EMLINK, errno.EXDEV, errno.EPERM}
# Errors only a copy's destination gives (the source is only read), whatever path they name.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}

ReflinkMode = Literal["auto", "always", "never"]
# now: on disk when copy_tree returns; later: write-back started, the fsyncs left to the caller
# (fsync_tree over CopyStats.unsynced).
SyncMode = Literal["now", "later"]

# Files copied at once. Each copy is one long syscall that releases the GIL; beyond the cores,
# more threads only queue behind each other (and on a slow disk, all wait for the disk alike).
COPY_THREADS = max(1, min(4, os.cpu_count() or 1))
_WAKE_S = 0.2  # how late a stop signal's handler may run while the calling thread waits for copies


class SyncDeadline(Exception):
    """``fsync_tree`` had not started every fsync when its deadline passed."""


class CopyStopped(Exception):
    """``copy_tree`` gave up part-way because its ``stop`` event was set."""


class ReflinkUnsupported(OSError):
    """``reflink: always`` was asked for on a filesystem that cannot clone files."""


class TreeCopyError(Exception):
    """A file or directory of the tree could not be copied. ``path`` is where it failed: the copy's
    side (``writing``) when the error is the destination's (a full store, a directory that cannot
    be made), else the source's, so that a full store is never blamed on the database's disk."""

    def __init__(self, path: Path, cause: OSError, *, dst: str | os.PathLike[str] | None = None,
                 writing: bool = False) -> None:
        if dst is not None and not writing:
            named = {os.fspath(n) for n in (cause.filename, cause.filename2) if isinstance(n, (str, os.PathLike))}
            writing = os.fspath(dst) in named or cause.errno in _WRITE_ERRNOS
        self.path = Path(dst) if writing and dst is not None else path
        self.writing = writing
        self.cause = cause
        super().__init__(f"{self.path}: {os_reason(cause)}")


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
    # What makes the copy durable (copied files, then every directory; relative to the copy's root,
    # "." for the root itself); hard-linked files are an earlier snapshot's, already on disk.
    unsynced: list[str] = field(default_factory=list)


class FileCopier:
    """Copies single files; remembers per source filesystem whether reflinks work."""

    def __init__(self, reflink: ReflinkMode = "auto") -> None:
        self.reflink = reflink
        self._reflink_works: dict[int, bool] = {}
        self._lock = threading.Lock()

    def copy_file(self, src: Path, dst: Path, src_dev: int,
                  stopped: Callable[[], bool] | None = None) -> Literal["reflinked", "copied"]:
        """Copy ``src``'s data into a new file ``dst`` (which must not exist) and fsync it; inside
        ``copy_tree`` the fsync is left to ``fsync_tree`` (the write-back is only started here).
        ``stopped`` is asked between chunks: once it says yes, ``CopyStopped`` (``dst`` is partial)."""
        in_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            out_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                how: Literal["reflinked", "copied"] = "copied"
                if self._clone(in_fd, out_fd, src_dev):
                    how = "reflinked"
                else:
                    copy_data(in_fd, out_fd, stopped)
                durability = current_durability()
                if durability is None:
                    os.fsync(out_fd)
                else:
                    durability.written(dst)
            finally:
                os.close(out_fd)
        finally:
            os.close(in_fd)
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


def can_reflink(directory: Path, into: Path | None = None) -> bool | None:
    """Whether files in ``directory``'s filesystem can be cloned (into ``into``'s, when given): one
    clone between two unnamed temporary files (O_TMPFILE), which leave nothing behind. None when it
    cannot be told (no such directory yet, or O_TMPFILE refused)."""
    try:
        src = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        os.write(src, b"snapctl reflink probe")
        dst = os.open(into or directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.ioctl(dst, FICLONE, src)
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                return False
            raise
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return True


def copy_data(in_fd: int, out_fd: int, stopped: Callable[[], bool] | None = None) -> int:
    """Copy from the current offset of ``in_fd`` to EOF; the kernel moves the bytes when it can.
    ``stopped`` is asked between chunks (a kernel chunk takes a fraction of a second)."""
    total = 0
    for kernel_copy in (_copy_file_range_chunk, _sendfile_chunk):
        try:
            while (n := kernel_copy(in_fd, out_fd)) > 0:
                total += n
                if stopped is not None and stopped():
                    raise CopyStopped()
            return total
        except OSError as exc:
            # Both calls advance the file offsets, so a fallback resumes where this one stopped.
            if exc.errno not in _UNSUPPORTED:
                raise
    while chunk := os.read(in_fd, USERSPACE_CHUNK):
        if stopped is not None and stopped():
            raise CopyStopped()
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


def copy_tree(
    src_root: Path,
    dst_root: Path,
    copier: FileCopier,
    link_from: LinkSource | None = None,
    *,
    sync: SyncMode = "now",
    threads: int = COPY_THREADS,
    stop: threading.Event | None = None,
) -> CopyStats:
    """Recreate ``src_root`` as ``dst_root`` (which must not exist); on disk when this returns,
    or with ``sync="later"`` once ``fsync_tree(dst_root, stats.unsynced)`` has (see ``SyncMode``).

    Regular files matching ``link_from``'s index (same relative path, size, mtime and mode) are
    hard-linked from it; all others are copied, ``threads`` at a time. Modes, mtimes and symlinks
    are kept, and so are owners when running as root. Directory metadata is applied last, children
    first, because creating entries would change a directory's mtime and a read-only directory
    takes no entries.

    Once ``stop`` is set, the copy gives up within a chunk of each file under way (``CopyStopped``),
    and with ``sync="now"`` its fsyncs stop before the next file's; the other files' copies give up
    too when one fails or the calling thread is interrupted, rather than finishing first. Either
    way ``dst_root`` is left partial, for the caller to remove.
    """
    stats = CopyStats()
    as_root = os.geteuid() == 0
    dirs: list[tuple[str, os.stat_result]] = []
    durability = Durability(dst_root)
    copies = _Copies(threads, stats, durability, stop)
    try:
        try:
            _copy_entries(src_root, dst_root, copier, link_from, stats, as_root, dirs, copies)
            copies.finish()
        except BaseException:
            copies.abandon()
            raise
        finally:
            copies.close()
        for dst_dir, dir_stat in reversed(dirs):
            try:
                _apply_metadata(dst_dir, dir_stat, as_root, symlink=False)
            except OSError as exc:
                raise TreeCopyError(Path(dst_dir), exc, writing=True) from exc
    except BaseException:
        durability.cancel()
        raise
    # "later": the write-back thread goes on after this returns, so the disk keeps writing while
    # the caller has moved on (a snapshot: the engine is released) until its fsync_tree.
    durability.finish(wait=sync == "now")
    prefix = len(os.fspath(dst_root)) + 1
    stats.unsynced = [*durability.files, *(d[prefix:] or "." for d, _ in dirs)]
    if sync == "now":
        fsync_tree(dst_root, stats.unsynced, threads=threads, stop=stop)
    return stats


def fsync_tree(root: Path, paths: Sequence[str], *, threads: int = COPY_THREADS,
               deadline: float | None = None, stop: threading.Event | None = None) -> None:
    """fsync ``paths`` (files and directories, relative to ``root``) ``threads`` at a time.

    Most of the data is usually written already (the copy started its write-back), so these
    mostly wait for the last files and commit the metadata. Raises ``TreeCopyError`` for the first
    path that fails, ``SyncDeadline`` when ``deadline`` (time.monotonic()) passes before the last
    fsync was started, ``CopyStopped`` once ``stop`` is set (looked at before each file, as the
    copy does); fsyncs already started are waited for, never abandoned.
    """
    base = os.fspath(root)
    backlog = 4 * max(1, threads)
    pending: dict[Future[None], str] = {}
    executor = ThreadPoolExecutor(max(1, threads), thread_name_prefix="snapctl-sync")
    try:
        for rel in paths:
            if len(pending) >= backlog:
                _first_failure(pending, FIRST_COMPLETED)
            if stop is not None and stop.is_set():
                raise CopyStopped()
            if deadline is not None and time.monotonic() > deadline:
                raise SyncDeadline(f"{len(paths)} fsyncs under {base} not done by the deadline")
            path = os.path.join(base, rel)
            pending[executor.submit(fsync_path, path)] = path
        _first_failure(pending, ALL_COMPLETED)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _first_failure(pending: dict[Future[None], str], return_when: str) -> None:
    done = _waited(pending, return_when)  # in slices, as the copy's: a signal's handler runs meanwhile
    for future in done:
        path = pending.pop(future)
        try:
            future.result()
        except OSError as exc:
            raise TreeCopyError(Path(path), exc) from exc


class _Copies:
    """File copies on worker threads: a bounded backlog (memory stays flat however many files),
    counted into ``stats`` as they finish; the first failure stops the tree copy, and ``stop``
    (or ``abandon``) the copies under way."""

    def __init__(self, threads: int, stats: CopyStats, durability: Durability,
                 stop: threading.Event | None = None) -> None:
        self._executor = ThreadPoolExecutor(max(1, threads), thread_name_prefix="snapctl-copy")
        self._backlog = 4 * max(1, threads)
        self._pending: dict[Future[str], tuple[Path, Path]] = {}  # the copy -> (source, destination)
        self._stats = stats
        self._durability = durability
        self._stop = stop
        self._abandoned = threading.Event()

    def stopped(self) -> bool:
        return self._abandoned.is_set() or (self._stop is not None and self._stop.is_set())

    def check(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise CopyStopped()

    def abandon(self) -> None:
        """The tree copy failed or was interrupted: files under way stop at their next chunk."""
        self._abandoned.set()

    def submit(self, src: Path, dst: Path, st: os.stat_result, copier: FileCopier, as_root: bool, rel: str) -> None:
        self.check()
        if len(self._pending) >= self._backlog:
            self._collect(FIRST_COMPLETED)
        future = self._executor.submit(self._copy_or_abandon, copier, src, dst, st, as_root, rel)
        self._pending[future] = (src, dst)

    def finish(self) -> None:
        self._collect(ALL_COMPLETED)

    def close(self) -> None:
        # Also on failure: no worker may still write into a tree the caller is about to remove.
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _copy_or_abandon(self, copier: FileCopier, src: Path, dst: Path, st: os.stat_result, as_root: bool,
                         rel: str) -> str:
        try:
            how = _copy_one(self._durability, copier, src, dst, st, as_root, self.stopped)
            copied = os.stat(dst).st_size
            if copied != st.st_size:
                # Written to between the walk and its copy (a log the engine appends to while it is
                # held, Tarantool's xlog): the index says what the snapshot holds. The walk's mtime
                # stays, so the next snapshot copies the file again rather than link this copy.
                self._stats.files[rel] = FileFacts(size=copied, mtime_ns=st.st_mtime_ns,
                                                   mode=stat.S_IMODE(st.st_mode))
            return how
        except BaseException:
            self.abandon()  # the other files under way stop at their next chunk, not at their end
            raise

    def _collect(self, return_when: str) -> None:
        done = _waited(self._pending, return_when)
        if any(future.exception() is not None for future in done):
            # The others stop (CopyStopped) once one fails: wait for them, then report the failure
            # itself, or the stop when nothing else failed.
            done = _waited(self._pending, ALL_COMPLETED)
            failed = [(self._pending[f], f.exception()) for f in done if f.exception() is not None]
            self._pending.clear()
            (src, dst), exc = next(((p, e) for p, e in failed if not isinstance(e, CopyStopped)), failed[0])
            if isinstance(exc, OSError) and not isinstance(exc, ReflinkUnsupported):
                raise TreeCopyError(src, exc, dst=dst) from exc
            raise exc
        for future in done:
            self._pending.pop(future)
            how = future.result()
            if how == "reflinked":
                self._stats.reflinked_files += 1
            elif how == "copied":
                self._stats.copied_files += 1


def _waited(futures: Mapping[Future[Any], object], return_when: str) -> set[Future[Any]]:
    """``wait``'s done futures, waited for in slices: in the main thread (`snapctl restore`) a
    signal's handler runs only when Python code runs there, and one the kernel gave a copy thread
    would wait for a whole large file's copy, or the last one's, instead of stopping it."""
    while True:
        done, not_done = wait(futures, timeout=_WAKE_S, return_when=return_when)
        if not not_done or (done and return_when == FIRST_COMPLETED):
            return done


def _copy_one(durability: Durability, copier: FileCopier, src: Path, dst: Path, st: os.stat_result,
              as_root: bool, stopped: Callable[[], bool]) -> str:
    if stopped():  # queued before the tree copy was stopped
        raise CopyStopped()
    with using_durability(durability):
        how = copier.copy_file(src, dst, st.st_dev, stopped)
    _apply_metadata(dst, st, as_root, symlink=False)
    return how


def _copy_entries(src_root: Path, dst_root: Path, copier: FileCopier, link_from: LinkSource | None,
                  stats: CopyStats, as_root: bool, dirs: list[tuple[str, os.stat_result]], copies: _Copies) -> None:
    # Plain strings, not Paths: pathlib's joins and relative_to cost more than the link or stat
    # they name, and an incremental snapshot is mostly links.
    link_dir = "" if link_from is None else os.fspath(link_from.data_dir)
    link_index: Mapping[str, FileFacts] = {} if link_from is None else link_from.index
    pending: list[tuple[str, str, str]] = [(os.fspath(src_root), os.fspath(dst_root), "")]
    while pending:
        copies.check()  # also for a tree of links only, which submits no copies
        src_dir, dst_dir, rel_dir = pending.pop()
        try:
            # The root may be a symlink to the data directory (the volume's path): its mode and times
            # are the directory's, not the link's 0777.
            dir_stat = os.stat(src_dir) if not rel_dir else os.lstat(src_dir)
            os.mkdir(dst_dir, 0o700)
            dirs.append((dst_dir, dir_stat))
            with os.scandir(src_dir) as entries:
                children = sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            raise TreeCopyError(Path(src_dir), exc, dst=dst_dir) from exc
        for entry in children:
            src, dst, rel = entry.path, os.path.join(dst_dir, entry.name), rel_dir + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    pending.append((src, dst, rel + "/"))
                elif stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(src), dst)
                    _apply_metadata(dst, st, as_root, symlink=True)
                elif stat.S_ISREG(st.st_mode):
                    facts = FileFacts.of(st)
                    stats.files[rel] = facts
                    stats.bytes_total += st.st_size
                    if not (link_index.get(rel) == facts and _linked(os.path.join(link_dir, rel), dst, stats)):
                        stats.bytes_copied += st.st_size
                        copies.submit(Path(src), Path(dst), st, copier, as_root, rel)
                else:
                    stats.skipped.append(rel)
            except ReflinkUnsupported:
                raise
            except OSError as exc:
                raise TreeCopyError(Path(src), exc, dst=dst) from exc


def _linked(earlier: str, dst: str, stats: CopyStats) -> bool:
    """Hard-link an unchanged file from the earlier snapshot; False: copy it instead."""
    try:
        os.link(earlier, dst, follow_symlinks=False)
    except OSError as exc:
        # The earlier copy vanished (deleted meanwhile) or hit the link limit: copy instead.
        if exc.errno not in _LINK_FALLBACK:
            raise
        return False
    stats.linked_files += 1
    return True


def _apply_metadata(path: str | Path, st: os.stat_result, as_root: bool, *, symlink: bool) -> None:
    if as_root:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    if not symlink:
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=not symlink)
