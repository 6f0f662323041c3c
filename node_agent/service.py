"""The agent's core, free of HTTP: one engine, one prepare lease, and the dead man's switch.

A prepare is a lease. If the holding run stops renewing it (snapctl crashed, the network split),
the watcher completes the engine by itself when the lease runs out: a backup can never leave a
database frozen. Leases are fenced by run id, so a late call from a dead run cannot release a
newer run's hold. Synchronous and thread-safe: one lock, engine calls never overlap.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from node_agent.engines.base import Engine
from node_agent.models import (
    MAX_HOLD_LEAD_S,
    MAX_LEASE_S,
    RUN_ID_PATTERN,
    AgentStatus,
    CompleteResponse,
    EngineState,
    Health,
    LeaseInfo,
    PrepareResponse,
    TriggerResponse,
    VerifyFacts,
)
from snapctl import __version__
from snapctl.errors import BadInputError, EngineError, LeaseConflict

log = logging.getLogger("snapctl.agent")

_RUN_ID = re.compile(RUN_ID_PATTERN)
# Runs whose hold ended, so their repeated complete is answered "already released" (not 409).
_ENDED_RUNS_KEPT = 1024
# A complete that found nothing held may have overtaken its own run's prepare (a rollback's
# complete goes out on another connection): the run is remembered so, and its prepare never holds.
_COMPLETED_FIRST = "completed before its prepare arrived"
# The watcher re-reads the clock at least this often, so an injected clock is honoured too.
_WATCH_MAX_SLEEP_S = 1.0


@dataclass
class AgentStats:
    """Counters for /metrics. ``last_*_s``: how long the last engine prepare/complete took."""

    prepares: int = 0
    completes: int = 0
    lease_expirations: int = 0
    last_prepare_s: float | None = None
    last_complete_s: float | None = None
    held: bool = False


@dataclass
class _Lease:
    run_id: str
    lease_s: float
    acquired_at: datetime  # wall clock, for humans and the wire
    acquired_mono: float  # the service clock, for expiry
    expires_mono: float
    state: EngineState

    def info(self) -> LeaseInfo:
        ttl = timedelta(seconds=self.expires_mono - self.acquired_mono)
        return LeaseInfo(run_id=self.run_id, acquired_at=self.acquired_at, expires_at=self.acquired_at + ttl)


class AgentService:
    def __init__(
        self,
        node: str,
        engine: Engine,
        *,
        max_lease_s: float = MAX_LEASE_S,
        clock: Callable[[], float] = time.monotonic,
        allow_restore_prepare: bool = True,
    ) -> None:
        self.node = node
        self.engine = engine
        self.allow_restore_prepare = allow_restore_prepare
        self.max_lease_s = max_lease_s
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._lease: _Lease | None = None
        self._ended: OrderedDict[str, str] = OrderedDict()  # run id -> how its hold ended
        self._waiting: dict[str, int] = {}  # run id -> prepares waiting for their hold_at
        self._cancelled: set[str] = set()  # runs completed while their prepare waited: it must not hold
        self._stats = AgentStats()
        self._closed = False
        self._watcher = threading.Thread(target=self._watch, name=f"lease-watcher-{node}", daemon=True)
        self._watcher.start()

    # ---- read-only ----------------------------------------------------------------------

    @property
    def stats(self) -> AgentStats:
        with self._lock:
            return replace(self._stats, held=self._lease is not None)

    @property
    def lease(self) -> LeaseInfo | None:
        with self._lock:
            self._expire_if_due()
            return self._lease.info() if self._lease else None

    def health(self) -> Health:
        return Health(agent_version=__version__)

    def status(self) -> AgentStatus:
        with self._lock:
            self._expire_if_due()
            engine_status = self.engine.status()
            paths = self.engine.data_paths()
            lease = self._lease.info() if self._lease else None
        return AgentStatus(
            node=self.node,
            agent_version=__version__,
            engine=engine_status,
            lease=lease,
            data_paths=[str(p) for p in paths],
            free_bytes=_free_bytes(paths[0]) if paths else None,
        )

    # ---- the lease ----------------------------------------------------------------------

    def prepare(self, run_id: str, lease_s: float, hold_at: datetime | None = None) -> PrepareResponse:
        _check_run_id(run_id)
        self._check_lease_s(lease_s)
        lead = _hold_lead_s(hold_at)
        with self._lock:
            if self._ended.get(run_id) == _COMPLETED_FIRST:
                log.info("prepare of run %s refused: its complete came first; nothing is held", run_id)
                raise LeaseConflict(f"node {self.node}: run {run_id} completed this node before its prepare "
                                    "arrived (a run rolling back); nothing is held")
            if lead > 0:
                self._wait_for_hold_at(run_id, lead)
            if self._closed:
                raise EngineError(f"the agent of node {self.node} is shutting down", hint="retry when it is back")
            self._expire_if_due()
            now = self._clock()
            if self._lease is not None:
                if self._lease.run_id != run_id:
                    raise self._conflict(f"node {self.node} is already held by run {self._lease.run_id}")
                self._lease.expires_mono, self._lease.lease_s = now + lease_s, lease_s
                self._changed.notify_all()
                return PrepareResponse(run_id=run_id, lease=self._lease.info(), state=self._lease.state)
            try:
                state = self.engine.prepare(run_id)
            except BaseException:
                self._complete_quietly(run_id, "after a failed prepare")
                raise
            done = self._clock()
            self._stats.prepares += 1
            self._stats.last_prepare_s = done - now
            self._lease = _Lease(run_id, lease_s, datetime.now(timezone.utc), done, done + lease_s, state)
            self._ended.pop(run_id, None)
            self._changed.notify_all()
            log.info("prepared for run %s (lease %.1fs, engine took %.3fs)", run_id, lease_s, done - now)
            return PrepareResponse(run_id=run_id, lease=self._lease.info(), state=state)

    def renew(self, run_id: str, lease_s: float | None = None) -> LeaseInfo:
        _check_run_id(run_id)
        if lease_s is not None:
            self._check_lease_s(lease_s)
        with self._lock:
            self._expire_if_due()
            lease = self._lease
            if lease is None or lease.run_id != run_id:
                raise self._not_holding(run_id, "renew")
            lease.lease_s = lease_s or lease.lease_s
            lease.expires_mono = self._clock() + lease.lease_s
            self._changed.notify_all()
            return lease.info()

    def complete(self, run_id: str) -> CompleteResponse:
        _check_run_id(run_id)
        with self._lock:
            self._expire_if_due()
            lease = self._lease
            if lease is None or lease.run_id != run_id:
                if run_id in self._waiting:  # its prepare waits for hold_at: it will not hold
                    self._cancelled.add(run_id)
                    self._remember_ended(run_id, "cancelled before it began")
                    self._changed.notify_all()
                    return CompleteResponse(run_id=run_id, released=False)
                if run_id in self._ended:
                    return CompleteResponse(run_id=run_id, released=False)
                # Built first: once remembered, the run would read as one whose hold already ended.
                refusal = self._not_holding(run_id, "complete")
                if lease is None:
                    self._remember_ended(run_id, _COMPLETED_FIRST)
                raise refusal
            started = self._clock()
            # If the engine fails to release, the lease stays so a retry (or expiry) tries again.
            self.engine.complete(run_id)
            done = self._clock()
            self._end_lease("completed")
            self._stats.completes += 1
            self._stats.last_complete_s = done - started
            log.info("completed run %s after %.3fs held", run_id, done - lease.acquired_mono)
            return CompleteResponse(run_id=run_id, released=True, held_for_s=done - lease.acquired_mono)

    def expire_if_due(self) -> bool:
        """Complete an expired lease now; True when one expired. The watcher calls this too."""
        with self._lock:
            return self._expire_if_due()

    # ---- other engine calls -------------------------------------------------------------

    def trigger(self, target: str | None) -> TriggerResponse:
        with self._lock:
            self._expire_if_due()
            return TriggerResponse(jobs=self.engine.trigger(target))

    def restore_prepare(self, path: str | Path | None) -> None:
        if not self.allow_restore_prepare:
            raise LeaseConflict(
                f"node {self.node}: restore-prepare refused: this agent serves a live database",
                hint="run it on a scratch agent beside the restored disks, configured with restore_target: true",
            )
        with self._lock:
            self._expire_if_due()
            if self._lease is not None:
                raise self._conflict(f"node {self.node} is held by run {self._lease.run_id}: restore-prepare refused")
            self.engine.restore_prepare(Path(path) if path else None)

    def verify(self) -> VerifyFacts:
        with self._lock:
            self._expire_if_due()
            return self.engine.verify()

    def close(self) -> None:
        """Complete any held lease (nothing stays held), stop the watcher, close the engine."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._lease is not None:
                run_id = self._lease.run_id
                log.warning("agent stopping while run %s holds the engine: completing it", run_id)
                self._complete_quietly(run_id, "on shutdown")
                self._end_lease("released on shutdown")
                self._stats.completes += 1
            self._changed.notify_all()
        self._watcher.join(timeout=5)
        self.engine.close()

    # ---- internals (call with the lock held) --------------------------------------------

    def _wait_for_hold_at(self, run_id: str, lead: float) -> None:
        """Wait (lock released meanwhile) until the hold may begin. A complete of the same run that
        arrives first, from a run rolling back, cancels the prepare: the engine is never held."""
        self._waiting[run_id] = self._waiting.get(run_id, 0) + 1
        try:
            deadline = time.monotonic() + lead  # hold_at is wall-clock time: not the injectable clock
            while run_id not in self._cancelled and (remaining := deadline - time.monotonic()) > 0:
                self._changed.wait(remaining)
            if run_id in self._cancelled:
                log.info("prepare of run %s cancelled by its complete before its hold began", run_id)
                raise LeaseConflict(f"node {self.node}: the prepare of run {run_id} was cancelled by its "
                                    "complete before the hold began; nothing is held")
        finally:
            self._waiting[run_id] -= 1
            if not self._waiting[run_id]:
                del self._waiting[run_id]
                self._cancelled.discard(run_id)

    def _expire_if_due(self) -> bool:
        lease = self._lease
        if lease is None or self._clock() < lease.expires_mono:
            return False
        self._complete_quietly(lease.run_id, "on lease expiry")
        self._end_lease("expired")
        self._stats.lease_expirations += 1
        log.warning(
            "lease of run %s expired after %.1fs without renewal: engine completed by the agent",
            lease.run_id, lease.lease_s,
        )
        return True

    def _end_lease(self, how: str) -> None:
        assert self._lease is not None
        self._remember_ended(self._lease.run_id, how)
        self._lease = None
        self._changed.notify_all()

    def _remember_ended(self, run_id: str, how: str) -> None:
        self._ended[run_id] = how
        while len(self._ended) > _ENDED_RUNS_KEPT:
            self._ended.popitem(last=False)

    def _complete_quietly(self, run_id: str, why: str) -> None:
        try:
            self.engine.complete(run_id)
        except Exception:
            log.exception("engine complete for run %s %s failed", run_id, why)

    def _conflict(self, message: str) -> LeaseConflict:
        holder = self._lease.run_id if self._lease else None
        return LeaseConflict(message, holder=holder, hint="wait until that run completes or its lease expires")

    def _not_holding(self, run_id: str, verb: str) -> LeaseConflict:
        ended = self._ended.get(run_id)
        past = f" (its hold already {ended})" if ended else ""
        if self._lease is None:
            return LeaseConflict(f"cannot {verb}: run {run_id} does not hold node {self.node}{past}; nothing is held")
        holder = self._lease.run_id
        return LeaseConflict(
            f"cannot {verb}: node {self.node} is held by run {holder}, not by run {run_id}{past}", holder=holder
        )

    def _check_lease_s(self, lease_s: float) -> None:
        if not 0 < lease_s <= self.max_lease_s:
            raise BadInputError(f"lease_s must be in (0, {self.max_lease_s:g}] seconds, got {lease_s:g}")

    def _watch(self) -> None:
        with self._lock:
            while not self._closed:
                self._expire_if_due()
                wait = _WATCH_MAX_SLEEP_S
                if self._lease is not None:
                    wait = min(wait, max(0.0, self._lease.expires_mono - self._clock()))
                self._changed.wait(timeout=wait)


def _hold_lead_s(hold_at: datetime | None) -> float:
    """Seconds until ``hold_at`` by this agent's wall clock (0 when absent or past)."""
    if hold_at is None:
        return 0.0
    if hold_at.tzinfo is None:
        raise BadInputError(f"hold_at {hold_at.isoformat()} has no time zone", hint="send UTC, e.g. ...Z")
    lead = (hold_at - datetime.now(timezone.utc)).total_seconds()
    if lead > MAX_HOLD_LEAD_S:
        raise BadInputError(f"hold_at is {lead:.1f}s ahead of this node's clock; at most {MAX_HOLD_LEAD_S:g}s",
                            hint="synchronise the clocks of snapctl's host and this node (NTP)")
    return max(lead, 0.0)


def _check_run_id(run_id: str) -> None:
    if not _RUN_ID.fullmatch(run_id):  # fullmatch: "$" alone lets a trailing newline in
        raise BadInputError(f"invalid run id {run_id!r}", hint="letters, digits, '.', '_' and '-', at most 64")


def _free_bytes(path: Path) -> int | None:
    # The data directory may not exist yet (a fresh node); its nearest existing parent is on the same volume.
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None
