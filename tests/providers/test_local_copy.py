"""The local provider's copy engine: many files at once, exact, on disk when it returns (or when
the caller's fsync_tree does), and stopped cleanly, part-way through the files under way, by the
first failure, an interrupt or its caller's stop event."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest
from snapctl_local import copy as copy_module
from snapctl_local import durable
from snapctl_local.copy import (
    CopyStopped,
    FileCopier,
    FileFacts,
    LinkSource,
    SyncDeadline,
    TreeCopyError,
    copy_tree,
    fsync_tree,
)

from tests.providers.fsyncs import record_fsyncs


def _make_tree(root: Path, files: int = 60) -> None:
    for i in range(files):
        path = root / f"d{i % 3}" / f"sub{i % 2}" / f"f{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(i * 997))  # sizes 0 .. ~60 kB
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    (root / "ro.txt").write_text("read only")
    (root / "ro.txt").chmod(0o400)
    (root / "empty").mkdir()
    os.symlink("ro.txt", root / "link")


def _tree(root: Path) -> dict[str, tuple]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", st.st_mode)
        else:
            out[rel] = ("file", path.read_bytes(), st.st_mode, st.st_mtime_ns)
    return out


def _identities(root: Path, *, files: bool = True) -> set[tuple[int, int]]:
    paths = [root, *root.rglob("*")]
    return {(st.st_dev, st.st_ino) for p in paths if not p.is_symlink()
            for st in [p.lstat()] if files or p.is_dir()}


def _copy_threads() -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name.startswith(("snapctl-copy", "snapctl-writeback", "snapctl-sync"))]


def test_many_files_copied_at_once_are_exact(tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")
    stats = copy_tree(tmp_path / "src", tmp_path / "dst", FileCopier("never"), threads=4)
    assert _tree(tmp_path / "dst") == _tree(tmp_path / "src")
    assert stats.copied_files == 61 and stats.linked_files == 0 and len(stats.files) == 61
    assert stats.bytes_copied == stats.bytes_total == sum(i * 997 for i in range(60)) + len("read only")
    assert _copy_threads() == []


class AppendedBeforeCopy(FileCopier):
    """A real copier; the engine appends to ``log`` after the walk saw it and before its copy (a
    held Tarantool goes on writing its xlog)."""

    def copy_file(self, src, dst, src_dev, stopped=None):
        if src.name == "log":
            with open(src, "ab") as log:
                log.write(b"written after the walk")
        return super().copy_file(src, dst, src_dev, stopped)


def test_a_file_written_to_between_the_walk_and_its_copy_is_indexed_as_copied(tmp_path: Path) -> None:
    # The index kept the size the walk saw, so restore and verify called the snapshot damaged
    # ("file log has 42 bytes, recorded 20"), every time a held engine wrote its log meanwhile.
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "log").write_bytes(b"before the snapshot.")
    earlier = (tmp_path / "src" / "log").stat()
    stats = copy_tree(tmp_path / "src", tmp_path / "dst", AppendedBeforeCopy("never"))

    copied = (tmp_path / "dst" / "log").stat()
    assert copied.st_size == len(b"before the snapshot.written after the walk")
    assert stats.files["log"].size == copied.st_size
    # The walk's mtime stays: the source never had that size at that time, so nothing links to it later.
    assert stats.files["log"].mtime_ns == earlier.st_mtime_ns


def test_every_file_and_directory_is_fsynced_before_copy_tree_returns(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _make_tree(tmp_path / "src")
    synced = record_fsyncs(monkeypatch)
    copy_tree(tmp_path / "src", tmp_path / "dst", FileCopier("never"), threads=3)
    assert _identities(tmp_path / "dst") <= synced


def test_an_incremental_fsyncs_its_copies_and_directories_not_the_linked_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _make_tree(tmp_path / "src")
    first = copy_tree(tmp_path / "src", tmp_path / "one", FileCopier("never"))
    (tmp_path / "src" / "d0" / "sub0" / "f000.bin").write_bytes(b"changed")
    synced = record_fsyncs(monkeypatch)
    second = copy_tree(tmp_path / "src", tmp_path / "two", FileCopier("never"),
                       LinkSource(data_dir=tmp_path / "one", index=first.files))
    assert second.linked_files == 60 and second.copied_files == 1
    assert _identities(tmp_path / "two", files=False) <= synced
    changed = (tmp_path / "two" / "d0" / "sub0" / "f000.bin").stat()
    assert (changed.st_dev, changed.st_ino) in synced
    # Linked files are the earlier snapshot's inodes, already on disk: fsyncing them again is waste.
    linked = (tmp_path / "two" / "d1" / "sub1" / "f001.bin").stat()
    assert (linked.st_dev, linked.st_ino) not in synced
    assert second.files["d0/sub0/f000.bin"] == FileFacts.of((tmp_path / "src" / "d0" / "sub0" / "f000.bin").stat())


def test_sync_later_leaves_the_fsyncs_to_fsync_tree_over_what_it_lists(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _make_tree(tmp_path / "src")
    first = copy_tree(tmp_path / "src", tmp_path / "one", FileCopier("never"))
    (tmp_path / "src" / "d0" / "sub0" / "f000.bin").write_bytes(b"changed")
    synced = record_fsyncs(monkeypatch)
    stats = copy_tree(tmp_path / "src", tmp_path / "two", FileCopier("never"),
                      LinkSource(data_dir=tmp_path / "one", index=first.files), sync="later")
    assert synced == set()
    assert _tree(tmp_path / "two") == _tree(tmp_path / "src")
    assert "d0/sub0/f000.bin" in stats.unsynced and "d1/sub1/f001.bin" not in stats.unsynced  # linked
    assert "." in stats.unsynced and "empty" in stats.unsynced
    fsync_tree(tmp_path / "two", stats.unsynced, threads=3)
    assert _identities(tmp_path / "two", files=False) <= synced
    changed = (tmp_path / "two" / "d0" / "sub0" / "f000.bin").stat()
    assert (changed.st_dev, changed.st_ino) in synced


def test_write_back_goes_on_after_copy_tree_returns_even_once_the_tree_is_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: set[tuple[int, int]] = set()
    release = threading.Event()

    def slow_disk(fd: int) -> None:
        release.wait(10)  # the disk's queue is full: the copy must not wait for it
        st = os.fstat(fd)
        started.add((st.st_dev, st.st_ino))

    monkeypatch.setattr(durable, "_writeback_starter", lambda: slow_disk)
    _make_tree(tmp_path / "src", files=100)  # more than any backlog a copier might wait on
    copy_tree(tmp_path / "src", tmp_path / "partial", FileCopier("never"), sync="later")
    os.rename(tmp_path / "partial", tmp_path / "published")
    release.set()
    for thread in threading.enumerate():
        if thread.name == "snapctl-writeback":
            thread.join(10)
    copied = {(st.st_dev, st.st_ino) for p in (tmp_path / "published").rglob("*")
              if p.is_file() and not p.is_symlink() for st in [p.stat()]}
    assert copied and copied <= started


def test_fsync_tree_stops_at_its_deadline_and_names_a_failing_path(tmp_path: Path) -> None:
    _make_tree(tmp_path / "src")
    stats = copy_tree(tmp_path / "src", tmp_path / "dst", FileCopier("never"), sync="later")
    with pytest.raises(SyncDeadline):
        fsync_tree(tmp_path / "dst", stats.unsynced, deadline=0)
    os.unlink(tmp_path / "dst" / "d2" / "sub0" / "f002.bin")
    with pytest.raises(TreeCopyError) as info:
        fsync_tree(tmp_path / "dst", stats.unsynced)
    assert info.value.path == tmp_path / "dst" / "d2" / "sub0" / "f002.bin" and info.value.cause.errno == errno.ENOENT
    assert _copy_threads() == []


def test_a_failing_writeback_start_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(durable, "_writeback_starter", lambda: broken)
    _make_tree(tmp_path / "src", files=200)  # more files than the write-back queue holds
    synced = record_fsyncs(monkeypatch)
    copy_tree(tmp_path / "src", tmp_path / "dst", FileCopier("never"), threads=2)
    assert _tree(tmp_path / "dst") == _tree(tmp_path / "src")
    assert _identities(tmp_path / "dst") <= synced


def test_the_first_failure_stops_the_copy_and_no_worker_outlives_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"f{i:03d}").write_bytes(b"x" * 1000)
    real_copy = copy_module.FileCopier.copy_file
    calls = []

    def failing_copy(self, source, dst, src_dev, *rest):
        calls.append(source.name)
        if source.name == "f005":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(self, source, dst, src_dev, *rest)

    monkeypatch.setattr(copy_module.FileCopier, "copy_file", failing_copy)
    with pytest.raises(TreeCopyError) as info:
        copy_tree(src, tmp_path / "dst", FileCopier("never"), threads=2)
    assert info.value.cause.errno == errno.ENOSPC
    assert info.value.path == tmp_path / "dst" / "f005" and info.value.writing  # a full disk is the copy's
    assert len(calls) < 100  # stopped soon after, not at the end of the tree
    assert _copy_threads() == []  # so nothing writes into the tree the caller now removes


class _Chunks:
    """Counts the kernel copy chunks (made 4 KiB and 1 ms each, so each file of ``_big_files``
    takes 16 of them and a whole tree 192), and runs ``then`` after the ``after``-th."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, after: int, then) -> None:
        self.count = 0
        self.at_then = -1
        self._lock = threading.Lock()
        monkeypatch.setattr(copy_module, "KERNEL_CHUNK", 4096)
        for name in ("_copy_file_range_chunk", "_sendfile_chunk"):  # whichever this filesystem uses
            monkeypatch.setattr(copy_module, name, self._counting(getattr(copy_module, name), after, then))

    @property
    def after_then(self) -> int:
        """Chunks copied since ``then`` ran. Told to stop, each of the 4 files under way may finish
        a chunk or two while the word gets round: at most 8, against the 15 left in each file."""
        return self.count - self.at_then

    def _counting(self, chunk, after, then):
        def counted(in_fd: int, out_fd: int) -> int:
            copied = chunk(in_fd, out_fd)
            if copied:
                time.sleep(0.001)
                with self._lock:
                    self.count += 1
                    reached = self.count == after
                    if reached:
                        self.at_then = self.count
                if reached:
                    then()
            return copied

        return counted


