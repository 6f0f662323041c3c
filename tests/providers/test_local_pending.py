"""Local snapshots are pending when snapshot() returns (copied, not yet known to be on disk) and
completed once wait() (or a restore) has fsynced them; one the host restarted under is in error."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest
from snapctl_local import LocalProvider
from snapctl_local import copy as copy_module
from snapctl_local import store as store_module

from snapctl.errors import Interrupted, ProviderError
from snapctl.providers import TAG_RUN, NodeVolumes, RestoreTarget, create_provider, snapshot_tags, stoppable_by
from tests.providers.fsyncs import record_fsyncs

CLUSTER = "c1"
LATER = 60.0


@pytest.fixture
def provider(tmp_path: Path) -> LocalProvider:
    return create_provider({"type": "local", "store": "store"}, cluster=CLUSTER, base_dir=tmp_path)


@pytest.fixture
def volumes(provider: LocalProvider, tmp_path: Path) -> NodeVolumes:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(20):
        (src / "sub" / f"f{i:02d}.bin").write_bytes(os.urandom(1000 + i))
    (src / "top.txt").write_text("top")
    os.symlink("top.txt", src / "link")
    return provider.validate_volumes("n1", [{"name": "data", "path": "src"}], base_dir=tmp_path)


def _take(provider: LocalProvider, volumes: NodeVolumes, run: str):
    return provider.snapshot(volumes, snapshot_tags(CLUSTER, run, "n1"))


def _identities(root: Path) -> set[tuple[int, int]]:
    return {(st.st_dev, st.st_ino) for p in [root, *root.rglob("*")] if not p.is_symlink() for st in [p.stat()]}


def _state(provider: LocalProvider, run: str) -> list[tuple[str, str | None]]:
    return [(r.state, r.error) for r in provider.find({TAG_RUN: run})]


def _another_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "boot_id", lambda: "a-later-boot")


def test_snapshot_returns_pending_without_waiting_for_the_disk_and_find_lists_it(
    provider: LocalProvider, volumes: NodeVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = record_fsyncs(monkeypatch)
    (ref,) = _take(provider, volumes, "run1")
    assert ref.state == "pending" and ref.progress is None
    assert synced == set()  # no fsync at all while the engine is held
    assert _state(provider, "run1") == [("pending", None)]
    assert (Path(ref.extra["path"]) / "data" / "sub" / "f07.bin").stat().st_size == 1007  # the copy is complete


def test_wait_fsyncs_the_snapshot_then_marks_it_completed(
    provider: LocalProvider, volumes: NodeVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    refs = _take(provider, volumes, "run1")
    snap_dir = Path(refs[0].extra["path"])
    synced = record_fsyncs(monkeypatch)
    seen = []
    (done,) = provider.wait(refs, time.monotonic() + LATER, seen.append)
    assert done.state == "completed" and done.progress == 100.0 and [r.state for r in seen] == ["completed"]
    assert _identities(snap_dir) <= synced  # every file and directory, snapshot.json included
    assert (snap_dir / store_module.COMPLETED).is_file()
    assert _state(provider, "run1") == [("completed", None)]
    assert provider.wait(refs, 0)[0].state == "completed"  # nothing left to do: no deadline to miss


def test_a_deadline_already_past_leaves_the_snapshot_pending_for_a_later_wait(
    provider: LocalProvider, volumes: NodeVolumes
) -> None:
    refs = _take(provider, volumes, "run1")
    with pytest.raises(ProviderError, match="run1-n1-data of volume data was not on disk by the deadline") as info:
        provider.wait(refs, time.monotonic() - 1)
    assert "wait_timeout_s" in (info.value.hint or "")
    assert _state(provider, "run1") == [("pending", None)]
    assert provider.wait(refs, time.monotonic() + LATER)[0].state == "completed"


def test_a_node_lock_held_past_the_deadline_ends_the_wait_and_leaves_the_snapshot_pending(
    provider: LocalProvider, volumes: NodeVolumes
) -> None:
    # A snapctl process that stalled holding the node's store lock stalled every wait behind it for
    # good: a backup's wait step, and a prune or backup completing a --no-wait run's snapshots.
    refs = _take(provider, volumes, "run1")
    with provider.store.node_lock("n1"):  # its own descriptor: to flock, another process
        started = time.monotonic()
        with pytest.raises(store_module.StoreBusy, match="node n1: the snapshot store is busy"):
            provider.wait(refs, time.monotonic() + 0.3)
        assert time.monotonic() - started < LATER
    assert _state(provider, "run1") == [("pending", None)]
    assert provider.wait(refs, time.monotonic() + LATER)[0].state == "completed"


def test_a_delete_waits_for_a_held_node_lock_a_bounded_time_and_leaves_the_snapshot(
    provider: LocalProvider, volumes: NodeVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process that hung holding the node's store lock (a restore on a stalled mount) hung a
    # failed backup's rollback at its delete, and the cluster lock that backup keeps, for good.
    from snapctl_local import provider as provider_module

    refs = _take(provider, volumes, "run1")
    monkeypatch.setattr(provider_module, "DELETE_LOCK_WAIT_S", 0.3)
    with provider.store.node_lock("n1"):
        with pytest.raises(store_module.StoreBusy, match="snapshot run1-n1-data not deleted: another snapctl") as info:
            provider.delete(refs[0])
    assert "gc --delete" in (info.value.hint or "")
    assert [r.snapshot_id for r in provider.find({TAG_RUN: "run1"})] == ["run1-n1-data"]
    provider.delete(refs[0])
    assert provider.find({TAG_RUN: "run1"}) == []


def test_restore_of_a_pending_snapshot_makes_it_durable_first(
    provider: LocalProvider, volumes: NodeVolumes, tmp_path: Path
) -> None:
    (ref,) = _take(provider, volumes, "run1")
    restored = Path(provider.restore(ref, RestoreTarget(path=tmp_path / "restored")))
    assert (restored / "sub" / "f03.bin").read_bytes() == (tmp_path / "src" / "sub" / "f03.bin").read_bytes()
    assert _state(provider, "run1") == [("completed", None)]


def test_a_restore_waiting_for_a_held_node_lock_stops_when_its_drill_is_interrupted(
    provider: LocalProvider, volumes: NodeVolumes, tmp_path: Path
) -> None:
    # A drill restores in threads Ctrl-C never reaches: behind a process that stalled holding the
    # node's store lock, its restore of a pending snapshot waited for good, however often stopped.
    (ref,) = _take(provider, volumes, "run1")
    stop = threading.Event()
    outcome: list[BaseException | str] = []

    def restore() -> None:
        with stoppable_by(stop):
            try:
                outcome.append(provider.restore(ref, RestoreTarget(path=tmp_path / "restored")))
            except BaseException as exc:  # noqa: BLE001 - what the drill's thread would see
                outcome.append(exc)

    with provider.store.node_lock("n1"):  # its own descriptor: to flock, another process
        thread = threading.Thread(target=restore)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive() and not outcome  # waiting, as it should while the lock is held
        stop.set()
        thread.join(LATER)
    assert isinstance(outcome[0], Interrupted), outcome
    assert "node n1: restore of snapshot run1-n1-data" in outcome[0].message
    assert not (tmp_path / "restored").exists()
    assert _state(provider, "run1") == [("pending", None)]  # still there for a later wait or restore


def _restored_under_a_stop_set_at_the_first_fsync(
    provider: LocalProvider, ref, target: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[BaseException | str, list[str]]:
    """What a drill's restore of ``ref`` ended with when the drill was stopped as its first
    ``fsync_tree`` fsync ran, and every path fsync_tree fsynced."""
    stop = threading.Event()
    fsynced: list[str] = []
    real = copy_module.fsync_path

    def fsync_then_stop(path) -> None:
        fsynced.append(str(path))
        real(path)
        stop.set()

    monkeypatch.setattr(copy_module, "fsync_path", fsync_then_stop)
    with stoppable_by(stop):
        try:
            return provider.restore(ref, RestoreTarget(path=target)), fsynced
        except BaseException as exc:  # noqa: BLE001 - what the drill's thread would see
            return exc, fsynced


@pytest.fixture
def many_files(provider: LocalProvider, tmp_path: Path) -> NodeVolumes:
    """More files than fsync_tree keeps under way (4 per thread): a stop leaves most of them."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(60):
        (src / f"f{i:02d}.bin").write_bytes(os.urandom(100))
    return provider.validate_volumes("n1", [{"name": "data", "path": "many"}], base_dir=tmp_path)


