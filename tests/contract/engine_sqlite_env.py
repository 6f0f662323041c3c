"""SQLite in the engine contract: the adapter on a real WAL database file."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from node_agent.engines.sqlite import SqliteEngine, SqliteSettings
from tests.contract.conftest import EngineEnv


@contextlib.contextmanager
def make_env(tmp_path: Path) -> Iterator[EngineEnv]:
    db = tmp_path / "contract.db"
    setup = sqlite3.connect(db)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, value TEXT)")
    setup.commit()
    setup.close()

    def write(n: int) -> None:
        conn = sqlite3.connect(db, timeout=5)
        try:
            conn.executemany("INSERT INTO items (value) VALUES (?)", [(f"row {i}",) for i in range(n)])
            conn.commit()
        finally:
            conn.close()

    @contextlib.contextmanager
    def hang() -> Iterator[None]:
        # An exclusive-locking connection keeps even readers out: every call waits out its busy timeout.
        blocker = sqlite3.connect(db, isolation_level=None)
        try:
            blocker.execute("PRAGMA locking_mode=EXCLUSIVE")
            blocker.execute("BEGIN EXCLUSIVE")
            blocker.execute("INSERT INTO items (value) VALUES ('blocker')")
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

    write(1)
    engine = SqliteEngine(SqliteSettings(path=db.name, timeout_s=0.5), base_dir=tmp_path)
    try:
        yield EngineEnv(engine=engine, write=write, writes_blocked_while_prepared=True, extra={"hang": hang})
    finally:
        engine.close()
