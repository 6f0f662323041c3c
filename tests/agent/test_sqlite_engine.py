"""The SQLite adapter against real database files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node_agent.engines.base import create_engine, validate_engine_settings
from node_agent.engines.sqlite import SqliteEngine, SqliteSettings
from snapctl.errors import BadInputError, EngineBusy, EngineError
from tests.agent.conftest import count_rows, make_db, try_write


def test_prepare_keeps_writers_out_and_readers_in_until_complete(engine: SqliteEngine, db: Path) -> None:
    engine.prepare("run-1")
    assert not try_write(db)
    assert count_rows(db) == 10  # readers go on

    engine.complete("run-1")
    assert try_write(db)
    assert count_rows(db) == 11


def test_prepare_records_rows_checksums_files_and_version(engine: SqliteEngine, db: Path) -> None:
    state = engine.prepare("run-1")
    assert state.engine == "sqlite"
    assert state.version == sqlite3.sqlite_version
    assert state.facts.exact is True
    assert state.facts.tables["items"].rows == 10
    assert state.facts.tables["items"].checksum.startswith("sha256:")
    assert str(db) in state.files
    assert state.details["journal_mode"] == "wal"


def test_prepare_again_by_the_holder_returns_the_same_state(engine: SqliteEngine) -> None:
    first = engine.prepare("run-1")
    assert engine.prepare("run-1") == first


def test_complete_is_idempotent_and_fenced_by_run(engine: SqliteEngine, db: Path) -> None:
    engine.complete("nobody")  # nothing held: a no-op
    engine.prepare("run-1")
    engine.complete("run-2")  # a late call from another run must not release run-1's hold
    assert not try_write(db)
    engine.complete("run-1")
    engine.complete("run-1")
    assert try_write(db)


def test_another_holder_makes_prepare_busy(engine: SqliteEngine, db: Path) -> None:
    other = SqliteEngine(SqliteSettings(path=str(db), timeout_s=0.1), base_dir=Path("/"))
    engine.prepare("run-1")
    try:
        with pytest.raises(EngineBusy, match="locked"):
            other.prepare("run-2")
        with pytest.raises(EngineBusy, match="run-1"):
            engine.prepare("run-2")
    finally:
        other.close()
    assert other.status().held is False


def test_verify_matches_prepare_until_data_changes(engine: SqliteEngine, db: Path) -> None:
    state = engine.prepare("run-1")
    engine.complete("run-1")
    assert engine.verify() == state.facts

    assert try_write(db)
    now = engine.verify().tables["items"]
    assert now.rows == 11
    assert now.checksum != state.facts.tables["items"].checksum


def test_checksum_depends_on_content_not_on_the_file(tmp_path: Path) -> None:
    a = make_db(tmp_path / "a.db", rows=5)
    b = make_db(tmp_path / "b.db", rows=5, wal=False)
    c = make_db(tmp_path / "c.db", rows=5)
    conn = sqlite3.connect(c)
    conn.execute("UPDATE items SET value = 'changed' WHERE id = 3")
    conn.commit()
    conn.close()
    facts = {p.name: SqliteEngine(SqliteSettings(path=str(p)), base_dir=tmp_path).verify() for p in (a, b, c)}
    assert facts["a.db"] == facts["b.db"]
    assert facts["a.db"].tables["items"].rows == facts["c.db"].tables["items"].rows
    assert facts["a.db"].tables["items"].checksum != facts["c.db"].tables["items"].checksum


def test_without_rowid_tables_and_odd_values_are_covered(tmp_path: Path) -> None:
    path = tmp_path / "odd.db"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE "we""ird" (k TEXT, n INTEGER, b BLOB, f REAL, PRIMARY KEY (n, k)) WITHOUT ROWID')
    conn.executemany('INSERT INTO "we""ird" VALUES (?, ?, ?, ?)',
                     [("x", 2, b"\x00\xff", 1.5), ("y", 1, None, -0.0), ("é", 3, b"", 1e300)])
    conn.commit()
    conn.close()
    facts = SqliteEngine(SqliteSettings(path=str(path)), base_dir=tmp_path).verify()
    assert facts.tables['we"ird'].rows == 3
    assert facts.tables['we"ird'].checksum.startswith("sha256:")


def test_trigger_checkpoints_and_truncates_the_wal(engine: SqliteEngine, db: Path) -> None:
    keep_wal_open = sqlite3.connect(db)  # the last connection closing would checkpoint by itself
    keep_wal_open.execute("INSERT INTO items (value) VALUES ('in the wal')")
    keep_wal_open.commit()
    wal = db.with_name(db.name + "-wal")
    assert wal.stat().st_size > 0
    try:
        [job] = engine.trigger(None)
        assert job.status == "succeeded", job
        assert wal.stat().st_size == 0
    finally:
        keep_wal_open.close()


def test_trigger_while_held_reports_a_failed_job_instead_of_waiting(engine: SqliteEngine) -> None:
    engine.prepare("run-1")
    [job] = engine.trigger("main")
    assert job.status == "failed"
    assert "run-1" in job.detail
    with pytest.raises(BadInputError, match="unknown trigger target"):
        engine.trigger("other")


def test_restore_prepare_removes_a_stale_shm_and_keeps_the_wal(engine: SqliteEngine, tmp_path: Path) -> None:
    restored = tmp_path / "restored"
    restored.mkdir()
    db = make_db(restored / "data.db")
    (restored / "data.db-shm").write_bytes(b"stale")
    (restored / "data.db-wal").write_bytes(b"")
    engine.restore_prepare(restored)
    assert not (restored / "data.db-shm").exists()
    assert (restored / "data.db-wal").exists()
    assert count_rows(db) == 10
    with pytest.raises(BadInputError, match="no restored sqlite database") as wrong:
        engine.restore_prepare(tmp_path / "nowhere")
    assert "restore.agent_path" in wrong.value.hint  # the setting that passes it, not a flag that does not exist


def test_a_restored_volume_without_the_file_engine_path_names_says_which_setting_to_fix(tmp_path: Path) -> None:
    # `restore latest --to DIR` with engine.path naming other.db (the agent served demo.db) said
    # "pass the restored database file or its directory": no command takes one.
    make_db(tmp_path / "demo.db")
    engine = SqliteEngine(SqliteSettings(path="other.db"), base_dir=tmp_path)
    with pytest.raises(EngineError, match="no restored sqlite database at .*other.db, the file engine.path names") \
            as missing:
        engine.restore_prepare(None)
    assert "make engine.path name the database that was backed up" in missing.value.hint
    assert "snapctl status says when it differs" in missing.value.hint


def test_missing_database_is_an_error_not_a_new_file(tmp_path: Path) -> None:
    engine = SqliteEngine(SqliteSettings(path="absent.db"), base_dir=tmp_path)
    with pytest.raises(EngineError, match="no sqlite database at .*absent.db"):
        engine.prepare("run-1")
    status = engine.status()
    assert status.reachable is False and "absent.db" in status.error
    assert not (tmp_path / "absent.db").exists()


def test_a_prepare_past_its_timeout_fails_and_holds_nothing(tmp_path: Path) -> None:
    db = make_db(tmp_path / "big.db", rows=20_000)
    slow = SqliteEngine(SqliteSettings(path=str(db), timeout_s=1e-6), base_dir=tmp_path)
    with pytest.raises(EngineError, match="did not finish within") as caught:
        slow.prepare("run-1")
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert slow.status().held is False
    assert try_write(db)


def test_settings_come_through_the_entry_point(tmp_path: Path) -> None:
    make_db(tmp_path / "x.db")
    engine = create_engine({"type": "sqlite", "path": "x.db"}, base_dir=tmp_path)
    assert isinstance(engine, SqliteEngine)
    assert engine.data_paths() == [tmp_path.resolve()]
    with pytest.raises(BadInputError, match=r"unknown key 'bogus' \(valid keys: type, timeout_s, path\)"):
        validate_engine_settings({"type": "sqlite", "path": "x.db", "bogus": 1})


def test_a_writer_that_keeps_the_lock_costs_the_prepare_one_timeout_not_one_per_step(tmp_path: Path) -> None:
    # The checkpoint and the lock each waited the whole busy timeout: 2x timeout_s holding the
    # other nodes, under an error that said 1x. What the engine asks SQLite shows the budget.
    db = make_db(tmp_path / "data.db")
    statements: list[str] = []

    class Traced(SqliteEngine):
        def _connect(self) -> sqlite3.Connection:
            conn = super()._connect()
            conn.set_trace_callback(statements.append)
            return conn

    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    engine = Traced(SqliteSettings(path=str(db), timeout_s=0.5), base_dir=tmp_path)
    try:
        with pytest.raises(EngineBusy, match="stayed locked by another connection for 0.5s during prepare"):
            engine.prepare("run-1")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    lock_wait = [s for s in statements if s.startswith("PRAGMA busy_timeout")]
    assert statements.index(lock_wait[0]) == statements.index("BEGIN IMMEDIATE") - 1
    assert int(lock_wait[0].split("=")[1]) < 250  # what the checkpoint's wait left of the 500 ms
    assert engine.status().held is False and try_write(db)
