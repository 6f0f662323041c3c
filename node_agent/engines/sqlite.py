"""SQLite: hold a write transaction while the disk is snapshotted.

prepare checkpoints the WAL into the main file (so a snapshot of the db file alone is nearly
complete), then takes ``BEGIN IMMEDIATE`` on a dedicated connection and keeps it open until
complete. Writers wait on their own busy_timeout; readers go on. The facts (rows and a content
checksum per table) are read inside that same transaction, so they describe exactly the data the
snapshot holds.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from node_agent.engines.base import EngineSettings
from node_agent.models import EngineState, EngineStatus, JobResult, TableFacts, VerifyFacts
from snapctl.errors import BadInputError, EngineBusy, EngineError, os_reason

log = logging.getLogger("snapctl.agent.sqlite")

# How many VM instructions between deadline checks: cheap, yet a runaway scan stops promptly.
_PROGRESS_EVERY = 20_000
_WITHOUT_ROWID = re.compile(r"\bWITHOUT\s+ROWID\b", re.IGNORECASE)


class SqliteSettings(EngineSettings):
    type: Literal["sqlite"] = "sqlite"
    path: str = Field(min_length=1)  # the database file; relative to the config/inventory directory
    timeout_s: float = Field(default=10.0, gt=0)


class SqliteEngine:
    """One SQLite database file on this node."""

    name = "sqlite"
    settings_model = SqliteSettings
    # The hold is SQLite's POSIX (fcntl) lock, owned by the whole process: any close of a descriptor
    # of the file in that process drops it (sqlite.org/howtocorrupt.html, 2.2). Embedded in snapctl,
    # nothing else of snapctl's process may open the file while it is held (provider_worker.py).
    hold_is_process_lock = True

    def __init__(self, settings: SqliteSettings, *, base_dir: Path) -> None:
        self.settings = settings
        path = Path(settings.path).expanduser()
        self.db_path = (path if path.is_absolute() else Path(base_dir) / path).resolve()
        self._hold: sqlite3.Connection | None = None
        self._hold_run: str | None = None
        self._held_since: datetime | None = None
        self._state: EngineState | None = None

    # ---- the hold -----------------------------------------------------------------------

    def prepare(self, run_id: str) -> EngineState:
        if self._hold is not None:
            if self._hold_run == run_id and self._state is not None:
                return self._state
            raise EngineBusy(
                f"sqlite database {self.db_path} is already held by run {self._hold_run}",
                hint="complete that run first", holder=self._hold_run,
            )
        conn = self._connect()
        try:
            with self._bounded(conn, "prepare") as deadline:
                checkpoint = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                # A writer that kept the checkpoint waiting has used that much of timeout_s: the
                # lock waits what is left, so the whole prepare holds the other nodes no longer.
                conn.execute(f"PRAGMA busy_timeout = {max(1, int((deadline - time.monotonic()) * 1000))}")
                conn.execute("BEGIN IMMEDIATE")
                facts = table_facts(conn)
                details = self._describe(conn)
        except BaseException:
            _rollback_and_close(conn)
            raise
        busy, wal_frames, checkpointed = checkpoint
        details["checkpoint"] = {"busy": bool(busy), "wal_frames": wal_frames, "checkpointed": checkpointed}
        now = datetime.now(timezone.utc)
        self._hold, self._hold_run, self._held_since = conn, run_id, now
        self._state = EngineState(
            engine=self.name,
            version=sqlite3.sqlite_version,
            prepared_at=now,
            facts=facts,
            files=self._files(),
            details=details,
        )
        return self._state

    def complete(self, run_id: str) -> None:
        if self._hold is None:
            return
        if run_id != self._hold_run:
            # Fencing: a late complete from another run must not release this run's hold.
            log.warning("complete from run %s ignored: the hold belongs to run %s", run_id, self._hold_run)
            return
        self._release()

    def _release(self) -> None:
        conn, self._hold, self._hold_run, self._held_since, self._state = self._hold, None, None, None, None
        if conn is not None:
            _rollback_and_close(conn)

    # ---- the rest of the contract -------------------------------------------------------

    def trigger(self, target: str | None) -> list[JobResult]:
        name = target or "main"
        if name != "main":
            raise BadInputError(
                f"sqlite has one database: unknown trigger target {target!r}", hint="omit the target or use 'main'"
            )
        if self._hold is not None:
            detail = f"held by run {self._hold_run}: checkpoint after complete"
            return [JobResult(target=name, status="failed", detail=detail)]
        started = time.monotonic()
        conn = self._connect()
        try:
            with self._bounded(conn, "checkpoint"):
                busy, wal_frames, checkpointed = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
        extra = {"wal_frames": wal_frames, "checkpointed": checkpointed}
        duration = time.monotonic() - started
        if busy:
            detail = "checkpoint could not finish: other connections kept the wal busy"
            return [JobResult(target=name, status="failed", detail=detail, duration_s=duration, extra=extra)]
        detail = "wal checkpointed and truncated" if wal_frames >= 0 else "not in wal mode: nothing to checkpoint"
        return [JobResult(target=name, status="succeeded", detail=detail, duration_s=duration, extra=extra)]

    def status(self) -> EngineStatus:
        common = dict(engine=self.name, version=sqlite3.sqlite_version, held=self._hold is not None,
                      held_since=self._held_since)
        try:
            conn = self._connect()
        except EngineError as exc:
            return EngineStatus(reachable=False, error=str(exc), **common)
        try:
            with self._bounded(conn, "status"):
                details = self._describe(conn)
        except EngineError as exc:
            return EngineStatus(reachable=False, error=str(exc), **common)
        finally:
            conn.close()
        if self._hold_run:
            details["held_for_run"] = self._hold_run
        return EngineStatus(reachable=True, details=details, **common)

    def verify(self) -> VerifyFacts:
        conn = self._connect()
        try:
            with self._bounded(conn, "verify"):
                conn.execute("BEGIN")  # one read transaction: every table from the same instant
                return table_facts(conn)
        finally:
            _rollback_and_close(conn)

    def restore_prepare(self, path: Path | None) -> None:
        db = Path(path) if path is not None else self.db_path
        if db.is_dir():
            db = db / self.db_path.name
        if self._hold is not None and db.resolve() == self.db_path:
            raise EngineBusy(f"sqlite database {db} is held by run {self._hold_run}", hint="complete the run first")
        if not db.is_file():
            if path is not None:  # a wrong path is the caller's to fix: a scratch agent's restore.agent_path
                raise BadInputError(f"no restored sqlite database at {db}",
                                    hint="set the node's restore.agent_path to the restored database file or its "
                                         "directory, as the scratch agent sees it")
            # engine.path names another file than the one backed up, or the volume did not hold it.
            raise EngineError(
                f"no restored sqlite database at {db}, the file engine.path names",
                hint="make engine.path name the database that was backed up: the inventory's, for `snapctl "
                     "restore` or `drill` on this host (snapctl status says when it differs from what the node's "
                     "agent serves); a scratch agent's own config, for one")
        # A -shm file describes the WAL of the *old* file's processes; a restored one would
        # mislead the first connection. The -wal and any hot -journal are data: they stay.
        shm = db.with_name(db.name + "-shm")
        try:
            shm.unlink()
            log.info("removed stale %s", shm)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise EngineError(f"cannot remove stale {shm}: {os_reason(exc)}") from exc

    def data_paths(self) -> list[Path]:
        return [self.db_path.parent]

    def close(self) -> None:
        self._release()

    # ---- helpers ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if not self.db_path.is_file():
            raise EngineError(
                f"no sqlite database at {self.db_path}",
                hint="check engine.path (relative paths resolve against the config file's directory)",
            )
        try:
            conn = sqlite3.connect(
                self.db_path.as_uri() + "?mode=rw",
                uri=True,
                timeout=self.settings.timeout_s,
                isolation_level=None,  # we issue BEGIN/ROLLBACK ourselves
                check_same_thread=False,  # the hold is taken and released from different worker threads
            )
        except sqlite3.Error as exc:
            raise EngineError(f"cannot open sqlite database {self.db_path}: {exc}") from exc
        conn.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
        return conn

    @contextmanager
    def _bounded(self, conn: sqlite3.Connection, what: str) -> Iterator[float]:
        """Bound a step by timeout_s (busy waits by busy_timeout, long scans by a progress
        handler) and turn sqlite's errors into ours. Yields the deadline (monotonic)."""
        timeout = self.settings.timeout_s
        deadline = time.monotonic() + timeout
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_EVERY)
        try:
            yield deadline
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "interrupted" in text:
                raise EngineError(
                    f"sqlite {what} on {self.db_path} did not finish within {timeout:g}s", hint="raise engine.timeout_s"
                ) from TimeoutError(text)
            if "locked" in text or "busy" in text:
                raise EngineBusy(
                    f"sqlite database {self.db_path} stayed locked by another connection "
                    f"for {timeout:g}s during {what}",
                    hint="another writer or backup tool holds it; retry when it is done",
                ) from exc
            raise EngineError(f"sqlite {what} failed on {self.db_path}: {text}") from exc
        except sqlite3.Error as exc:
            raise EngineError(f"sqlite {what} failed on {self.db_path}: {exc}") from exc
        finally:
            conn.set_progress_handler(None, 0)

    def _describe(self, conn: sqlite3.Connection) -> dict[str, Any]:
        return {
            "path": str(self.db_path),
            "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
            "page_size": conn.execute("PRAGMA page_size").fetchone()[0],
            "page_count": conn.execute("PRAGMA page_count").fetchone()[0],
        }

    def _files(self) -> list[str]:
        wal = self.db_path.with_name(self.db_path.name + "-wal")
        return [str(self.db_path)] + ([str(wal)] if wal.exists() else [])


