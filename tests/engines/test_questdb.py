"""The QuestDB adapter against the /exec fake: versions, foreign holds, races, facts, restore markers."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from node_agent.engines.questdb import QuestDBEngine, QuestDBSettings
from snapctl.errors import EngineBusy, EngineError
from tests.conftest import free_port
from tests.fakes.questdb import IN_PROGRESS, NOT_ON_WINDOWS, WAITING_COMPLETE, WAITING_RELEASE, FakeQuestDB


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "qdb" / "db").mkdir(parents=True)
    return tmp_path / "qdb"


@pytest.fixture
def make(root: Path) -> Iterator:
    started: list[tuple[FakeQuestDB, QuestDBEngine]] = []

    def factory(version: str = "9.3.2", *, data: dict[str, int] | None = None, **settings) -> tuple:
        fake = FakeQuestDB(version).start()
        fake.tables.update(data if data is not None else {"trades": 10, "quotes": 4, "telemetry": 99})
        engine = QuestDBEngine(QuestDBSettings(root=str(root), url=fake.url, **{"timeout_s": 2, **settings}),
                               base_dir=root.parent)
        started.append((fake, engine))
        return fake, engine

    yield factory
    for fake, engine in started:
        engine.close()
        fake.stop()


def executed(fake: FakeQuestDB, prefix: str) -> list[str]:
    return [q for q in fake.queries if q.upper().startswith(prefix)]


@pytest.mark.parametrize(("version", "create", "release"), [
    ("9.3.2", "CHECKPOINT CREATE", "CHECKPOINT RELEASE"),
    ("8.1.1", "CHECKPOINT CREATE", "CHECKPOINT RELEASE"),
    ("8.1.0", "SNAPSHOT PREPARE", "SNAPSHOT COMPLETE"),
    ("7.3.10", "SNAPSHOT PREPARE", "SNAPSHOT COMPLETE"),
])
def test_the_version_picks_the_syntax(make, version: str, create: str, release: str) -> None:
    fake, engine = make(version)
    state = engine.prepare("r1")
    assert fake.held and executed(fake, create.split()[0]) == [create]
    assert state.version == f"QuestDB {version}"
    assert state.details["command"] == create
    engine.complete("r1")
    assert not fake.held and executed(fake, release.split()[0])[-1] == release


def test_without_build_the_syntax_error_falls_back_to_snapshot(make) -> None:
    fake, engine = make("7.3.10")
    fake.has_build = False
    engine.prepare("r1")
    assert fake.queries.count("CHECKPOINT CREATE") == 1 and fake.queries.count("SNAPSHOT PREPARE") == 1
    assert fake.held
    engine.complete("r1")
    assert fake.queries[-1] == "SNAPSHOT COMPLETE" and not fake.held


def test_facts_are_row_counts_before_the_checkpoint_without_system_tables(make) -> None:
    fake, engine = make()
    state = engine.prepare("r1")
    assert {name: t.rows for name, t in state.facts.tables.items()} == {"quotes": 4, "trades": 10}
    assert state.facts.exact is False  # writes go on while held: a restore holds at least these
    counted = fake.queries.index("SELECT tableName,rowCount FROM table_storage()")
    assert counted < fake.queries.index("CHECKPOINT CREATE")
    assert state.files[-1].endswith(".checkpoint")


def test_old_servers_count_each_table(make) -> None:
    fake, engine = make("7.3.10", data={"we\"ird": 3, "trades": 1})
    facts = engine.verify()
    assert {name: t.rows for name, t in facts.tables.items()} == {"trades": 1, 'we"ird': 3}
    assert 'SELECT count() FROM "we""ird"' in fake.queries


def test_configured_tables_only_and_missing_ones_named(make) -> None:
    _, everything = make(data={"trades": 2, "quotes": 1, "sys.wal": 5})
    assert set(everything.verify().tables) == {"trades", "quotes"}
    _, only = make(data={"trades": 2, "quotes": 1}, tables=["trades"])
    assert set(only.verify().tables) == {"trades"}
    _, wrong = make(data={"trades": 2}, tables=["trades", "orders"])
    with pytest.raises(EngineError, match="no table orders"):
        wrong.verify()


def test_a_checkpoint_someone_else_holds_is_reported_never_released(make) -> None:
    fake, engine = make()
    fake.hold_as_someone_else()
    with pytest.raises(EngineBusy, match="did not make") as caught:
        engine.prepare("r1")
    assert "since" in str(caught.value) and caught.value.hint
    status = engine.status()
    assert status.held and status.held_by and status.held_since is not None
    engine.complete("r1")
    assert fake.held, "complete must not release a hold this agent did not make"
    assert not executed(fake, "CHECKPOINT RELEASE")


def test_a_foreign_hold_appearing_between_status_and_create_is_refused(make) -> None:
    fake, engine = make()
    original = fake._execute

    def grab_first(query: str, sql: str):
        if sql == "CHECKPOINT CREATE" and not fake.held:
            fake.hold_as_someone_else()
        return original(query, sql)

    fake._execute = grab_first
    with pytest.raises(EngineBusy, match=WAITING_RELEASE):
        engine.prepare("r1")
    assert fake.held and not executed(fake, "CHECKPOINT RELEASE")


def test_force_release_takes_over_a_foreign_hold(make) -> None:
    fake, engine = make(force_release=True)
    fake.hold_as_someone_else()
    engine.prepare("r1")
    assert fake.queries.index("CHECKPOINT RELEASE") < fake.queries.index("CHECKPOINT CREATE")
    assert fake.held
    engine.complete("r1")
    assert not fake.held


def test_old_server_second_prepare_message(make) -> None:
    fake, engine = make("7.3.10")
    with httpx.Client(base_url=fake.url) as other:
        other.get("/exec", params={"query": "SNAPSHOT PREPARE"}).raise_for_status()
        answer = other.get("/exec", params={"query": "SNAPSHOT PREPARE"})
    assert answer.status_code == 400 and answer.json()["error"] == WAITING_COMPLETE
    with pytest.raises(EngineBusy, match=WAITING_COMPLETE):
        engine.prepare("r1")  # no checkpoint_status() before 8.1.1: the create itself finds the holder


def test_racing_commands_are_retried(make) -> None:
    fake, engine = make()
    fake.racing = 2
    with httpx.Client(base_url=fake.url) as other:
        assert other.get("/exec", params={"query": "CHECKPOINT CREATE"}).json()["error"] == IN_PROGRESS
    engine.prepare("r1")
    assert fake.queries.count("CHECKPOINT CREATE") == 3 and fake.held  # one refused above, one here, then OK


def test_a_race_that_never_ends_is_busy_within_the_timeout(make) -> None:
    fake, engine = make()
    fake.racing = 10_000
    with pytest.raises(EngineBusy, match="another client keeps running checkpoint commands"):
        engine.prepare("r1")
    assert not fake.held and not engine.status().held


def test_windows_is_refused_with_questdb_s_message(make) -> None:
    fake, engine = make()
    fake.windows = True
    with pytest.raises(EngineError, match=NOT_ON_WINDOWS):
        engine.prepare("r1")


def test_sub_keyword_errors_come_through_verbatim(make) -> None:
    fake, _ = make()
    with httpx.Client(base_url=fake.url) as client:
        def error(sql: str) -> str:
            return client.get("/exec", params={"query": sql}).json()["error"]

        assert error("CHECKPOINT START") == "'create' or 'release' expected"
        assert error("SNAPSHOT GO") == "'prepare' or 'complete' expected"
        assert client.get("/exec", params={"query": "CHECKPOINT RELEASE"}).json() == {"ddl": "OK"}  # nothing held


def test_status_reports_version_and_own_hold(make) -> None:
    _, engine = make()
    idle = engine.status()
    assert idle.reachable and idle.version == "QuestDB 9.3.2" and not idle.held
    assert idle.details["checkpoint_status"] == "available"
    engine.prepare("r1")
    held = engine.status()
    assert held.held and held.held_by is None and held.held_since is not None
    assert held.details["run_id"] == "r1"


def test_status_of_a_server_that_is_not_there() -> None:
    engine = QuestDBEngine(QuestDBSettings(root="/tmp/none", url=f"http://127.0.0.1:{free_port()}", timeout_s=1),
                           base_dir=Path("/"))
    try:
        status = engine.status()
        assert not status.reachable and "unreachable" in (status.error or "")
        with pytest.raises(EngineError, match="unreachable"):
            engine.prepare("r1")
    finally:
        engine.close()


def test_a_server_that_never_answers_fails_prepare_and_holds_nothing(make) -> None:
    fake, engine = make(timeout_s=1)
    with fake.hang():
        with pytest.raises(EngineError, match="did not answer"):
            engine.prepare("r1")
    assert not fake.held and not engine.status().held


@pytest.mark.parametrize(("version", "marker", "new_id"), [("9.3.2", True, False), ("7.3.10", False, True)])
def test_restore_prepare_by_version(make, root: Path, version: str, marker: bool, new_id: bool) -> None:
    _, engine = make(version)
    engine.status()  # learns the version
    (root / "conf").mkdir()
    (root / "conf" / "server.conf").write_text("http.bind.to=0.0.0.0:9000\ncairo.snapshot.instance.id=old\n")
    engine.restore_prepare(None)
    assert (root / "_restore").exists() is marker
    conf = (root / "conf" / "server.conf").read_text()
    assert ("cairo.snapshot.instance.id=old" not in conf) is new_id
    assert "http.bind.to=0.0.0.0:9000" in conf


@pytest.mark.parametrize("mode", [0o600, 0o640], ids=["0600", "0640"])
def test_restore_prepare_keeps_the_mode_of_a_server_conf_that_holds_passwords(make, root: Path, mode: int) -> None:
    # A 7.x restore rewrites server.conf with a new instance id. The copy used to be made under the
    # agent's umask: 0644 under 022, so the pg and http passwords in it became readable by every user.
    _, engine = make("7.3.10")
    engine.status()
    conf = root / "conf" / "server.conf"
    conf.parent.mkdir()
    conf.write_text("pg.password=quest-secret\ncairo.snapshot.instance.id=old\n")
    conf.chmod(mode)
    previous = os.umask(0o022)
    try:
        engine.restore_prepare(None)
    finally:
        os.umask(previous)
    assert "cairo.snapshot.instance.id=old" not in conf.read_text() and "pg.password=quest-secret" in conf.read_text()
    assert stat.S_IMODE(conf.stat().st_mode) == mode


def test_restore_prepare_unknown_version_does_both(tmp_path: Path) -> None:
    restored = tmp_path / "restored"
    (restored / "db").mkdir(parents=True)
    engine = QuestDBEngine(QuestDBSettings(root=str(restored), url=f"http://127.0.0.1:{free_port()}"),
                           base_dir=tmp_path)
    engine.restore_prepare(restored)
    assert (restored / "_restore").exists()
    assert (restored / "conf" / "server.conf").read_text().startswith("cairo.snapshot.instance.id=")
    with pytest.raises(EngineError, match="does not exist"):
        engine.restore_prepare(tmp_path / "missing")
    engine.close()


def test_relative_root_resolves_against_the_inventory_dir(tmp_path: Path) -> None:
    engine = QuestDBEngine(QuestDBSettings(root="data/qdb"), base_dir=tmp_path)
    assert engine.data_paths() == [tmp_path / "data" / "qdb"]
    assert engine.trigger(None) == []
    engine.close()


def test_a_create_whose_answer_was_lost_is_released_by_complete(make) -> None:
    fake, engine = make(timeout_s=0.5)
    fake.slow_answers["CHECKPOINT CREATE"] = 1.5  # executed at once, answered after the client gave up
    with pytest.raises(EngineError, match="did not answer"):
        engine.prepare("r1")
    assert fake.held
    status = engine.status()
    assert status.held and status.held_by is None, "a checkpoint this agent may have made is not foreign"
    assert status.details["unconfirmed_create"]["run_id"] == "r1"
    engine.complete("r1")
    assert not fake.held


def test_a_lost_create_is_taken_back_by_the_next_prepare(make) -> None:
    fake, engine = make(timeout_s=0.5)
    fake.slow_answers["CHECKPOINT CREATE"] = 1.5
    with pytest.raises(EngineError):
        engine.prepare("r1")
    fake.slow_answers.clear()
    engine.prepare("r2")
    assert fake.queries.count("CHECKPOINT RELEASE") == 1 and fake.held
    engine.complete("r2")
    assert not fake.held


def test_a_password_in_the_url_reaches_questdb_but_no_error_status_evidence_or_log(root: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "qdb-http-s3cret"
    with FakeQuestDB() as fake:
        fake.tables["trades"] = 3
        engine = QuestDBEngine(QuestDBSettings(root=str(root), url=f"http://admin:{secret}@{fake.address}",
                                               timeout_s=1), base_dir=root.parent)
        try:
            state = engine.prepare("r1")
            assert fake.requests[-1].headers.get("authorization", "").startswith("Basic "), "basic auth is sent"
            status = engine.status()
            engine.complete("r1")
        finally:
            engine.close()
    assert secret not in state.model_dump_json() and secret not in status.model_dump_json()
    assert state.details["url"] == fake.url
    gone = QuestDBEngine(QuestDBSettings(root=str(root), url=f"http://admin:{secret}@127.0.0.1:{free_port()}",
                                         timeout_s=1), base_dir=root.parent)
    try:
        with pytest.raises(EngineError) as caught:
            gone.prepare("r2")
        assert secret not in str(caught.value) and secret not in (gone.status().error or "")
    finally:
        gone.close()
    assert secret not in caplog.text, "httpx logs each request's url at INFO"


def test_a_checkpoint_released_by_someone_else_before_complete_is_answered_released_false(make) -> None:
    from node_agent.service import AgentService

    fake, engine = make()
    service = AgentService("q1", engine)
    try:
        service.prepare("r1", 30)
        fake.held_since = None  # another client's CHECKPOINT RELEASE (the state is the server's), or a restart
        assert service.complete("r1").released is False, "the run must fail: the files were not held all along"
        assert service.lease is None
        service.prepare("r2", 30)
        assert service.complete("r2").released is True and not fake.held
    finally:
        service.close()
