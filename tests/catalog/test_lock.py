"""The cluster run lock: held, expired, taken over, renewed, released, and raced for."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from snapctl.abandoned_runs import owner_gone
from snapctl.catalog import Catalog, LocalBlobStore
from snapctl.catalog.lock import LockKeeper
from snapctl.errors import CatalogError, LockHeld

from .conftest import FakeClock
from .test_local_store import _race


def test_lock_record_layout(catalog: Catalog, clock: FakeClock) -> None:
    catalog.acquire_lock("ops@host:1", "r1", ttl_s=60)
    record = json.loads(catalog.store.read("prod/lock.json"))
    assert record["owner"] == "ops@host:1" and record["run_id"] == "r1"
    assert record["acquired_at"].startswith("2024-05-01T12:00:00")
    assert record["expires_at"].startswith("2024-05-01T12:01:00")
    assert record["renewed_at"] == record["acquired_at"]  # taking it is its first write


def test_a_renewal_records_when_it_was_written_and_keeps_when_the_lock_was_taken(catalog: Catalog,
                                                                                clock: FakeClock) -> None:
    # renewed_at is what the earlier-boot proof reads: acquired_at stays put through a long backup.
    lock = catalog.acquire_lock("ops@host:1", "r1", ttl_s=60)
    clock.advance(20)
    lock.renew()
    record = json.loads(catalog.store.read("prod/lock.json"))
    assert record["acquired_at"].startswith("2024-05-01T12:00:00")
    assert record["renewed_at"].startswith("2024-05-01T12:00:20")
    assert record["expires_at"].startswith("2024-05-01T12:01:20")


def test_held_lock_raises_lock_held_naming_holder(catalog: Catalog, clock: FakeClock) -> None:
    catalog.acquire_lock("ops@host-a:1", "r1", ttl_s=60)
    clock.advance(30)
    with pytest.raises(LockHeld) as info:
        catalog.acquire_lock("ops@host-b:2", "r2", ttl_s=60)
    err = info.value
    assert "ops@host-a:1" in err.message and "run r1" in err.message
    assert "2024-05-01 12:01:00 UTC" in err.message
    assert err.hint and "wait" in err.hint and "only if that process is gone" in err.hint
    assert err.exit_code == 4


def test_expired_lock_is_taken_over(catalog: Catalog, clock: FakeClock) -> None:
    catalog.acquire_lock("dead@host:1", "r1", ttl_s=60)  # never released: its process died
    clock.advance(61)
    lock = catalog.acquire_lock("ops@host:2", "r2", ttl_s=60)
    assert lock.run_id == "r2"
    assert catalog.read_lock().owner == "ops@host:2"


def test_released_lock_is_free_and_release_is_idempotent(catalog: Catalog, clock: FakeClock) -> None:
    lock = catalog.acquire_lock("ops@host:1", "r1", ttl_s=60)
    assert lock.release() is True
    assert lock.release() is False
    assert not catalog.read_lock().held_at(clock())
    with catalog.acquire_lock("ops@host:1", "r2", ttl_s=60) as second:
        assert second.run_id == "r2"
    assert not catalog.read_lock().held_at(clock())


def test_renew_extends_the_lease(catalog: Catalog, clock: FakeClock) -> None:
    lock = catalog.acquire_lock("ops@host:1", "r1", ttl_s=60)
    clock.advance(50)
    lock.renew()
    clock.advance(50)  # 100 s after acquiring: expired without the renewal
    with pytest.raises(LockHeld, match="run r1"):
        catalog.acquire_lock("ops@host:2", "r2", ttl_s=60)


def test_lock_taken_over_cannot_be_renewed_or_released_by_the_old_holder(catalog: Catalog, clock: FakeClock) -> None:
    old = catalog.acquire_lock("slow@host:1", "r1", ttl_s=60)
    clock.advance(120)
    catalog.acquire_lock("ops@host:2", "r2", ttl_s=60)
    with pytest.raises(LockHeld, match=r"run r1 lost the lock of cluster prod: it is now held by ops@host:2 \(run r2\)"):
        old.renew()
    assert old.release() is False
    current = catalog.read_lock()
    assert current.run_id == "r2" and current.held_at(clock())


def test_concurrent_takeovers_of_a_stale_lock_have_one_winner(store: LocalBlobStore, clock: FakeClock) -> None:
    Catalog(store, "prod", clock=clock).acquire_lock("dead@host:1", "r0", ttl_s=10)
    clock.advance(11)

    def take(i: int):
        try:
            return Catalog(store, "prod", clock=clock).acquire_lock(f"ops@host:{i}", f"r{i}", ttl_s=60)
        except LockHeld:
            return None

    results = _race(12, take)
    winners = [lock for lock in results if lock is not None]
    assert len(winners) == 1
    assert Catalog(store, "prod", clock=clock).read_lock().run_id == winners[0].run_id


def test_concurrent_first_acquires_have_one_winner(store: LocalBlobStore, clock: FakeClock) -> None:
    wins = threading.Lock()
    won: list[str] = []

    def take(i: int) -> None:
        try:
            lock = Catalog(store, "prod", clock=clock).acquire_lock(f"ops@host:{i}", f"r{i}", ttl_s=60)
        except LockHeld:
            return
        with wins:
            won.append(lock.run_id)

    _race(12, take)
    assert len(won) == 1


def test_lock_is_per_cluster(store: LocalBlobStore, clock: FakeClock) -> None:
    Catalog(store, "prod", clock=clock).acquire_lock("ops@host:1", "r1", ttl_s=60)
    assert Catalog(store, "staging", clock=clock).acquire_lock("ops@host:1", "r2", ttl_s=60).run_id == "r2"


def test_a_lock_whose_holder_is_gone_from_this_host_says_so(catalog: Catalog, clock: FakeClock) -> None:
    # A backup SIGKILLed (the OOM killer) left its lock: the next run's hint asked the operator to
    # find out whether `root@vm:31025` was still running, though snapctl could tell on its own host.
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    here = socket.gethostname()
    catalog.acquire_lock(f"ops@{here}:{dead.stdout.strip()}", "r1", ttl_s=120)
    with pytest.raises(LockHeld) as gone:
        catalog.acquire_lock(f"ops@{here}:2", "r2", ttl_s=60)
    assert gone.value.hint.startswith("that process is no longer running on this host: the next run takes the lock "
                                      "over once it expires, or remove ")

    catalog.store.delete("prod/lock.json")
    catalog.acquire_lock(f"ops@{here}:{os.getpid()}", "r3", ttl_s=120)  # alive: the usual hint
    with pytest.raises(LockHeld) as alive:
        catalog.acquire_lock(f"ops@{here}:2", "r4", ttl_s=60)
    assert alive.value.hint.startswith("wait for that run to finish")


class _FlakyLockWrites(LocalBlobStore):
    """A catalog whose next ``failures`` writes of the lock fail as a store that is down a moment."""

    failures = 0

    def replace(self, key: str, data: bytes, expected: bytes) -> bool:
        if key.endswith("lock.json") and self.failures:
            self.failures -= 1
            raise CatalogError("the store answered 503 SlowDown")
        return super().replace(key, data, expected)


def test_a_renewal_that_fails_once_is_tried_again_and_the_live_run_is_not_taken_for_dead(tmp_path: Path) -> None:
    clock = FakeClock()
    store = _FlakyLockWrites(tmp_path)
    catalog = Catalog(store, "prod", clock=clock)
    live = f"ops@{socket.gethostname()}:{os.getpid()}"  # this process: alive on this host

    async def run() -> list[tuple[bool, bool]]:
        keeper = LockKeeper(catalog.acquire_lock(live, "r1", ttl_s=3), period=0.05)
        store.failures = 1
        seen = []
        for _ in range(6):
            await asyncio.sleep(0.06)
            clock.advance(1)
            seen.append((keeper.lost is not None, catalog.read_lock().held_at(clock())))
        keeper.stop()
        return seen

    seen = asyncio.run(run())
    assert not any(lost for lost, _ in seen), seen  # one failed write is no lost lock
    assert all(held for _, held in seen[2:]), seen  # renewed again after it
    # An expired lock naming a run whose process lives here proves nothing; a released one does.
    expired = catalog.read_lock().model_copy(update={"expires_at": clock() - timedelta(seconds=1)})
    assert not owner_gone("r1", expired, clock())
    assert owner_gone("r1", expired.model_copy(update={"owner": "ops@another-host:1"}), clock())
    assert owner_gone("r1", expired.model_copy(update={"released_at": clock()}), clock())


def test_a_renewal_failing_past_the_ttl_loses_the_lock(tmp_path: Path) -> None:
    clock = FakeClock()
    store = _FlakyLockWrites(tmp_path)
    catalog = Catalog(store, "prod", clock=clock)

    async def run() -> bool:
        keeper = LockKeeper(catalog.acquire_lock("ops@host:1", "r1", ttl_s=3), period=0.05)
        store.failures = 100
        for _ in range(8):
            await asyncio.sleep(0.06)
            clock.advance(1)
        keeper.stop()
        return keeper.lost is not None

    assert asyncio.run(run())  # the catalog down past the TTL: another run may have the lock
