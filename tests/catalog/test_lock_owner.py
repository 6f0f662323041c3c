"""The cluster lock's owner judged by its process's identity (boot, pid namespace, start), not by
its pid alone: a reboot, a reused pid or a container given this host's name fooled the pid."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from snapctl.abandoned_runs import owner_gone
from snapctl.catalog import Catalog, LocalBlobStore, LockRecord
from snapctl.catalog.lock import RunLock, utc_now
from snapctl.errors import LockHeld
from snapctl.process_identity import booted_at, identity, run_owner

HERE = socket.gethostname()
OURS = identity(os.getpid())
pytestmark = pytest.mark.skipif(OURS is None or booted_at() is None, reason="needs Linux's /proc")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: no process has its pid now
    return child.pid


def _lock(pid: int, process: dict[str, Any], *, acquired_ago: timedelta = timedelta(minutes=1),
          renewed_ago: timedelta | None = None, expires_in: timedelta = timedelta(hours=1)) -> LockRecord:
    """A lock of ``ops@<this host>:<pid>`` recording ``process`` (with that pid, as every lock
    names it), last written ``renewed_ago`` (when it was taken, unless said; None: by a snapctl
    that did not record it)."""
    now = utc_now()
    return LockRecord(owner=f"ops@{HERE}:{pid}", run_id="r1", acquired_at=now - acquired_ago,
                      renewed_at=None if renewed_ago is None else now - renewed_ago, expires_at=now + expires_in,
                      owner_process={**process, "pid": pid})


def _refusal(tmp_path: Path, pid: int, process: dict[str, Any], *, acquired_ago: timedelta = timedelta(minutes=1),
             renewed_ago: timedelta | None | str = "acquired", expires_in: timedelta = timedelta(hours=1),
             expired: bool = False) -> tuple[str, bool]:
    """The hint of the refusal the next run meets on such a lock (``_lock``), and whether a run
    it holds counts as gone (what list, status and verify go by); no hint for an ``expired`` lock,
    which refuses nothing."""
    record = _lock(pid, process, acquired_ago=acquired_ago,
                   renewed_ago=acquired_ago if renewed_ago == "acquired" else renewed_ago,
                   expires_in=timedelta(seconds=-1) if expired else expires_in)
    store = LocalBlobStore(tmp_path / "catalog")
    store.write("prod/lock.json", record.encode())
    gone = owner_gone("r1", Catalog(store, "prod").read_lock(), utc_now())
    if expired:
        return "", gone
    with pytest.raises(LockHeld) as held:
        Catalog(store, "prod").acquire_lock(run_owner(), "r2", ttl_s=60)
    return held.value.hint or "", gone


def test_a_lock_records_its_owners_process_and_a_real_holder_killed_on_this_host_is_proven_gone(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "catalog")
    Catalog(store, "prod").acquire_lock(run_owner(), "r0", ttl_s=60).release()
    assert Catalog(store, "prod").read_lock().owner_process == OURS  # written on acquire, from /proc
    # A real snapctl process takes the lock and dies holding it (as SIGKILL leaves it).
    subprocess.run(
        [sys.executable, "-c", "from snapctl.catalog import Catalog, LocalBlobStore; from snapctl.process_identity import "
         f"run_owner; Catalog(LocalBlobStore({str(tmp_path / 'catalog')!r}), 'prod').acquire_lock(run_owner(), 'r1', 600)"],
        capture_output=True, text=True, check=True)
    lock = Catalog(store, "prod").read_lock()
    assert lock.run_id == "r1" and lock.owner_process["pid"] != os.getpid()
    with pytest.raises(LockHeld) as held:
        Catalog(store, "prod").acquire_lock(run_owner(), "r2", ttl_s=60)
    assert held.value.hint.startswith("that process is no longer running on this host: the next `snapctl backup` "
                                      "takes the lock over at once (prune and gc once it expires)"), held.value.hint
    assert owner_gone("r1", lock, utc_now())
    # A backup (take_over_dead) takes it over now, though it has ten minutes to run.
    taken = Catalog(store, "prod").acquire_lock(run_owner(), "r2", ttl_s=60, take_over_dead=True)
    assert taken.taken_from is not None and taken.taken_from.run_id == "r1"
    assert Catalog(store, "prod").read_lock().run_id == "r2"


def _before_boot(by: timedelta) -> timedelta:
    """How long ago it was ``by`` before this host booted."""
    return utc_now() - booted_at() + by


def test_a_lock_last_written_before_this_host_rebooted_is_gone_though_its_pid_runs_again(tmp_path: Path) -> None:
    # After a reboot the lock's pid is handed out again (here: it is this test's own, alive), and
    # looked alive; a lease still running after an unclean shutdown refused every run till it expired.
    # A TTL short beside the hour since the last renewal: five sixths of it have passed however
    # recently this host booted (with an hour's TTL the test held only past four hours of uptime).
    hint, gone = _refusal(tmp_path, os.getpid(), {**OURS, "boot_id": "another-boot"},
                          acquired_ago=_before_boot(timedelta(hours=2)), renewed_ago=_before_boot(timedelta(hours=1)),
                          expires_in=timedelta(minutes=1))
    assert hint.startswith("that process is no longer running on this host (this host has restarted since it "
                           "last renewed the lock): the next run takes the lock over once it expires, or remove "), hint
    assert gone


def test_a_same_named_machines_lock_taken_before_this_boot_and_renewed_since_is_alive(tmp_path: Path) -> None:
    # Its long backup took the lock before this host booted and renews it still: taken for this
    # host's earlier boot, list and status showed it stopped, restore used its run as a stopped
    # backup, and the refusal's hint said to remove the lock (two backups at once).
    other = {**OURS, "boot_id": "boot-id-of-the-other-machine"}
    hint, gone = _refusal(tmp_path, _dead_pid(), other, acquired_ago=_before_boot(timedelta(hours=1)),
                          renewed_ago=timedelta(seconds=10), expires_in=timedelta(seconds=110))
    assert hint.startswith("wait for that run to finish"), hint
    assert not gone


def test_a_renewal_after_this_boot_turns_a_lock_of_an_earlier_boot_into_a_live_one(tmp_path: Path) -> None:
    # The real renewal, as the owner's LockKeeper makes it: it is what tells the two apart.
    store = LocalBlobStore(tmp_path / "catalog")
    record = _lock(_dead_pid(), {**OURS, "boot_id": "boot-id-of-the-other-machine"},
                   acquired_ago=_before_boot(timedelta(hours=1)), renewed_ago=_before_boot(timedelta(minutes=30)),
                   expires_in=timedelta(minutes=1))  # short beside the 30 minutes: proven gone at any uptime
    store.write("prod/lock.json", record.encode())
    assert owner_gone("r1", Catalog(store, "prod").read_lock(), utc_now())
    RunLock(store, "prod/lock.json", "prod", record, ttl_s=120, clock=utc_now).renew()
    assert not owner_gone("r1", Catalog(store, "prod").read_lock(), utc_now())


@pytest.mark.parametrize("share_of_ttl", [
    # A same-named machine renewing at each third of its TTL may have last written the lock a
    # moment before this host booted: its next renewal is not due yet.
    0.3,
    # The lock outlives two renewals the catalog refused (an S3 503 each): the proof must too.
    0.7,
])
def test_a_lock_written_before_this_boot_whose_owner_may_renew_still_is_not_proven_gone(
        tmp_path: Path, share_of_ttl: float) -> None:
    since_written = _before_boot(timedelta(seconds=5))  # of the TTL: share_of_ttl
    ttl = since_written / share_of_ttl
    other = {**OURS, "boot_id": "boot-id-of-the-other-machine"}
    hint, gone = _refusal(tmp_path, _dead_pid(), other, acquired_ago=_before_boot(timedelta(hours=1)),
                          renewed_ago=since_written, expires_in=ttl - since_written)
    assert hint.startswith("wait for that run to finish"), hint
    assert not gone


def test_a_lock_of_another_boot_that_does_not_say_when_it_was_renewed_proves_nothing(tmp_path: Path) -> None:
    # An older snapctl's lock records its owner_process but not its renewals: taken before this
    # boot, it may have been renewed ever since.
    hint, gone = _refusal(tmp_path, _dead_pid(), {**OURS, "boot_id": "another-boot"},
                          acquired_ago=_before_boot(timedelta(hours=1)), renewed_ago=None)
    assert hint.startswith("wait for that run to finish"), hint
    assert not gone


def test_a_lock_of_another_boot_taken_since_this_boot_is_another_machines_with_this_name(tmp_path: Path) -> None:
    # Two machines named alike (cloned VMs, `localhost`) sharing a catalog: the other's lock, taken
    # while this one ran, cannot be of an earlier boot here, and its pid here proves nothing.
    hint, gone = _refusal(tmp_path, _dead_pid(), {**OURS, "boot_id": "another-boot"})
    assert hint.startswith("wait for that run to finish"), hint
    assert not gone


def test_a_lock_whose_pid_now_runs_a_process_begun_later_is_gone(tmp_path: Path) -> None:
    # Its pid handed out again: this test's process runs under it, begun after the lock's holder.
    hint, gone = _refusal(tmp_path, os.getpid(), {**OURS, "started": OURS["started"] - 1})
    assert hint.startswith(f"that process is no longer running on this host (pid {os.getpid()} now runs another "
                           "process, begun later): the next `snapctl backup` takes the lock over at once"), hint
    assert gone
    # Expired, its pid alive but another process's: no run whose renewals failed, a dead one.
    assert _refusal(tmp_path, os.getpid(), {**OURS, "started": OURS["started"] - 1}, expired=True)[1]


def test_a_lock_of_another_pid_namespace_is_not_judged_by_a_pid_of_ours(tmp_path: Path) -> None:
    # A container given this host's name counts its pids apart: its holder's pid, absent here, is no
    # proof it is gone, and removing the lock of a live run let two backups run at once.
    hint, gone = _refusal(tmp_path, _dead_pid(), {**OURS, "pid_ns": "pid:[4026531999]"})
    assert hint.startswith("wait for that run to finish"), hint
    assert not gone


def test_an_older_snapctls_lock_whose_owner_is_a_zombie_not_yet_reaped_is_gone(tmp_path: Path) -> None:
    # A lock without owner_process is judged by its pid alone, and signal 0 reaches a zombie: a
    # holder that died but whose parent had not reaped it (pid 1 in some containers never does)
    # was taken for a live run, its lock's hint saying to wait and `list` showing its run running.
    child = subprocess.Popen(["true"])  # never waited for until the end: it stays a zombie
    try:
        stat = Path(f"/proc/{child.pid}/stat")
        for _ in range(500):
            if stat.read_text().rpartition(")")[2].split()[0] == "Z":
                break
            time.sleep(0.01)
        else:
            pytest.fail(f"pid {child.pid} never became a zombie")
        now = utc_now()
        store = LocalBlobStore(tmp_path / "catalog")
        store.write("prod/lock.json", LockRecord(owner=f"ops@{HERE}:{child.pid}", run_id="r1", acquired_at=now,
                                                 expires_at=now + timedelta(hours=1)).encode())
        assert Catalog(store, "prod").read_lock().owner_process is None  # as an older snapctl wrote it
        with pytest.raises(LockHeld) as held:
            Catalog(store, "prod").acquire_lock(run_owner(), "r2", ttl_s=60)
        assert held.value.hint.startswith("that process is no longer running on this host: the next run takes"), \
            held.value.hint
        assert owner_gone("r1", Catalog(store, "prod").read_lock(), utc_now())
    finally:
        child.wait()


def _taken_over(tmp_path: Path, record: LockRecord) -> bool:
    """Whether a backup (``take_over_dead``) takes ``record`` over before it expires."""
    store = LocalBlobStore(tmp_path / "catalog")
    store.write("prod/lock.json", record.encode())
    try:
        lock = Catalog(store, "prod").acquire_lock(run_owner(), "r2", ttl_s=60, take_over_dead=True)
    except LockHeld:
        return False
    assert lock.taken_from is not None and lock.taken_from.run_id == "r1"
    return True


def test_a_backup_takes_over_only_a_holder_proven_dead_in_this_boot_and_pid_namespace(tmp_path: Path) -> None:
    # Its pid handed out again: gone, as surely as a pid that runs nothing.
    assert _taken_over(tmp_path, _lock(os.getpid(), {**OURS, "started": OURS["started"] - 1}))
    assert _taken_over(tmp_path, _lock(_dead_pid(), OURS))
    # Alive (this very process took it): never.
    assert not _taken_over(tmp_path, _lock(os.getpid(), OURS))
    # A container given this host's name, another pid namespace: its pid proves nothing here.
    assert not _taken_over(tmp_path, _lock(_dead_pid(), {**OURS, "pid_ns": "pid:[4026531999]"}))
    # Another boot: gone by the earlier-boot proof, which status and the hint go by, but that proof
    # leaves a doubt (a same-named machine whose renewals failed) not worth two backups at once.
    earlier = _lock(os.getpid(), {**OURS, "boot_id": "another-boot"}, acquired_ago=_before_boot(timedelta(hours=2)),
                    renewed_ago=_before_boot(timedelta(hours=1)))
    assert not _taken_over(tmp_path, earlier)
    # An older snapctl's lock, its pid alone: a container's pid may be absent here.
    now = utc_now()
    bare = LockRecord(owner=f"ops@{HERE}:{_dead_pid()}", run_id="r1", acquired_at=now, expires_at=now + timedelta(hours=1))
    assert not _taken_over(tmp_path, bare)
    # Another host's: nothing here proves anything about it.
    other_host = _lock(_dead_pid(), OURS).model_copy(update={"owner": f"ops@not-{HERE}:1"})
    assert not _taken_over(tmp_path, other_host)
