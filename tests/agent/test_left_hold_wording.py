"""What is said of a hold a dead process left, by whose process it was: a snapctl-agent's record
names the agent process before this one; an embedded agent's (snapctl/embedded_records.py) names
an earlier snapctl, which the agent lived in. Real AgentService, QuestDB engine and hold records,
against the /exec fake."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from node_agent.engines.questdb import QuestDBEngine, QuestDBSettings
from node_agent.hold_record import HoldRecord, HoldRecords
from node_agent.service import AgentService
from snapctl.errors import LeaseConflict
from tests.fakes.questdb import FakeQuestDB
from tests.realdb.procs import wait_until

AGENT = "the agent process before this one died while run r1 held the engine"
EMBEDDED = "an earlier snapctl process died while run r1 held the engine through its embedded agent"


@pytest.fixture
def fake() -> Iterator[FakeQuestDB]:
    with FakeQuestDB() as server:
        server.tables["trades"] = 10
        yield server


def _left_by_a_dead_process(fake: FakeQuestDB, tmp_path: Path, embedded: bool) -> HoldRecords:
    """A checkpoint of run r1 on the server and its record, as a process killed while it held leaves them."""
    records = HoldRecords(tmp_path / "state", "q1", "questdb", [tmp_path / "qdb"], embedded=embedded)
    records.directory.mkdir(mode=0o700)
    began = datetime.now(UTC)
    fake.hold_as_someone_else()  # the dead run's create, a moment after its prepare began
    records.write(HoldRecord("r1", "questdb", began, began + timedelta(minutes=10),
                             {"created": True, "server_since": None}))
    return records


@pytest.mark.parametrize("embedded", [False, True], ids=["snapctl-agent", "embedded"])
def test_a_left_hold_is_said_to_be_left_by_the_process_that_died(fake, tmp_path, caplog, embedded) -> None:
    # An embedded agent's left hold was said to be left by "the agent process before this one":
    # the process that died was an earlier snapctl.
    records = _left_by_a_dead_process(fake, tmp_path, embedded)
    (tmp_path / "qdb").mkdir()
    engine = QuestDBEngine(QuestDBSettings(root=str(tmp_path / "qdb"), url=fake.url, timeout_s=1), base_dir=tmp_path)
    caplog.set_level(logging.INFO, logger="snapctl.agent")
    with fake.hang():
        service = AgentService("q1", engine, engine_type="questdb", hold_records=records)
        try:
            first = service.status().engine.details["releasing"]
            wait_until(lambda: "not released yet" in service.status().engine.details.get("releasing", ""),
                       timeout_s=20, what="the first release to fail")
            releasing = service.status().engine.details["releasing"]
            with pytest.raises(LeaseConflict) as refused:
                service.prepare("r2", 60)
        except BaseException:
            service.close()
            raise
    try:
        wait_until(lambda: not fake.held, timeout_s=20, what="the release once the server answers")
    finally:
        service.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "run r1" in r.getMessage()]
    [error], [warning] = [e for e in errors if "would not release" in e], warnings
    if embedded:
        assert first == ("the hold of run r1, left by a snapctl process that died, is being released (this "
                         "snapctl's first try since it started)")
        assert releasing.startswith("the hold of run r1, left by a snapctl process that died, is not released yet: ")
        assert error.startswith(EMBEDDED + ", and the engine would not release: ")
        assert error.endswith("; retrying every 2s while this snapctl runs (and in the next that builds the "
                              "node's agent)")
        assert refused.value.message.startswith(
            "cannot prepare: node q1 is still held for run r1, left by a snapctl process that died; ")
        assert refused.value.hint.startswith("each snapctl command that builds the node's agent (`snapctl status`, "
                                             "a backup) tries the release first; ")
        assert warning.startswith(EMBEDDED + " (lease until ")
        assert "renew and complete" not in warning  # no snapctl is left to send them
    else:
        assert first == ("the hold of run r1, left by an agent process that died, is being released (the "
                         "agent's first try since it started)")
        assert releasing.startswith("the hold of run r1, left by an agent process that died, is not released yet: ")
        assert error.startswith(AGENT + ", and the engine would not release: ")
        assert error.endswith("; retrying every 2s until it does")
        assert refused.value.message.startswith(
            "cannot prepare: node q1 is still held for run r1, left by an agent process that died; ")
        assert refused.value.hint.startswith("the agent retries the release until the engine answers; ")
        assert warning.startswith(AGENT + " (lease until ")
        assert warning.endswith("; that run's renew and complete are answered that its hold was lost")
    assert "as prepared): released its questdb checkpoint" in warning
    assert ("agent process" in " ".join([first, releasing, error, warning, refused.value.message])) is not embedded