def test_a_drill_stopped_while_its_restore_fsyncs_the_copy_stops_before_the_next_file(
    provider: LocalProvider, many_files: NodeVolumes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A SIGTERM while a large tree's copy was being fsynced waited for the whole tree's fsyncs:
    # only the copy looked at the stop.
    refs = _take(provider, many_files, "run1")
    provider.wait(refs, time.monotonic() + LATER)  # completed: the restore's only fsyncs are its copy's
    outcome, fsynced = _restored_under_a_stop_set_at_the_first_fsync(provider, refs[0], tmp_path / "restored",
                                                                     monkeypatch)
    assert isinstance(outcome, Interrupted), outcome
    assert "node n1: restore of snapshot run1-n1-data" in outcome.message
    assert 1 <= len(fsynced) <= 4 * copy_module.COPY_THREADS, fsynced  # those already under way, not 61
    assert not (tmp_path / "restored").exists()
    assert list(tmp_path.glob(".restore-*")) == [], "no staging copy is left"


def test_a_drill_stopped_while_its_restore_fsyncs_a_pending_snapshot_stops_and_leaves_it_pending(
    provider: LocalProvider, many_files: NodeVolumes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ref,) = _take(provider, many_files, "run1")  # pending: the restore fsyncs it first
    outcome, fsynced = _restored_under_a_stop_set_at_the_first_fsync(provider, ref, tmp_path / "restored",
                                                                     monkeypatch)
    assert isinstance(outcome, Interrupted), outcome
    assert "node n1: restore of snapshot run1-n1-data" in outcome.message
    assert 1 <= len(fsynced) <= 4 * copy_module.COPY_THREADS, fsynced
    assert not (tmp_path / "restored").exists()
    assert _state(provider, "run1") == [("pending", None)]  # still there for a later wait or restore
    monkeypatch.undo()
    assert provider.wait([ref], time.monotonic() + LATER)[0].state == "completed"


def test_a_pending_snapshot_from_before_a_restart_is_refused_and_kept(
    provider: LocalProvider, volumes: NodeVolumes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ref,) = _take(provider, volumes, "run1")
    _another_boot(monkeypatch)
    expected = "node n1: snapshot run1-n1-data of volume data was not yet on disk when the host restarted"
    with pytest.raises(ProviderError, match=expected) as info:
        provider.wait([ref], time.monotonic() + LATER)
    assert "it may be incomplete" in info.value.message and "new backup" in (info.value.hint or "")
    with pytest.raises(ProviderError, match=expected):
        provider.restore(ref, RestoreTarget(path=tmp_path / "restored"))
    assert not (tmp_path / "restored").exists()
    ((state, error),) = _state(provider, "run1")
    assert state == "error" and "host restarted" in (error or "")
    assert Path(ref.extra["path"]).is_dir() and not (Path(ref.extra["path"]) / store_module.COMPLETED).exists()
    provider.delete(ref)  # deleting it is what the operator (prune, gc) does
    assert provider.find({}) == []


def test_a_failed_fsync_fails_the_snapshot_for_good(
    provider: LocalProvider, volumes: NodeVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    refs = _take(provider, volumes, "run1")
    real = copy_module.fsync_path

    def failing(path):
        if str(path).endswith("f05.bin"):
            raise OSError(errno.EIO, "Input/output error")
        real(path)

    monkeypatch.setattr(copy_module, "fsync_path", failing)
    with pytest.raises(ProviderError, match=r"run1-n1-data of volume data could not be written to disk.*f05.bin"):
        provider.wait(refs, time.monotonic() + LATER)
    monkeypatch.setattr(copy_module, "fsync_path", real)
    # After an fsync error the kernel may call the lost pages clean: a second fsync proves nothing.
    with pytest.raises(ProviderError, match="input/output error"):
        provider.wait(refs, time.monotonic() + LATER)
    assert _state(provider, "run1")[0][0] == "error"


def test_a_rollback_finds_and_deletes_pending_snapshots(provider: LocalProvider, volumes: NodeVolumes) -> None:
    refs = _take(provider, volumes, "run1")
    found = provider.find({TAG_RUN: "run1"})
    assert [r.snapshot_id for r in found] == [r.snapshot_id for r in refs]
    for ref in found:
        provider.delete(ref)
    assert provider.find({}) == [] and not Path(refs[0].extra["path"]).exists()


def test_an_incremental_links_only_from_a_completed_snapshot(
    provider: LocalProvider, volumes: NodeVolumes, tmp_path: Path
) -> None:
    (pending,) = _take(provider, volumes, "run1")
    (unlinked,) = _take(provider, volumes, "run2")
    assert unlinked.extra["linked_files"] == 0  # run1 is not known to be on disk: nothing may share it
    provider.wait([pending, unlinked], time.monotonic() + LATER)
    (tmp_path / "src" / "top.txt").write_text("changed")
    (linked,) = provider.wait(_take(provider, volumes, "run3"), time.monotonic() + LATER)
    assert linked.extra["linked_files"] == 20 and linked.extra["copied_bytes"] == len("changed")
    old = Path(unlinked.extra["path"]) / "data" / "sub" / "f00.bin"
    assert (Path(linked.extra["path"]) / "data" / "sub" / "f00.bin").stat().st_ino == old.stat().st_ino


def test_a_snapshot_of_the_first_format_is_completed(provider: LocalProvider, volumes: NodeVolumes) -> None:
    (ref,) = provider.wait(_take(provider, volumes, "run1"), time.monotonic() + LATER)
    snap_dir = Path(ref.extra["path"])
    meta = json.loads((snap_dir / "snapshot.json").read_text())
    meta.update(format=1, state="completed")
    for key in ("boot_id", "unsynced"):
        meta.pop(key)
    (snap_dir / "snapshot.json").write_text(json.dumps(meta))
    (snap_dir / store_module.COMPLETED).unlink()
    assert _state(provider, "run1") == [("completed", None)]
    assert provider.store.previous("n1", "data") is not None
