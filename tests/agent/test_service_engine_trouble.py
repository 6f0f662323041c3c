"""The lease when the engine will not release, and the status while an engine call is under way.

SQLite underneath, with the one call each case needs made to fail or to wait, as a remote
engine's does when it cannot be reached or takes minutes to checkpoint. The real Tarantool case
is in tests/engines_real/test_tarantool.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.engines.sqlite import SqliteEngine, SqliteSettings
from node_agent.service import _RELEASE_RETRY_S, AgentService
from snapctl.errors import EngineBusy, EngineError, LeaseConflict
from snapctl.health import NodeProbe, assess_node
from tests.agent.conftest import try_write
from tests.agent.test_service import FakeClock


class GoesDown(SqliteEngine):
    """Releases fail while ``down``: the engine cannot be reached."""

    down = False

    def complete(self, run_id: str) -> None:
        if self.down:
            raise EngineError("engine at 127.0.0.1:3301 is unreachable: connection refused")
        super().complete(run_id)


class SlowPrepare(SqliteEngine):
    """A prepare that waits for the test's word, as a long checkpoint does."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.entered, self.proceed = threading.Event(), threading.Event()

    def prepare(self, run_id: str):
        self.entered.set()
        assert self.proceed.wait(30), "the test never let the prepare proceed"
        return super().prepare(run_id)


