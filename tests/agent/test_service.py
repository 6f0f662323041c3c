"""Lease semantics of AgentService, with the real SQLite engine underneath."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.engines.sqlite import SqliteEngine, SqliteSettings
from node_agent.service import AgentService
from snapctl.errors import BadInputError, EngineError, LeaseConflict
from tests.agent.conftest import try_write, wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def service(engine: SqliteEngine) -> Iterator[AgentService]:
    svc = AgentService("n1", engine)
    yield svc
    svc.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timed(engine: SqliteEngine, clock: FakeClock) -> Iterator[AgentService]:
    svc = AgentService("n1", engine, clock=clock)
    yield svc
    svc.close()


def test_an_unrenewed_lease_expires_and_the_agent_completes_the_engine(
    service: AgentService, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="snapctl.agent")
    service.prepare("run-1", 0.3)
    assert not try_write(db)

    wait_until(lambda: service.stats.lease_expirations == 1, what="the lease to expire")
    assert try_write(db)
    assert service.lease is None and service.stats.held is False
    assert "lease of run run-1 expired after 0.3s without renewal: engine completed by the agent" in caplog.text


def test_renewal_keeps_the_hold_and_expiry_ends_it(timed: AgentService, clock: FakeClock, db: Path) -> None:
    timed.prepare("run-1", 10)
    clock.advance(8)
    timed.renew("run-1")
    clock.advance(8)
    assert timed.expire_if_due() is False
    assert not try_write(db)

    lease = timed.renew("run-1", 30)
    assert (lease.expires_at - lease.acquired_at).total_seconds() == pytest.approx(16 + 30)
    clock.advance(31)
    assert timed.expire_if_due() is True
    assert try_write(db)
    assert timed.complete("run-1").released is False  # its hold already ended: idempotent
    with pytest.raises(LeaseConflict, match="already expired.*nothing is held"):
        timed.renew("run-1")


def test_prepare_by_the_holder_is_idempotent_and_extends_the_lease(timed: AgentService, clock: FakeClock) -> None:
    first = timed.prepare("run-1", 10)
    clock.advance(9)
    again = timed.prepare("run-1", 10)
    assert again.state == first.state
    assert again.lease.acquired_at == first.lease.acquired_at
    assert again.lease.expires_at > first.lease.expires_at
    clock.advance(9)
    assert timed.expire_if_due() is False
    assert timed.stats.prepares == 1


def test_another_run_gets_a_conflict_naming_the_holder(service: AgentService) -> None:
    service.prepare("run-1", 60)
    with pytest.raises(LeaseConflict, match="held by run run-1") as caught:
        service.prepare("run-2", 60)
    assert caught.value.holder == "run-1"


def test_complete_and_renew_are_fenced_by_run_id(service: AgentService, db: Path) -> None:
    service.prepare("run-1", 60)
    for call in (lambda: service.complete("run-2"), lambda: service.renew("run-2")):
        with pytest.raises(LeaseConflict, match="held by run run-1, not by run run-2") as caught:
            call()
        assert caught.value.holder == "run-1"
    assert not try_write(db)

    done = service.complete("run-1")
    assert done.released is True and done.held_for_s >= 0
    assert service.complete("run-1").released is False
    assert try_write(db)
    assert service.stats.completes == 1


def test_complete_from_a_run_that_never_held_says_nothing_is_held(service: AgentService) -> None:
    with pytest.raises(LeaseConflict, match="nothing is held") as caught:
        service.complete("run-9")
    assert caught.value.holder is None
    # A run this agent never heard of: perhaps one a previous agent process held the engine for.
    assert "an engine left held" in caught.value.hint


def test_a_prepare_overtaken_by_its_own_runs_complete_never_holds(service: AgentService, db: Path) -> None:
    # A rolling-back run's complete can reach the agent before that run's prepare (two connections).
    with pytest.raises(LeaseConflict, match="nothing is held"):
        service.complete("run-1")
    with pytest.raises(LeaseConflict, match="completed this node before its prepare arrived"):
        service.prepare("run-1", 60)
    assert service.lease is None and try_write(db)
    assert service.complete("run-1").released is False  # a repeated complete is still safe
    assert service.prepare("run-2", 60).lease.run_id == "run-2"  # other runs are not affected


def test_a_failing_engine_prepare_leaves_nothing_held(db: Path) -> None:
    class FailsAfterHolding(SqliteEngine):
        def prepare(self, run_id: str):
            super().prepare(run_id)
            raise EngineError("facts could not be read")

    svc = AgentService("n1", FailsAfterHolding(SqliteSettings(path=str(db)), base_dir=db.parent))
    try:
        with pytest.raises(EngineError, match="facts could not be read"):
            svc.prepare("run-1", 60)
        assert svc.lease is None
        assert try_write(db)
        with pytest.raises(LeaseConflict, match="nothing is held"):
            svc.complete("run-1")
    finally:
        svc.close()


def test_close_completes_a_held_lease(engine: SqliteEngine, db: Path) -> None:
    svc = AgentService("n1", engine)
    svc.prepare("run-1", 60)
    svc.close()
    assert try_write(db)
    with pytest.raises(EngineError, match="shutting down"):
        svc.prepare("run-2", 60)


def test_bad_input_is_refused_before_the_engine_is_touched(service: AgentService) -> None:
    with pytest.raises(BadInputError, match="lease_s"):
        service.prepare("run-1", 0)
    with pytest.raises(BadInputError, match="lease_s"):
        service.prepare("run-1", 3601)
    with pytest.raises(BadInputError, match="invalid run id"):
        service.prepare("../etc", 10)
    assert service.stats.prepares == 0


def test_status_reports_lease_engine_paths_and_free_space(service: AgentService, db: Path) -> None:
    assert service.status().lease is None
    service.prepare("run-1", 60)
    status = service.status()
    assert status.node == "n1"
    assert status.lease.run_id == "run-1"
    assert status.engine.held is True and status.engine.reachable is True
    assert status.data_paths == [str(db.parent.resolve())]
    assert status.free_bytes > 0


def test_restore_prepare_is_refused_while_a_run_holds(service: AgentService, db: Path) -> None:
    service.prepare("run-1", 60)
    for check_only in (True, False):
        with pytest.raises(LeaseConflict, match="restore-prepare refused"):
            service.restore_prepare(str(db), check_only)
    service.complete("run-1")
    db.with_name(db.name + "-shm").write_bytes(b"")  # pretend a restore left it behind
    service.restore_prepare(str(db.parent), check_only=True)
    assert db.with_name(db.name + "-shm").exists(), "a check-only restore-prepare touches nothing"
    service.restore_prepare(str(db.parent))
    assert not db.with_name(db.name + "-shm").exists()


def test_restore_prepare_is_refused_on_an_agent_serving_a_live_database(engine: SqliteEngine, db: Path) -> None:
    live = AgentService("n1", engine, allow_restore_prepare=False)
    shm = db.with_name(db.name + "-shm")
    shm.write_bytes(b"in use")
    try:
        with pytest.raises(LeaseConflict, match="serves a live database") as refused:
            live.restore_prepare(None)
        assert "restore_target: true" in refused.value.hint
        with pytest.raises(LeaseConflict, match="serves a live database"):
            live.restore_prepare(str(db.parent), check_only=True)
        assert shm.exists(), "nothing was touched"
    finally:
        live.close()


# ---- hold_at: every node of a cluster begins its hold at one agreed instant ----------------


def test_a_prepare_with_hold_at_holds_no_earlier_than_that_instant(service: AgentService, db: Path) -> None:
    from datetime import UTC, datetime, timedelta

    hold_at = datetime.now(UTC) + timedelta(seconds=0.3)
    answer = service.prepare("run-1", 30, hold_at)
    assert answer.state.prepared_at >= hold_at
    assert not try_write(db)
    service.complete("run-1")
    assert try_write(db)


def test_a_complete_while_the_prepare_waits_for_hold_at_cancels_it(service: AgentService, db: Path) -> None:
    """A run rolling back completes every node it sent a prepare to; one still waiting for its
    hold_at must then never hold the engine."""
    import threading
    from datetime import UTC, datetime, timedelta

    outcome: list[BaseException | object] = []

    def prepare() -> None:
        try:
            outcome.append(service.prepare("run-1", 30, datetime.now(UTC) + timedelta(seconds=5)))
        except BaseException as exc:  # noqa: BLE001 - the assertion below says what was expected
            outcome.append(exc)

    waiting = threading.Thread(target=prepare)
    waiting.start()
    wait_until(lambda: "run-1" in service._waiting, what="the prepare to wait for its hold_at")
    answer = service.complete("run-1")
    waiting.join(timeout=5)

    assert answer.released is False
    assert isinstance(outcome[0], LeaseConflict) and "cancelled by its complete" in str(outcome[0])
    assert service.lease is None and try_write(db)


def test_hold_at_far_ahead_or_without_a_time_zone_is_refused(service: AgentService) -> None:
    from datetime import UTC, datetime, timedelta

    with pytest.raises(BadInputError, match=r"hold_at is 6\d\.\ds ahead of this node's clock; at most 11s "
                       r"\(snapctl's policy.hold_lead_s is at most 10s, and 1s more is allowed for clocks apart\)") as far:
        service.prepare("run-1", 30, datetime.now(UTC) + timedelta(seconds=61))
    assert "NTP" in (far.value.hint or "")
    with pytest.raises(BadInputError, match="has no time zone"):
        service.prepare("run-1", 30, datetime.now() + timedelta(seconds=1))
    assert service.lease is None


def test_the_longest_lead_snapctl_sends_is_waited_for_from_a_clock_a_little_ahead(service: AgentService) -> None:
    """policy.hold_lead_s may be up to MAX_HOLD_LEAD_S; were snapctl's clock half a second ahead of
    this node's, its hold_at would lie that much further ahead. The agent refused it (the bound was
    the lead itself), so every prepare of such a run failed; it now waits for it."""
    import threading
    from datetime import UTC, datetime, timedelta

    from node_agent.models import MAX_HOLD_LEAD_S

    outcome: list[BaseException | object] = []

    def prepare() -> None:
        try:
            outcome.append(service.prepare("run-1", 30, datetime.now(UTC) + timedelta(seconds=MAX_HOLD_LEAD_S + 0.5)))
        except BaseException as exc:  # noqa: BLE001 - the assertion below says what was expected
            outcome.append(exc)

    waiting = threading.Thread(target=prepare)
    waiting.start()
    wait_until(lambda: "run-1" in service._waiting or bool(outcome), what="the prepare to wait or be refused")
    service.complete("run-1")  # not to wait the instant out: a waiting prepare is cancelled
    waiting.join(timeout=5)
    assert isinstance(outcome[0], LeaseConflict) and "cancelled by its complete" in str(outcome[0]), outcome
