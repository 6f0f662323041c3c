"""The agent's core, free of HTTP: one engine, one prepare lease, and the dead man's switch.

A prepare is a lease. If the holding run stops renewing it (snapctl crashed, the network split),
the watcher completes the engine by itself when the lease runs out: a backup can never leave a
database frozen. Leases are fenced by run id, so a late call from a dead run cannot release a
newer run's hold. Synchronous and thread-safe: one lock, engine calls never overlap. The one
coroutine, ``wait_for_hold_at``, lets the HTTP app wait for a prepare's instant on its event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from node_agent.engines.base import Engine
from node_agent.hold_record import HoldRecords
from node_agent.hold_waits import HoldWaits, Preparing
from node_agent.lease import AgentStats, Lease, free_bytes
from node_agent.lease_refusals import behind_trigger, held_by_another, not_holding, releasing
from node_agent.left_hold import HoldBook
from node_agent.models import (
    LOST_ON_ENGINE,
    LOST_WITH_AGENT,
    MAX_LEASE_S,
    AgentStatus,
    CompleteResponse,
    EngineStatus,
    Health,
    LeaseInfo,
    PrepareResponse,
    TriggerResponse,
    VerifyFacts,
)
from node_agent.request_checks import check_run_id, hold_lead_s, restore_path
from snapctl import __version__
from snapctl.errors import BadInputError, EngineError, LeaseConflict

log = logging.getLogger("snapctl.agent")

# Runs whose hold ended, so their repeated complete is answered "already released" (not 409).
_ENDED_RUNS_KEPT = 1024
# A complete that found nothing held may have overtaken its own run's prepare (a rollback's
# complete goes out on another connection): the run is remembered so, and its prepare never holds.
_COMPLETED_FIRST = "completed before its prepare arrived"
# The watcher re-reads the clock at least this often, so an injected clock is honoured too.
_WATCH_MAX_SLEEP_S = 1.0
# An expired lease whose engine would not release (the engine unreachable) is retried this often,
# until the engine answers: a database must not stay held because it was down when the lease ran out.
_RELEASE_RETRY_S = 2.0
# How long /v1/status and /metrics wait for an engine call under way (a prepare's checkpoint can
# take minutes) before they answer from what they last saw, rather than look like a dead agent.
_STATUS_WAIT_S = 0.5
STATUS_QUERY = "status query of the engine"  # engine.details["busy"] while one has not answered
TRIGGER = "trigger of "  # engine.details["busy"] while a trigger runs, then its target
# How long a prepare waits for a trigger under way before it is refused. Not longer: a trigger runs
# minutes (DingoDB, AresDB) and cannot be stopped, and a prepare queued behind it holds once its run
# has given up (a backup's own trigger past policy.trigger_timeout_s), its barrier frozen meanwhile.
_PREPARE_BEHIND_TRIGGER_S = 1.0


class AgentService:
    def __init__(
        self,
        node: str,
        engine: Engine,
        *,
        max_lease_s: float = MAX_LEASE_S,
        clock: Callable[[], float] = time.monotonic,
        allow_restore_prepare: bool = True,
        restore_root: Path | None = None,
        engine_type: str | None = None,
        hold_records: HoldRecords | None = None,
    ) -> None:
        self.node = node
        self.engine = engine
        self.engine_type = engine_type
        self.allow_restore_prepare = allow_restore_prepare
        self.restore_root = restore_root
        # In every status, null too: snapctl tells it from an older agent's status, which has none.
        self._restore_root_text = str(restore_root) if restore_root is not None else None
        self.max_lease_s = max_lease_s
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._lease: Lease | None = None
        self._ended: OrderedDict[str, str] = OrderedDict()  # run id -> how its hold ended
        self._waiting = HoldWaits()  # prepares waiting for their hold_at, which their run's complete cancels
        self.preparing = Preparing()  # the HTTP app's prepares, from arrival to answer (in every status)
        self._stats = AgentStats()
        self._closed = False
        self._busy: tuple[str, float] | None = None  # the engine call under way, and since when
        self._last_status: tuple[EngineStatus, list[Path]] | None = None
        self._tidy_mono: float | None = None  # when the watcher next calls engine.tidy(), if it has one
        # Where the hold is recorded for the process after this one, should this one die holding
        # (docs/agent.md, "An engine left held"); None (embedded agents): nowhere.
        self._book = HoldBook(hold_records, engine, engine_type or engine.name, clock, self._engine_busy)
        if self._book.left is not None:
            # Never adopted (see left_hold). Released by the watcher, first thing: here, an engine that
            # hangs kept the port bound and unserved for its calls' timeouts. Meanwhile a prepare or
            # the dead run's complete waits for the lock, then tries the release itself (refuse_if_left).
            self._remember_ended(self._book.left.run_id, LOST_WITH_AGENT)
        self._watcher = threading.Thread(target=self._watch, name=f"lease-watcher-{node}", daemon=True)
        self._watcher.start()

    # ---- read-only ----------------------------------------------------------------------

    @property
    def stats(self) -> AgentStats:
        # No lock: counters for a scrape need not wait for an engine call under way.
        lease, left = self._lease, self._book.left
        return replace(self._stats, held=lease is not None or left is not None,
                       releasing=left is not None or lease is not None and lease.releasing)

    @property
    def lease(self) -> LeaseInfo | None:
        with self._lock:
            self._expire_if_due()
            return self._lease.info() if self._lease else None

    def health(self) -> Health:
        return Health(agent_version=__version__)

    def status(self) -> AgentStatus:
        if not self._lock.acquire(timeout=_STATUS_WAIT_S):
            return self._status_while_busy()
        try:
            self._expire_if_due()
            with self._engine_busy(STATUS_QUERY):  # a caller meanwhile learns the engine is slow to answer
                engine_status = self.engine.status()
                paths = self.engine.data_paths()
            lease = self._lease.info() if self._lease else None
            self._last_status = (engine_status, paths)
            engine_status = self._with_release_error(engine_status)
        finally:
            self._lock.release()
        return AgentStatus(
            node=self.node,
            agent_version=__version__,
            engine=engine_status,
            lease=lease,
            data_paths=[str(p) for p in paths],
            restore_root=self._restore_root_text,
            free_bytes=free_bytes(paths[0]) if paths else None,
            engine_type=self.engine_type,
            preparing=self.preparing.runs(),
        )

    def _status_while_busy(self) -> AgentStatus:
        """The status without asking the engine, which is busy with a call of its own: what it
        said last, and what it is doing now (``engine.details["busy"]``)."""
        busy, lease = self._busy, self._lease
        doing = f"{busy[0]} under way for {self._clock() - busy[1]:.1f}s" if busy else "busy"
        said = {"busy": doing}
        if busy and busy[0] == STATUS_QUERY:  # not a call that takes long by nature: the engine is slow or hung
            said["busy_status_query"] = True
        last, paths = self._last_status or (None, self.engine.data_paths())
        engine = (last.model_copy(update={"details": {**last.details, **said}}) if last is not None
                  else EngineStatus(engine=self.engine.name, reachable=True, details=said))
        return AgentStatus(node=self.node, agent_version=__version__, engine=self._with_release_error(engine),
                           lease=lease.info() if lease else None, data_paths=[str(p) for p in paths],
                           restore_root=self._restore_root_text, free_bytes=free_bytes(paths[0]) if paths else None,
                           engine_type=self.engine_type, preparing=self.preparing.runs())

    def _with_release_error(self, engine: EngineStatus) -> EngineStatus:
        """An expired lease the engine would not release is said in ``details["releasing"]``: the
        wire's lease has no field for it, and a snapctl of an older version must still read it. So
        is what the hold record says (a left hold, a record moved aside as unreadable)."""
        lease, said = self._lease, self._book.details()
        if self._book.left is None and lease is not None and lease.releasing:
            said["releasing"] = (f"the lease of run {lease.run_id} expired and the engine would not release: "
                                 f"{lease.release_error}")
        return engine.model_copy(update={"details": {**engine.details, **said}}) if said else engine

    # ---- the lease ----------------------------------------------------------------------

    def prepare(self, run_id: str, lease_s: float, hold_at: datetime | None = None) -> PrepareResponse:
        """Hold the engine, from ``hold_at`` on when it is ahead (waiting in this thread; the HTTP
        app waits with ``wait_for_hold_at`` instead, then calls this without it)."""
        lead = self._lead_before_hold(run_id, lease_s, hold_at)
        if lead > 0 and not self._waiting.wait(run_id, lead):
            raise self._cancelled_before_hold(run_id)
        with self._locked_unless_triggering(run_id):
            self._refuse_if_completed_first(run_id)
            if self._closed:
                raise EngineError(f"the agent of node {self.node} is shutting down", hint="retry when it is back")
            self._expire_if_due()
            self._book.refuse_if_left(self.node, "prepare")
            now = self._clock()
            if self._lease is not None:
                if self._lease.run_id != run_id:
                    raise held_by_another(self._lease, f"node {self.node} is already held by run {self._lease.run_id}")
                if self._lease.releasing:
                    raise releasing(self.node, self._lease, "prepare")
                self._lease.expires_mono, self._lease.lease_s = now + lease_s, lease_s
                self._changed.notify_all()
                return PrepareResponse(run_id=run_id, lease=self._lease.info(), state=self._lease.state)
            record = self._book.write(run_id, lease_s)  # before the engine is asked: refused if it cannot be
            try:
                with self._engine_busy(f"prepare of run {run_id}"):
                    state = self.engine.prepare(run_id)
            except BaseException:
                released = self._complete_quietly(run_id, "after a failed prepare")
                if hasattr(self.engine, "tidy"):  # what the failed prepare left may come later
                    self._tidy_mono = self._clock() + _RELEASE_RETRY_S  # its record goes when tidy is done
                elif released:
                    self._book.remove()
                raise
            self._book.add_facts(record, run_id)
            done = self._clock()
            self._stats.prepares += 1
            self._stats.last_prepare_s = done - now
            self._lease = Lease(run_id, lease_s, datetime.now(timezone.utc), done, done + lease_s, state)
            self._ended.pop(run_id, None)
            self._changed.notify_all()
            log.info("prepared for run %s (lease %.1fs, engine took %.3fs)", run_id, lease_s, done - now)
            return PrepareResponse(run_id=run_id, lease=self._lease.info(), state=state)

    async def wait_for_hold_at(self, run_id: str, lease_s: float, hold_at: datetime | None) -> None:
        """The wait of ``prepare(run_id, lease_s, hold_at)`` for its instant, as a coroutine: it
        occupies no thread. The caller then calls ``prepare(run_id, lease_s)``. What prepare would
        refuse at once (a bad lease, an instant too far ahead) is refused here first, without waiting."""
        lead = self._lead_before_hold(run_id, lease_s, hold_at)
        if lead > 0 and not await self._waiting.wait_async(run_id, lead):
            raise self._cancelled_before_hold(run_id)

    def renew(self, run_id: str, lease_s: float | None = None) -> LeaseInfo:
        check_run_id(run_id)
        if lease_s is not None:
            self._check_lease_s(lease_s)
        with self._lock:
            self._expire_if_due()
            lease = self._lease
            if lease is None or lease.run_id != run_id:
                raise not_holding(self.node, self._lease, self._ended.get(run_id), run_id, "renew")
            if lease.releasing:
                raise releasing(self.node, lease, "renew")
            lease.lease_s = lease_s or lease.lease_s
            lease.expires_mono = self._clock() + lease.lease_s
            self._changed.notify_all()
            return lease.info()

    def complete(self, run_id: str) -> CompleteResponse:
        check_run_id(run_id)
        with self._lock:
            self._expire_if_due()
            lease = self._lease
            if lease is None or lease.run_id != run_id:
                if self._book.left is not None and self._book.left.run_id == run_id:
                    # Tried now. Not released: 409 naming it, so that a rollback does not count it released.
                    self._book.refuse_if_left(self.node, "complete")
                if self._waiting.cancel(run_id):  # its prepare waits for hold_at: it will not hold
                    self._remember_ended(run_id, "cancelled before it began")
                    return CompleteResponse(run_id=run_id, released=False)
                if run_id in self._ended:
                    return CompleteResponse(run_id=run_id, released=False, ended=self._ended[run_id])
                if lease is None and (left := self._release_left_hold(run_id)) is not None:
                    self._remember_ended(run_id, "completed" if left else LOST_ON_ENGINE)
                    return CompleteResponse(run_id=run_id, released=left, ended=None if left else LOST_ON_ENGINE)
                # Built first: once remembered, the run would read as one whose hold already ended.
                refusal = not_holding(self.node, self._lease, self._ended.get(run_id), run_id, "complete")
                if lease is None:
                    self._remember_ended(run_id, _COMPLETED_FIRST)
                raise refusal
            started = self._clock()
            # If the engine fails to release, the lease stays so a retry (or expiry) tries again.
            with self._engine_busy(f"complete of run {run_id}"):
                lost = self.engine.complete(run_id) is False
            done = self._clock()
            self._end_lease("completed" if not lost else LOST_ON_ENGINE)
            self._stats.completes += 1
            self._stats.last_complete_s = done - started
            if lost:
                # released: false fails the run: the hold ended behind its back (an engine restart).
                log.warning("run %s: the engine's hold had already ended when complete came", run_id)
                return CompleteResponse(run_id=run_id, released=False, ended=LOST_ON_ENGINE)
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
            with self._engine_busy(f"{TRIGGER}{target or 'the engine snapshot'}"):
                return TriggerResponse(jobs=self.engine.trigger(target))

    def restore_prepare(self, path: str | Path | None, check_only: bool = False) -> None:
        """``check_only``: refuse as restore-prepare would, and act on nothing: a lease that expired
        is not released here (the real call does that first), so only one still running refuses."""
        if not self.allow_restore_prepare:
            raise LeaseConflict(
                f"node {self.node}: restore-prepare refused: this agent serves a live database",
                hint="run it on a scratch agent beside the restored disks, configured with restore_target: true",
            )
        inside = restore_path(path, self.engine.data_paths(), self.restore_root) if path else None
        if check_only:
            if (left := self._book.left) is not None:
                raise left.refusal(self.node, "restore-prepare")
            lease = self._lease
            if lease is not None and (lease.releasing or self._clock() < lease.expires_mono):
                raise held_by_another(lease, f"node {self.node} is held by run {lease.run_id}: restore-prepare refused")
            return
        with self._lock:
            self._expire_if_due()
            self._book.refuse_if_left(self.node, "restore-prepare")
            if self._lease is not None:
                raise held_by_another(self._lease,
                                      f"node {self.node} is held by run {self._lease.run_id}: restore-prepare refused")
            with self._engine_busy("restore-prepare"):
                self.engine.restore_prepare(inside)

    def verify(self) -> VerifyFacts:
        with self._lock:
            self._expire_if_due()
            with self._engine_busy("verify"):
                return self.engine.verify()

    def close(self) -> str | None:
        """Complete any held lease, stop the watcher, close the engine. Returns the run whose hold
        the engine would not release (its record stays, for the next start), or None."""
        still_held = None
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            if self._lease is not None:
                run_id = self._lease.run_id
                log.warning("agent stopping while run %s holds the engine: completing it", run_id)
                try:
                    self.engine.complete(run_id)
                except Exception as exc:  # noqa: BLE001 - reported, and the agent stops all the same
                    still_held = run_id
                    later = "the agent's next start releases it" if self._book.records else "released by hand"
                    log.error("agent stopping, and the engine would not release run %s: %s; it stays held until "
                              "%s (docs/agent.md, 'an engine left held')", run_id, exc, later)
                else:
                    self._stats.completes += 1
                self._end_lease("released on shutdown" if still_held is None else "left held on shutdown")
            if self._book.left is not None:  # its record stays: the next start tries again
                still_held = still_held or self._book.left.run_id
            self._changed.notify_all()
        self._watcher.join(timeout=5)
        self.engine.close()
        return still_held

    # ---- hold_at: checked, and waited for, without the lock --------------------------------

    def _lead_before_hold(self, run_id: str, lease_s: float, hold_at: datetime | None) -> float:
        """Seconds until a prepare's hold may begin, once what prepare checks up front has passed."""
        check_run_id(run_id)
        self._check_lease_s(lease_s)
        lead = hold_lead_s(hold_at)
        if lead > 0:
            self._refuse_if_completed_first(run_id)
            log.debug("prepare of run %s waits %.3fs for its hold_at", run_id, lead)
        return lead

    def _refuse_if_completed_first(self, run_id: str) -> None:
        # Also read before a prepare waits, without the lock (an engine call may hold it for
        # minutes): refused at once rather than after the wait. Under the lock, it is the check that counts.
        if self._ended.get(run_id) == _COMPLETED_FIRST:
            log.info("prepare of run %s refused: its complete came first; nothing is held", run_id)
            raise LeaseConflict(f"node {self.node}: run {run_id} completed this node before its prepare "
                                "arrived (a run rolling back); nothing is held")

    def _cancelled_before_hold(self, run_id: str) -> LeaseConflict:
        log.info("prepare of run %s cancelled by its complete before its hold began", run_id)
        return LeaseConflict(f"node {self.node}: the prepare of run {run_id} was cancelled by its "
                             "complete before the hold began; nothing is held")

    @contextmanager
    def _locked_unless_triggering(self, run_id: str) -> Iterator[None]:
        """The lock, for a prepare; refused while a trigger keeps the engine busy (any other call is waited for)."""
        if not self._lock.acquire(timeout=_PREPARE_BEHIND_TRIGGER_S):
            if (busy := self._busy) is not None and busy[0].startswith(TRIGGER):
                log.info("prepare of run %s refused: %s under way for %.1fs", run_id, busy[0], self._clock() - busy[1])
                raise behind_trigger(run_id, self._clock() - busy[1])
            self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    # ---- internals (call with the lock held) --------------------------------------------

    def _expire_if_due(self) -> bool:
        lease = self._lease
        now = self._clock()
        if lease is None or now < lease.expires_mono or (lease.releasing and now < lease.retry_mono):
            return False
        try:
            with self._engine_busy(f"release of run {lease.run_id}, whose lease expired"):
                self.engine.complete(lease.run_id)
        except Exception as exc:  # noqa: BLE001 - the engine stays held: retried until it answers
            if not lease.releasing:
                self._stats.lease_expirations += 1
                log.error("lease of run %s expired after %.1fs without renewal, and the engine would not "
                          "release: %s; retrying every %gs until it does", lease.run_id, lease.lease_s, exc,
                          _RELEASE_RETRY_S)
            lease.release_error = str(exc)
            lease.retry_mono = self._clock() + _RELEASE_RETRY_S
            return False
        if lease.releasing:
            log.warning("engine released for run %s, %.1fs after its lease expired", lease.run_id,
                        self._clock() - lease.expires_mono)
        else:
            self._stats.lease_expirations += 1
            log.warning("lease of run %s expired after %.1fs without renewal: engine completed by the agent",
                        lease.run_id, lease.lease_s)
        self._end_lease("expired")
        return True

    @contextmanager
    def _engine_busy(self, doing: str) -> Iterator[None]:
        self._busy = (doing, self._clock())
        try:
            yield
        finally:
            self._busy = None

    def _end_lease(self, how: str) -> None:
        assert self._lease is not None
        if how != "left held on shutdown":  # kept: the next start releases it
            self._book.remove()
        self._remember_ended(self._lease.run_id, how)
        self._lease = None
        self._changed.notify_all()

    def _remember_ended(self, run_id: str, how: str) -> None:
        self._ended[run_id] = how
        while len(self._ended) > _ENDED_RUNS_KEPT:
            self._ended.popitem(last=False)

    def _complete_quietly(self, run_id: str, why: str) -> bool:
        try:
            self.engine.complete(run_id)
        except Exception:
            log.exception("engine complete for run %s %s failed", run_id, why)
            return False
        return True

    def _release_left_hold(self, run_id: str) -> bool | None:
        """What the engine kept held for ``run_id`` from a killed agent process, released: ``Engine.complete``."""
        if (release := getattr(self.engine, "release_left_hold", None)) is None:
            return None
        try:
            with self._engine_busy(f"complete of run {run_id}"):
                return release(run_id)
        except EngineError as exc:  # answered as before: nothing held here, and the hint says where to look
            log.warning("complete of run %s: could not ask the engine for a hold a killed agent left: %s", run_id, exc)
            if hasattr(self.engine, "tidy"):  # that agent's request may still hold: asked again until it answers
                self._tidy_mono = self._clock() + _RELEASE_RETRY_S
            return None

    def _check_lease_s(self, lease_s: float) -> None:
        if not 0 < lease_s <= self.max_lease_s:
            raise BadInputError(f"lease_s must be in (0, {self.max_lease_s:g}] seconds, got {lease_s:g}")

    def _tidy_if_due(self) -> None:
        """Call ``engine.tidy()`` until it has nothing left to watch for: with no lease, nobody
        else would release what a failed prepare's request made late on the server."""
        if self._lease is not None or self._tidy_mono is None or self._clock() < self._tidy_mono:
            return
        try:
            with self._engine_busy("release of what a failed prepare may have left"):
                again = self.engine.tidy()  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - the engine is down: tried again, as a lease's release is
            log.warning("engine tidy after a failed prepare failed: %s; retrying in %gs", exc, _RELEASE_RETRY_S)
            again = True
        self._tidy_mono = self._clock() + _RELEASE_RETRY_S if again else None
        if not again:
            self._book.remove()  # the failed prepare's record: nothing of it is left to watch for

    def _watch(self) -> None:
        with self._lock:
            while not self._closed:
                self._expire_if_due()
                self._tidy_if_due()
                if self._book.due():
                    self._book.release_left()
                wait = _WATCH_MAX_SLEEP_S
                if (lease := self._lease) is not None:
                    due = lease.retry_mono if lease.releasing else lease.expires_mono
                    wait = min(wait, max(0.0, due - self._clock()))
                self._changed.wait(timeout=wait)