def table_facts(conn: sqlite3.Connection) -> VerifyFacts:
    """Rows and a content checksum per user table, read through ``conn`` (inside its transaction)."""
    tables = conn.execute(
        "SELECT name, sql FROM sqlite_master"
        " WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
    ).fetchall()
    facts: dict[str, TableFacts] = {}
    for name, sql in tables:
        if (sql or "").lstrip().upper().startswith("CREATE VIRTUAL"):
            continue  # needs its module to be read; its shadow tables carry the data anyway
        facts[name] = _table_checksum(conn, name, sql or "")
    return VerifyFacts(tables=facts, exact=True)


def _table_checksum(conn: sqlite3.Connection, table: str, sql: str) -> TableFacts:
    quoted = _quote(table)
    if _WITHOUT_ROWID.search(sql):
        pk = sorted((row[5], row[1]) for row in conn.execute(f"PRAGMA table_info({quoted})") if row[5])
        order = ", ".join(_quote(col) for _, col in pk)
    else:
        order = "rowid"
    digest = hashlib.sha256()
    rows = 0
    cursor = conn.execute(f"SELECT * FROM {quoted} ORDER BY {order}")
    while batch := cursor.fetchmany(1000):
        for row in batch:
            rows += 1
            digest.update(b"\x1e")
            for value in row:
                digest.update(_encode(value))
    return TableFacts(rows=rows, checksum="sha256:" + digest.hexdigest())


def _encode(value: Any) -> bytes:
    """Type-tagged, length-prefixed: no two different rows encode alike."""
    if value is None:
        return b"n;"
    if isinstance(value, int):
        return b"i%d;" % value
    if isinstance(value, float):
        return b"f" + value.hex().encode() + b";"
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
        return b"t%d:" % len(raw) + raw
    raw = bytes(value)
    return b"b%d:" % len(raw) + raw


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _rollback_and_close(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.warning("rollback failed (closing the connection releases the locks anyway): %s", exc)
    finally:
        conn.close()
