"""QuestDB holds the agent did not see through: a create the server runs after the client gave up,
and a checkpoint another client took once the run's own had ended. Against the /exec fake."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from node_agent.engines.questdb import QuestDBEngine, QuestDBSettings
from node_agent.service import AgentService
from snapctl.errors import EngineBusy, EngineError
from snapctl.timestamps import utc_text
from tests.fakes.questdb import FakeQuestDB
from tests.realdb.procs import wait_until


@pytest.fixture
def fake() -> Iterator[FakeQuestDB]:
    with FakeQuestDB() as server:
        server.tables["trades"] = 10
        yield server


def engine_for(fake: FakeQuestDB, tmp_path: Path, timeout_s: float = 2, **settings: object) -> QuestDBEngine:
    (tmp_path / "qdb").mkdir(exist_ok=True)
    return QuestDBEngine(QuestDBSettings(root=str(tmp_path / "qdb"), url=fake.url, timeout_s=timeout_s,
                                         **settings), base_dir=tmp_path)


def releases(fake: FakeQuestDB) -> int:
    return fake.queries.count("CHECKPOINT RELEASE")


def test_a_create_the_server_runs_after_the_agent_gave_up_is_released_by_the_agent(fake, tmp_path) -> None:
    fake.late_creates = 1.5
    service = AgentService("q1", engine_for(fake, tmp_path, timeout_s=0.5))
    try:
        with pytest.raises(EngineError, match="did not answer"):
            service.prepare("r1", 2)  # and the agent completes r1 at once: nothing is held yet
        assert not fake.held
        wait_until(lambda: releases(fake) == 1, timeout_s=10, what="the agent's release of the late checkpoint")
        assert not fake.held and service.lease is None
        fake.late_creates = 0
        assert service.prepare("r2", 5).lease.run_id == "r2"
        assert service.complete("r2").released and not fake.held
    finally:
        service.close()


def test_the_agent_keeps_looking_for_a_late_create_while_the_server_does_not_answer(fake, tmp_path, caplog) -> None:
    fake.late_creates = 2.0
    service = AgentService("q1", engine_for(fake, tmp_path, timeout_s=0.5))
    try:
        with pytest.raises(EngineError, match="did not answer"):
            service.prepare("r1", 2)
        with fake.hang():  # the create still runs; every other request goes unanswered meanwhile
            wait_until(lambda: fake.held, timeout_s=10, what="the late checkpoint")
            wait_until(lambda: "engine tidy after a failed prepare failed" in caplog.text, timeout_s=10,
                       what="a tidy that failed")
        wait_until(lambda: releases(fake) == 1, timeout_s=10, what="the release once the server answers")
        assert not fake.held
    finally:
        service.close()


def test_a_late_create_that_a_complete_did_not_see_is_released_by_the_next_prepare(fake, tmp_path) -> None:
    fake.late_creates = 2.0  # the checkpoint starts 1.5 s after the client gave up
    engine = engine_for(fake, tmp_path, timeout_s=0.5)
    try:
        with pytest.raises(EngineError, match="did not answer"):
            engine.prepare("r1")
        assert engine.complete("r1") is None and not fake.held  # nothing to release yet
        wait_until(lambda: fake.held, timeout_s=10, what="the late checkpoint")
        fake.late_creates = 0
        engine.prepare("r2")  # not "held by a checkpoint that this agent did not make"
        assert releases(fake) == 1 and fake.held
        assert engine.complete("r2") is None and not fake.held
    finally:
        engine.close()


def test_a_prepare_meeting_its_own_late_create_under_way_waits_for_it_and_releases_it(fake, tmp_path) -> None:
    fake.late_creates = 1.5
    engine = engine_for(fake, tmp_path, timeout_s=1)
    try:
        with pytest.raises(EngineError, match="did not answer"):
            engine.prepare("r1")
        fake.late_creates = 0
        # Its create meets "Another checkpoint command is in progress" (r1's), then r1's checkpoint.
        engine.prepare("r2")
        assert releases(fake) == 1 and fake.held
        assert engine.complete("r2") is None and not fake.held
    finally:
        engine.close()


def test_complete_leaves_alone_a_checkpoint_another_client_took_after_ours_ended(fake, tmp_path) -> None:
    service = AgentService("q1", engine_for(fake, tmp_path))
    try:
        service.prepare("r1", 30)
        fake.held_since = None  # another client's CHECKPOINT RELEASE ends ours (the state is the server's)
        time.sleep(0.01)
        fake.hold_as_someone_else()  # ...and that client starts its own backup
        theirs = fake.held_since
        assert service.status().engine.held_by is not None
        answer = service.complete("r1")
        assert answer.released is False, "the run's checkpoint had ended: its snapshot may be inconsistent"
        assert fake.held and fake.held_since == theirs and releases(fake) == 0
        fake.held_since = None
        assert service.prepare("r2", 30).lease.run_id == "r2"
        assert service.complete("r2").released and not fake.held
    finally:
        service.close()


def test_its_start_unread_complete_leaves_alone_a_checkpoint_begun_after_its_create(fake, tmp_path, caplog) -> None:
    # The status read after the create failed, and every checkpoint held at complete was taken for
    # the run's: another client's backup, begun once ours had ended, was released in its middle.
    fake.lost_held_status_reads = 1
    engine = engine_for(fake, tmp_path)
    try:
        engine.prepare("r1")
        assert "could not read checkpoint_status() after the create" in caplog.text
        assert engine.hold_facts("r1")["server_since"] is None
        fake.held_since = None  # another client's CHECKPOINT RELEASE ends ours, or a restart does
        time.sleep(1.2)  # past the create's answer and the 1 s allowed for clocks
        fake.hold_as_someone_else()
        theirs = fake.held_since
        assert engine.status().held_by == "another questdb client (a checkpoint this agent did not make)"
        assert engine.complete("r1") is False, "the run's checkpoint had ended: its snapshot may be inconsistent"
        assert "another client's checkpoint (since" in caplog.text and "left alone" in caplog.text
        assert fake.held_since == theirs and releases(fake) == 0
    finally:
        engine.close()


@pytest.mark.parametrize("offset_s", [-0.5, 0.5])
def test_its_start_unread_complete_still_releases_the_checkpoint_its_create_made(fake, tmp_path, offset_s) -> None:
    fake.lost_held_status_reads = 1
    fake.clock_offset = timedelta(seconds=offset_s)  # the server's clock behind or ahead of the agent's
    engine = engine_for(fake, tmp_path)
    try:
        engine.prepare("r1")
        assert engine.hold_facts("r1")["server_since"] is None and fake.lost_held_status_reads == 0
        assert engine.status().held_by is None
        assert engine.complete("r1") is None
        assert not fake.held and releases(fake) == 1
    finally:
        engine.close()


def test_a_create_that_never_reached_the_server_leaves_another_clients_checkpoint_alone(fake, tmp_path) -> None:
    # A create refused at connect was taken as one whose answer was lost: for 10 minutes any
    # checkpoint begun since was released as its late run, a DBA's in the middle of their backup.
    fake.down_after = "select tablename,rowcount from table_storage()"  # down just before the create
    service = AgentService("q1", engine_for(fake, tmp_path))
    try:
        with pytest.raises(EngineError, match="unreachable"):
            service.prepare("r1", 2)
        assert fake.queries[-1] != "CHECKPOINT CREATE"  # it never got there
        fake.listen_again()
        fake.hold_as_someone_else()  # the DBA's own backup, seconds later
        theirs = fake.held_since
        assert service.status().engine.held_by == "another questdb client (a checkpoint this agent did not make)"
        time.sleep(2.5)  # past the watcher's next look (every 2 s after a failed prepare)
        with pytest.raises(EngineBusy, match="did not make"):
            service.prepare("r2", 2)
        assert fake.held_since == theirs and releases(fake) == 0
    finally:
        service.close()


def test_a_checkpoint_begun_past_the_late_create_window_is_not_taken_for_a_lost_create(fake, tmp_path) -> None:
    # The create reached the server and its answer was lost, but the server never ran it. A
    # checkpoint begun later than late_create_window_s after it is another client's.
    fake.lost_creates = 1
    service = AgentService("q1", engine_for(fake, tmp_path, late_create_window_s=1))
    try:
        with pytest.raises(EngineError, match="unreachable"):
            service.prepare("r1", 2)
        assert service.status().engine.details["unconfirmed_create"]["run_id"] == "r1"
        time.sleep(2.2)  # the window and the 1 s allowed for clocks
        fake.hold_as_someone_else()
        theirs = fake.held_since
        assert service.status().engine.held_by == "another questdb client (a checkpoint this agent did not make)"
        with pytest.raises(EngineBusy, match="did not make"):
            service.prepare("r2", 2)
        assert fake.held_since == theirs and releases(fake) == 0
    finally:
        service.close()


def test_a_checkpoint_begun_within_the_late_create_window_is_still_taken_for_a_lost_create(fake, tmp_path) -> None:
    fake.lost_creates = 1
    service = AgentService("q1", engine_for(fake, tmp_path, late_create_window_s=30))
    try:
        with pytest.raises(EngineError, match="unreachable"):
            service.prepare("r1", 2)
        fake.hold_as_someone_else()  # as the create would, had it run late: the server cannot tell them apart
        wait_until(lambda: releases(fake) == 1, timeout_s=10, what="the watcher's release")
        assert not fake.held
    finally:
        service.close()


# ---- release_recorded_hold: what an agent process that died left, from its hold record ----------

def test_a_record_without_the_checkpoints_start_leaves_one_begun_after_its_prepare_alone(fake, tmp_path) -> None:
    # server_since is null when the status read after the create failed: the start is then bounded
    # by the prepare, not taken as "any checkpoint" (another client's backup was released).
    engine = engine_for(fake, tmp_path, late_create_window_s=60)
    try:
        fake.hold_as_someone_else()
        theirs = fake.held_since
        began = theirs - timedelta(hours=1)
        said = engine.release_recorded_hold("run-dead", began, {"created": True, "server_since": None})
        assert "another client's, left alone" in said and "not while its create" in said
        assert fake.held_since == theirs and releases(fake) == 0
    finally:
        engine.close()


def test_a_record_without_the_checkpoints_start_releases_the_one_its_prepare_made(fake, tmp_path) -> None:
    engine = engine_for(fake, tmp_path)
    try:
        began = datetime.now(UTC)
        fake.hold_as_someone_else()  # as the dead run's create did, a moment after its prepare began
        said = engine.release_recorded_hold("run-dead", began, {"created": True, "server_since": None})
        assert said.startswith("released its questdb checkpoint") and not fake.held and releases(fake) == 1
    finally:
        engine.close()


def test_a_record_of_when_the_create_ran_leaves_alone_a_checkpoint_begun_later_within_the_window(fake, tmp_path) -> None:
    # The status read after the create failed, so the record has no start; it has when the create
    # ran, which fences the release as it fences complete(): a checkpoint another client took ten
    # seconds on, well inside late_create_window_s, is not the run's.
    engine = engine_for(fake, tmp_path, late_create_window_s=60)
    try:
        fake.lost_held_status_reads = 1
        engine.prepare("run-dead")
        facts = engine.hold_facts("run-dead")
        assert facts["server_since"] is None and len(facts["create_ran"]) == 2
        began = datetime.now(UTC) - timedelta(seconds=1)
        # The run's checkpoint ended (a restart, another client's release) and another client's began.
        fake.held_since = datetime.now(UTC) + timedelta(seconds=10)
        theirs = fake.held_since
        fresh = engine_for(fake, tmp_path, late_create_window_s=60)  # the agent started after the death
        try:
            said = fresh.release_recorded_hold("run-dead", began, facts)
        finally:
            fresh.close()
        assert "another client's, left alone" in said and fake.held_since == theirs and fake.held
    finally:
        engine.close()


def test_a_recorded_create_interval_outside_its_prepare_is_no_fence(fake, tmp_path) -> None:
    # A create runs after its prepare began and within late_create_window_s: an interval recorded
    # elsewhere (an edited record, a clock stepped between the two writes) falls back to that window.
    engine = engine_for(fake, tmp_path, late_create_window_s=60)
    try:
        began = datetime.now(UTC)
        fake.hold_as_someone_else()  # as the dead run's create did, a moment after its prepare began
        hour_before = [utc_text(began - timedelta(hours=1)), utc_text(began - timedelta(hours=1, seconds=-1))]
        said = engine.release_recorded_hold("run-dead", began, {"created": True, "server_since": None,
                                                                 "create_ran": hour_before})
        assert said.startswith("released its questdb checkpoint") and not fake.held and releases(fake) == 1
    finally:
        engine.close()


@pytest.mark.parametrize("version", ["7.3.10", "9.3.2"])
def test_a_checkpoint_whose_start_the_server_does_not_say_is_left_alone_and_said(tmp_path, version) -> None:
    with FakeQuestDB(version) as fake:
        if version == "9.3.2":
            fake.started_at_unknown = True  # held, but no start in checkpoint_status()
        fake.held_since = datetime.now(UTC)
        engine = engine_for(fake, tmp_path)
        try:
            with pytest.raises(EngineError, match="cannot be told from another client's: left alone") as caught:
                engine.release_recorded_hold("run-dead", datetime.now(UTC), {"created": True, "server_since": None})
            assert "release it by hand" in str(caught.value)
            assert fake.held and not any(q in fake.queries for q in ("CHECKPOINT RELEASE", "SNAPSHOT COMPLETE"))
        finally:
            engine.close()