def _big_files(root: Path, files: int = 12) -> None:
    root.mkdir()
    for i in range(files):
        (root / f"f{i:02d}").write_bytes(os.urandom(64 * 1024))


def test_a_stop_ends_the_copy_within_a_chunk_of_each_file_under_way(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _big_files(tmp_path / "src")
    stop = threading.Event()
    chunks = _Chunks(monkeypatch, after=1, then=stop.set)
    with pytest.raises(CopyStopped):
        copy_tree(tmp_path / "src", tmp_path / "dst", FileCopier("never"), threads=4, stop=stop)
    # Without the stop the files under way would go on for 15 more chunks each, and the tree for 191.
    assert chunks.after_then <= 8
    assert _copy_threads() == []


def test_an_interrupt_in_the_calling_thread_stops_the_files_under_way(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _big_files(tmp_path / "src")
    interrupt = threading.Event()
    chunks = _Chunks(monkeypatch, after=8, then=interrupt.set)

    def interrupted_wait(*args, **kwargs):  # Ctrl-C, while copy_tree waits for its workers
        interrupt.wait(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(copy_module, "wait", interrupted_wait)
    # Counted from when the interrupt reached copy_tree, however long the main thread took to wake.
    at_abandon = []
    real_abandon = copy_module._Copies.abandon
    monkeypatch.setattr(copy_module._Copies, "abandon", lambda self: (at_abandon.append(chunks.count),
                                                                       real_abandon(self)))
    with pytest.raises(KeyboardInterrupt):
        copy_tree(tmp_path / "src", tmp_path / "dst", FileCopier("never"), threads=4)
    assert chunks.count - at_abandon[0] <= 8
    assert _copy_threads() == []  # the caller (a restore) removes the partial tree next


def test_a_failure_stops_the_other_files_under_way_part_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _big_files(tmp_path / "src")

    def disk_error() -> None:
        raise OSError(errno.EIO, "Input/output error")

    chunks = _Chunks(monkeypatch, after=8, then=disk_error)
    with pytest.raises(TreeCopyError) as info:
        copy_tree(tmp_path / "src", tmp_path / "dst", FileCopier("never"), threads=4)
    assert info.value.cause.errno == errno.EIO
    assert chunks.after_then <= 8
    assert _copy_threads() == []