class Waits(SqliteEngine):
    """Its trigger and verify wait for the test's word, as a DingoDB trigger does for minutes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.entered, self.proceed = threading.Event(), threading.Event()

    def trigger(self, target):
        self.entered.set()
        assert self.proceed.wait(30), "the test never let the trigger proceed"
        return super().trigger(target)

    def verify(self):
        self.entered.set()
        assert self.proceed.wait(30), "the test never let the verify proceed"
        return super().verify()


@pytest.fixture
def flaky(db: Path) -> Iterator[GoesDown]:
    engine = GoesDown(SqliteSettings(path=db.name, timeout_s=5), base_dir=db.parent)
    yield engine
    engine.down = False
    engine.close()


def test_an_expired_lease_the_engine_will_not_release_stays_held_and_is_retried_until_it_does(
    flaky: GoesDown, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="snapctl.agent")
    clock = FakeClock()
    svc = AgentService("n1", flaky, clock=clock)
    try:
        svc.prepare("run-1", 10)
        flaky.down = True
        clock.advance(11)
        assert svc.expire_if_due() is False
        assert not try_write(db)  # still held: the agent does not pretend it let go
        assert svc.lease is not None and svc.stats.lease_expirations == 1
        assert "engine would not release: engine at 127.0.0.1:3301 is unreachable" in caplog.text
        assert "engine completed by the agent" not in caplog.text

        with pytest.raises(LeaseConflict, match="held by run run-1, whose lease expired; the engine would not "
                                                "release") as conflict:
            svc.prepare("run-2", 10)
        assert conflict.value.holder == "run-1"
        with pytest.raises(LeaseConflict, match="lease of run run-1 on node n1 expired; the agent is releasing"):
            svc.renew("run-1")
        findings = assess_node(NodeProbe("n1", status=svc.status()))
        assert [(f.severity, f.message.split(":")[0]) for f in findings] == [("critical", "engine still held")]

        flaky.down = False
        assert svc.expire_if_due() is False  # not before the retry is due
        clock.advance(_RELEASE_RETRY_S)
        assert svc.expire_if_due() is True
        assert try_write(db) and svc.lease is None and svc.stats.lease_expirations == 1
        assert "engine released for run run-1" in caplog.text
        assert svc.prepare("run-2", 10).lease.run_id == "run-2"
    finally:
        svc.close()


def test_the_expired_runs_own_complete_releases_an_engine_that_answers_again(flaky: GoesDown, db: Path) -> None:
    clock = FakeClock()
    svc = AgentService("n1", flaky, clock=clock)
    try:
        svc.prepare("run-1", 10)
        flaky.down = True
        clock.advance(11)
        svc.expire_if_due()
        with pytest.raises(EngineError, match="unreachable"):
            svc.complete("run-1")
        flaky.down = False
        assert svc.complete("run-1").released is True
        assert try_write(db) and svc.lease is None
    finally:
        svc.close()


def test_an_agent_stopping_with_an_engine_that_will_not_release_says_it_is_still_held(
    flaky: GoesDown, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    svc = AgentService("n1", flaky)
    svc.prepare("run-1", 60)
    flaky.down = True
    assert svc.close() == "run-1"
    assert "the engine would not release run run-1" in caplog.text and "stays held" in caplog.text
    flaky.down = False
    flaky.complete("run-1")
    assert try_write(db)


def test_status_answers_while_a_prepare_is_under_way_from_what_the_engine_said_last(db: Path) -> None:
    engine = SlowPrepare(SqliteSettings(path=db.name, timeout_s=5), base_dir=db.parent)
    svc = AgentService("n1", engine)
    before = svc.status()
    preparing = threading.Thread(target=svc.prepare, args=("run-1", 60))
    preparing.start()
    try:
        assert engine.entered.wait(10)
        during = svc.status()
        busy = during.engine.details.pop("busy")
        assert busy.startswith("prepare of run run-1 under way for ")
        assert during.engine == before.engine and during.lease is None
        assert during.data_paths == before.data_paths
        findings = assess_node(NodeProbe("n1", status=svc.status()), for_backup=True)
        assert [f.severity for f in findings] == ["critical"]  # a backup now would only meet a 409
        assert findings[0].message.startswith("engine busy: prepare of run run-1 under way for ")
        assert svc.stats.held is False  # the counters do not wait either
    finally:
        engine.proceed.set()
        preparing.join(10)
    after = svc.status()
    assert "busy" not in after.engine.details and after.lease is not None and after.lease.run_id == "run-1"
    svc.close()
    engine.close()


def test_a_prepare_while_a_trigger_is_under_way_is_refused_at_once_and_holds_nothing(db: Path) -> None:
    # It waited for the lock behind the trigger (minutes on DingoDB), past the prepare's own timeout,
    # and then held the engine for a run that had given up on it.
    engine = Waits(SqliteSettings(path=db.name, timeout_s=5), base_dir=db.parent)
    svc = AgentService("n1", engine)
    triggering = threading.Thread(target=svc.trigger, args=(None,))
    triggering.start()
    try:
        assert engine.entered.wait(10)
        with pytest.raises(EngineBusy, match=r"the engine's own snapshot \(a trigger\) is still under way, for \d+s "
                                             r"now: prepare of run run-1 refused: nothing is held") as busy:
            svc.prepare("run-1", 60)
        assert "raise policy.trigger_timeout_s" in busy.value.hint
        assert not svc.stats.held and try_write(db)  # stats: the lease property would wait for the trigger
    finally:
        engine.proceed.set()
        triggering.join(10)
    assert svc.prepare("run-1", 60).lease.run_id == "run-1"  # once it is done, the engine holds as ever
    svc.close()
    engine.close()


def test_a_prepare_behind_another_engine_call_waits_for_it_and_holds(db: Path) -> None:
    engine = Waits(SqliteSettings(path=db.name, timeout_s=5), base_dir=db.parent)
    svc = AgentService("n1", engine)
    verifying = threading.Thread(target=svc.verify)
    verifying.start()
    try:
        assert engine.entered.wait(10)
        preparing = threading.Thread(target=svc.prepare, args=("run-1", 60))
        preparing.start()
        preparing.join(1.5)  # past the wait a prepare gives a trigger: still waiting, not refused
        assert preparing.is_alive()
    finally:
        engine.proceed.set()
        verifying.join(10)
    preparing.join(10)
    assert svc.lease is not None and svc.lease.run_id == "run-1" and not try_write(db)
    svc.close()
    engine.close()
