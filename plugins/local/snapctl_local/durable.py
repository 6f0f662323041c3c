"""Making a copied tree durable without waiting on the disk file by file.

Every copied file and every directory must be fsynced before a snapshot counts as completed.
Doing that right after each file makes the copy wait for the disk once per file; instead, each
file's write-back is *started* as soon as it is written (``sync_file_range(SYNC_FILE_RANGE_WRITE)``,
from a thread of its own, so that no copy ever waits for a slot in the disk's queue) and all are
fsynced in one parallel pass later (``copy.fsync_tree``), by which time the disk has written most
of it. The disk writes while we copy, and after: the thread goes on starting write-backs once the
copy has returned, so a snapshot's ``wait()`` finds little left to write.

Measured against one ``syncfs(2)`` for the pass: about the same time, but ``syncfs`` would also
write out whatever other programs left dirty on that filesystem.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h

# Set around each copy that copy_tree makes: FileCopier.copy_file then leaves the fsync to it.
_current: ContextVar[Durability | None] = ContextVar("durability", default=None)


def current_durability() -> Durability | None:
    return _current.get()


@contextmanager
def using_durability(durability: Durability) -> Iterator[None]:
    token = _current.set(durability)
    try:
        yield
    finally:
        _current.reset(token)


class Durability:
    """The files one tree copy wrote under ``root``, and the thread that starts their write-back.

    Its queue is unbounded, so no copier ever waits for it: with a bounded one (64 descriptors)
    the copy waited for the disk's queue and took as long as the disk's writing. It holds paths
    relative to a descriptor of ``root``, not descriptors: a backlog of thousands of files costs
    no descriptors, and the tree may be renamed (a snapshot published) while it is worked through.
    """

    def __init__(self, root: str | Path) -> None:
        self.files: list[str] = []  # relative to root, in the order written
        self._prefix = len(os.fspath(root)) + 1
        self._root = os.fspath(root)
        self._root_fd: int | None = None
        self._lock = threading.Lock()
        self._cancelled = False
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = _writeback_starter()
        if self._start is not None:
            self._thread = threading.Thread(target=self._run, name="snapctl-writeback", daemon=True)
            self._thread.start()

    def written(self, path: str | Path) -> None:
        """The file at ``path`` (under root) has all its data: start writing it to disk."""
        rel = os.fspath(path)[self._prefix:]
        if self._thread is not None:
            if self._root_fd is None:
                with self._lock:
                    if self._root_fd is None:
                        self._root_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._queue.put(rel)
        self.files.append(rel)

    def finish(self, *, wait: bool) -> None:
        """No more files: the thread ends once it has started the write-back of all of them;
        ``wait``: until then. Without it, the write-back goes on while the caller moves on."""
        if self._thread is not None:
            self._queue.put(None)
            if wait:
                self._thread.join()
            self._thread = None

    def cancel(self) -> None:
        """The copy failed and its tree is about to be removed: start nothing more, and wait."""
        self._cancelled = True
        self.finish(wait=True)

    def _run(self) -> None:
        assert self._start is not None
        try:
            while (rel := self._queue.get()) is not None:
                if self._cancelled:
                    continue
                # Only a head start: the fsync pass writes the file anyway and reports any error.
                with contextlib.suppress(Exception):
                    fd = os.open(rel, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._root_fd)
                    try:
                        self._start(fd)
                    finally:
                        os.close(fd)
        finally:
            if self._root_fd is not None:
                os.close(self._root_fd)


@functools.cache
def _writeback_starter() -> Callable[[int], object] | None:
    """sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE): queue the file's dirty pages for writing
    without waiting for them. Linux only (Python has no binding); elsewhere the fsync does it all."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return lambda fd: call(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def fsync_path(path: str | Path) -> None:
    """fsync a file or directory already given its final mode, which may forbid its owner to open it."""
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
