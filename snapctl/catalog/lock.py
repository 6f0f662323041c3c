"""The cluster's run lock: one backup run at a time, as a lease in the catalog.

The lock is a blob ``<cluster>/lock.json`` = ``{owner, run_id, acquired_at, renewed_at,
expires_at}`` in wall-clock UTC (several hosts may share an S3 catalog, so monotonic clocks do not
compare), and ``owner_process``: the owner's boot, pid namespace and start, which make its pid a proof.
Every change after the first create is a compare-and-swap (``BlobStore.replace`` with the
bytes last seen), so of two runs taking over an expired lock exactly one wins, and a run whose
lock was taken over cannot renew or release the new holder's lock. Release does not delete the
blob (the protocol has no compare-and-delete): it marks the record released, which any later
run takes over like an expired one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from snapctl.catalog import BlobStore
from snapctl.errors import CatalogError, LockHeld, RunFailed, SnapctlError
from snapctl.process_identity import identity, not_running, of_an_earlier_boot, pid_here, run_owner, runs
from snapctl.timestamps import AwareUtcTime

if TYPE_CHECKING:
    from snapctl.catalog.catalog import Catalog

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]

# A holder renews its lock every third of its TTL: two renewals the catalog fails still leave one
# before it expires. ``_of_an_earlier_boot`` allows for as many.
RENEWALS_PER_TTL = 3


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class LockRecord(BaseModel):
    # Every snapctl since the first ignores keys it does not know: an older one reads a lock with
    # owner_process as it always read one, and a newer field does not lock this one out.
    model_config = ConfigDict(extra="ignore")

    owner: str
    run_id: str
    # With an offset: one without cannot be compared with now (a hand-edited lock crashed every command).
    acquired_at: AwareUtcTime
    expires_at: AwareUtcTime
    # When the owner last wrote the lock (took it or renewed it; acquired_at never moves): none in
    # a lock of an older snapctl. The earlier-boot proof needs it (``_of_an_earlier_boot``).
    renewed_at: AwareUtcTime | None = None
    released_at: AwareUtcTime | None = None
    # The owner's process as ``identity`` had it when it took the lock; none in a lock of an older
    # snapctl. Any shape is read: one this snapctl cannot judge proves nothing, and is no unreadable lock.
    owner_process: Any = None

    def held_at(self, now: datetime) -> bool:
        return self.released_at is None and self.expires_at > now

    def encode(self) -> bytes:
        return self.model_dump_json(indent=1, exclude_none=True).encode()


def decode_lock(data: bytes, where: str) -> LockRecord:
    try:
        return LockRecord.model_validate_json(data)
    except ValidationError as exc:
        raise CatalogError(
            f"the cluster lock {where} is unreadable",
            hint="no run can take it over safely; remove it by hand if no backup is running",
        ) from exc


def held_error(cluster: str, record: LockRecord, where: str, now: datetime) -> LockHeld:
    expires = record.expires_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    remaining = max(0, int((record.expires_at - now).total_seconds()))
    return LockHeld(
        f"cluster {cluster} is locked by {record.owner} (run {record.run_id}) until {expires} ({remaining}s from now)",
        hint=dead_holder_hint(record, where) or ("wait for that run to finish (its lock is taken over automatically "
                                                 f"once expired); remove {where} only if that process is gone"),
    )


def dead_holder_hint(record: LockRecord, where: str) -> str | None:
    """What to do about a lock whose holder was killed (SIGKILL, the OOM killer) on this host, or
    whose host rebooted since, so that nobody need go and look; None when it may still run."""
    if not gone_from_this_host(record):
        return None
    if proven_dead_here(record):
        return (f"that process is no longer running on this host{_why_gone(record)}: the next `snapctl backup` "
                f"takes the lock over at once (prune and gc once it expires), or remove {where} to run now")
    return (f"that process is no longer running on this host{_why_gone(record)}: the next run takes the lock "
            f"over once it expires, or remove {where} to run now")


def proven_dead_here(record: LockRecord) -> bool:
    """The strongest proof, the one a backup takes a lock over on before it expires (as a drill's
    cleanup takes a killed drill's leftovers): the owner's own process, as it recorded itself when
    it took the lock, was of this boot and this pid namespace, and its pid now runs nothing, or a
    process begun at another time. Not the earlier-boot proof, nor an older snapctl's bare pid:
    each leaves a doubt (``_of_an_earlier_boot``, a container's pids) that would let two backups
    run at once, for a gain of a fraction of a TTL."""
    pid = pid_here(record.owner)
    process = record.owner_process
    return pid is not None and isinstance(process, dict) and process.get("pid") == pid and runs(pid, process) is False


def gone_from_this_host(record: LockRecord) -> bool:
    """The lock's owner (``user@host:pid``) names this host and is proven gone from it. Any doubt
    (another host, a container's pid namespace, a pid that some process has, one we may not
    signal) is not gone."""
    return _on_this_host(record) is False


def may_live_on_this_host(record: LockRecord) -> bool:
    """The lock's owner names this host and may still run there: its pid runs the process that took
    the lock, or (a lock of an older snapctl, without ``owner_process``) some process (a doubt)."""
    return _on_this_host(record) is True


def _on_this_host(record: LockRecord) -> bool | None:
    """Whether the owner runs on this host; None: another host, or no pid that proves anything here.

    With ``owner_process`` the pid is judged as a drill's is: of this boot and this pid namespace,
    it is gone when the pid runs nothing or a process begun at another time (the pid handed out
    again). A lock of an earlier boot of this host is gone too, whatever its pid
    (``_of_an_earlier_boot``). Another pid namespace (a container given this host's name) proves
    nothing. A lock of an older snapctl has only its pid: whether some process runs as it here
    (a zombie, dead but not reaped, runs no code, and holds nothing)."""
    pid = pid_here(record.owner)
    if pid is None:
        return None
    process = record.owner_process
    if process is None:
        return not not_running(pid)
    if not isinstance(process, dict) or process.get("pid") != pid:
        return None  # not what any snapctl writes: a hand-edited record proves nothing
    if _of_an_earlier_boot(record):
        return False
    return runs(pid, process)


def _of_an_earlier_boot(record: LockRecord) -> bool:
    """The owner ran in an earlier boot of this host, and is gone with it: its process is of
    another boot, it last wrote the lock (``renewed_at``) before this host booted, and five sixths
    of the lock's TTL have passed since. Every owner renews at each third of its TTL
    (``RENEWALS_PER_TTL``), and the lock outlives two renewals the catalog fails; so does this
    proof (the sixth to spare is for a slow write and clocks apart): an owner still running has
    written the lock since, another machine given this host's name, whose backup took the lock
    before this boot and renews it still. ``acquired_at`` never moves, and tells the two apart no
    more than a lock without ``renewed_at`` (an older snapctl's, renewed without a trace) does.

    Left unproven: such a machine whose renewals the catalog refused for five sixths of a TTL,
    across this host's boot, is taken for gone until it renews again, or its lock expires."""
    written = record.renewed_at
    if written is None:
        return False
    if utc_now() < written + (record.expires_at - written) * 5 / 6:
        return False  # a live owner's next renewal may still be on its way
    return of_an_earlier_boot(record.owner_process, written)


def _why_gone(record: LockRecord) -> str:
    """Why a holder ``gone_from_this_host`` is gone, where a look at the host would mislead: its pid
    may run a process of today, not the one that took the lock."""
    if _of_an_earlier_boot(record):
        return " (this host has restarted since it last renewed the lock)"
    pid = pid_here(record.owner)
    return f" (pid {pid} now runs another process, begun later)" if pid and identity(pid) is not None else ""


def owner_identity(owner: str) -> dict[str, Any] | None:
    """The identity of ``owner``'s process when it names this process, as every real owner does
    (``run_owner``): the only process whose start is known to be the owner's."""
    return identity(os.getpid()) if pid_here(owner) == os.getpid() else None


class RunLock:
    """A lock this process holds; renew it well within its TTL, release it when the run ends."""

    def __init__(self, store: BlobStore, key: str, cluster: str, record: LockRecord, ttl_s: float, clock: Clock) -> None:
        self._store = store
        self._key = key
        self._cluster = cluster
        self._record = record
        self._data = record.encode()  # exactly what we wrote: the expected value of every CAS
        self._ttl_s = ttl_s
        self._clock = clock
        self._released = False
        self.taken_from: LockRecord | None = None  # the lock of a holder proven dead, taken over before it expired

    @property
    def owner(self) -> str:
        return self._record.owner

    @property
    def run_id(self) -> str:
        return self._record.run_id

    @property
    def expires_at(self) -> datetime:
        return self._record.expires_at

    def renew(self, ttl_s: float | None = None) -> None:
        """Push the expiry out to now + TTL; raise ``LockHeld`` when another run took the lock over."""
        if self._released:
            raise CatalogError(f"the lock of run {self.run_id} was already released")
        if ttl_s is not None:
            self._ttl_s = ttl_s
        now = self._clock()
        renewed = self._record.model_copy(update={"renewed_at": now, "expires_at": now + timedelta(seconds=self._ttl_s)})
        data = renewed.encode()
        if not self._store.replace(self._key, data, expected=self._data):
            raise self._lost()
        self._record, self._data = renewed, data

    def expired(self) -> bool:
        """Past the expiry of its last renewal: another run may take it over from now on."""
        return self._clock() >= self._record.expires_at

    def release(self) -> bool:
        """Give the lock up if it is still ours; True when this call released it. Safe to call twice."""
        if self._released:
            return False
        now = self._clock()
        released = self._record.model_copy(update={"expires_at": now, "released_at": now})
        ours = self._store.replace(self._key, released.encode(), expected=self._data)
        self._released = True  # only now: a release that raised may be retried
        return ours

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _lost(self) -> LockHeld:
        where = f"{self._store.describe()}/{self._key}"
        current = self._store.read(self._key)
        holder = "nobody"
        if current is not None:
            try:
                record = LockRecord.model_validate_json(current)
                holder = f"{record.owner} (run {record.run_id})"
            except ValidationError:
                holder = "an unreadable record"
        return LockHeld(
            f"run {self.run_id} lost the lock of cluster {self._cluster}: it is now held by {holder}",
            hint=f"the lock expired before it was renewed (policy.lock_ttl_s too short, or the process stalled); see {where}",
        )


def acquire(store: BlobStore, key: str, cluster: str, owner: str, run_id: str, ttl_s: float, clock: Clock,
            *, take_over_dead: bool = False) -> RunLock:
    """Take the lock, or take over an expired or released one; raise ``LockHeld`` while it is held.
    ``take_over_dead``: a held lock whose holder is ``proven_dead_here`` is taken over too (the
    compare-and-swap still makes one winner of two runs that both found it dead)."""
    if ttl_s <= 0:
        raise CatalogError(f"lock TTL must be positive, not {ttl_s}")
    where = f"{store.describe()}/{key}"
    process = owner_identity(owner)
    for _ in range(10):
        now = clock()
        record = LockRecord(owner=owner, run_id=run_id, acquired_at=now, renewed_at=now,
                            expires_at=now + timedelta(seconds=ttl_s), owner_process=process)
        if store.create(key, record.encode()):
            return RunLock(store, key, cluster, record, ttl_s, clock)
        current = store.read(key)
        if current is None:
            continue  # released and deleted by hand between our create and read: try again
        existing = decode_lock(current, where)
        held = existing.held_at(now)
        if held and not (take_over_dead and proven_dead_here(existing)):
            raise held_error(cluster, existing, where, now)
        if store.replace(key, record.encode(), expected=current):
            lock = RunLock(store, key, cluster, record, ttl_s, clock)
            lock.taken_from = existing if held else None
            return lock
        # Someone else changed it between our read and our swap; look again.
    raise CatalogError(f"could not take the cluster lock {where}: it keeps changing", hint="another snapctl is racing for it; retry")


def read_lock(store: BlobStore, key: str) -> LockRecord | None:
    data = store.read(key)
    return None if data is None else decode_lock(data, f"{store.describe()}/{key}")


class LockKeeper:
    """Renews the run lock in the background; a lost lock (another run took it over) fails the run."""

    def __init__(self, lock: RunLock, period: float) -> None:
        self.lock, self.period = lock, period
        self.lost: SnapctlError | None = None
        self.task = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await asyncio.to_thread(self.lock.renew)
            except SnapctlError as exc:
                if _lost_for_good(self.lock, exc):
                    self.lost = exc
                    return

    def check(self) -> None:
        if self.lost is not None:
            raise RunFailed(f"lost the cluster lock during the run: {self.lost.message}",
                            hint="raise policy.lock_ttl_s if the catalog is slow to write")

    def stop(self) -> None:
        self.task.cancel()


class ThreadLockKeeper:
    """The cluster lock for a command that is not a coroutine (prune, gc --delete), renewed from a
    thread while the work runs; ``check`` raises once it is lost."""

    def __init__(self, catalog: Catalog, ttl_s: float, verb: str) -> None:
        self.run_id = f"{verb}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"
        self._lock = catalog.acquire_lock(run_owner(), self.run_id, ttl_s)
        self._period = ttl_s / RENEWALS_PER_TTL
        self._lost: SnapctlError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="snapctl-lock", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._lock.release()

    def check(self) -> None:
        if self._lost is not None:
            raise self._lost

    def _renew(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._lock.renew()
            except SnapctlError as exc:
                if _lost_for_good(self._lock, exc):
                    self._lost = exc
                    return


def _lost_for_good(lock: RunLock, exc: SnapctlError) -> bool:
    """A renewal that failed: another run took the lock over, or it expired while the catalog
    failed. One failed write (an S3 503) is tried again at the next period, within the TTL: giving
    up at once let the lock expire under a live run, which `status` then showed as dead and a
    prune could take over."""
    if isinstance(exc, LockHeld) or lock.expired():
        return True
    log.warning("could not renew the cluster lock (tried again in a moment): %s", exc.message)
    return False
