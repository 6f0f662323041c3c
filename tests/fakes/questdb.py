"""A QuestDB HTTP ``/exec`` endpoint with the checkpoint state machine of reference/engines.md.

Versions before 8.1.1 know only ``SNAPSHOT PREPARE|COMPLETE`` and have neither
``checkpoint_status()`` nor ``table_storage()``; from 8.1.1 ``CHECKPOINT CREATE|RELEASE`` exist
and the SNAPSHOT verbs are kept as aliases of the same, server-global, checkpoint.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from tests.fakes.engine_http import FakeServer, Request, Response

WAITING_RELEASE = "Waiting for CHECKPOINT RELEASE to be called"
WAITING_COMPLETE = "Waiting for SNAPSHOT COMPLETE to be called"
IN_PROGRESS = "Another checkpoint command is in progress"
NOT_ON_WINDOWS = "Checkpoint is not supported on Windows"
CHECKPOINT_EXPECTED = "'create' or 'release' expected"
SNAPSHOT_EXPECTED = "'prepare' or 'complete' expected"

_INSERT = re.compile(r'^insert\s+into\s+"?(?P<table>[\w.-]+)"?\s*(?:\([^)]*\)\s*)?values\s*(?P<rows>.*)$', re.I | re.S)
_CREATE_TABLE = re.compile(r'^create\s+table\s+(?:if\s+not\s+exists\s+)?"?(?P<table>[\w.-]+)"?', re.I)
_COUNT = re.compile(r'^select\s+count\(\)\s+from\s+"(?P<table>(?:[^"]|"")+)"$', re.I)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _count_tuples(values: str) -> int:
    """Rows in ``(..), (..)``: top-level parentheses only, so ``now()`` inside a row is not a row."""
    depth = rows = 0
    for char in values:
        if char == "(":
            rows += depth == 0
            depth += 1
        elif char == ")":
            depth -= 1
    return rows


class FakeQuestDB(FakeServer):
    def __init__(self, version: str = "9.3.2", *, windows: bool = False) -> None:
        super().__init__()
        self.version = version
        self.windows = windows
        self.tables: dict[str, int] = {}
        self.held_since: datetime | None = None
        self.racing = 0  # answer this many checkpoint commands with IN_PROGRESS
        self.slow_answers: dict[str, float] = {}  # SQL -> seconds: executed at once, answered late
        # Seconds a create (CHECKPOINT CREATE, SNAPSHOT PREPARE) runs late: queued, or a slow sync,
        # while the server answers other clients; other checkpoint commands meanwhile meet IN_PROGRESS.
        self.late_creates = 0.0
        self.lost_creates = 0  # creates received and dropped unanswered and never run, as a reset would
        # checkpoint_status() reads while a checkpoint is held, dropped unanswered as a reset would:
        # the read prepare makes right after its create, not the one before it.
        self.lost_held_status_reads = 0
        self.clock_offset = timedelta(0)  # the server's clock minus the agent's, as started_at shows it
        # After answering this SQL (lower case, as ``queries`` has it normalised), refuse new
        # connections until ``listen_again()``: the server went down between two requests.
        self.down_after: str | None = None
        self._creating = 0
        self.started_at_unknown = False  # True: checkpoint_status() says held, with a null started_at
        self.has_build = True  # False: a build without build(), so the adapter must probe the syntax
        self.queries: list[str] = []

    @property
    def modern(self) -> bool:
        return _version_tuple(self.version) >= (8, 1, 1)

    @property
    def held(self) -> bool:
        return self.held_since is not None

    # --- what another client would do -----------------------------------------------------
    def hold_as_someone_else(self) -> None:
        with self.lock:
            self.held_since = datetime.now(UTC)

    # --- the wire --------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        if request.path != "/exec" or "query" not in request.query:
            return Response.text("Not Found", 404)
        query = request.query["query"]
        self.queries.append(query)
        sql = " ".join(query.strip().rstrip(";").split())
        if self.lost_creates and sql.upper() in ("CHECKPOINT CREATE", "SNAPSHOT PREPARE"):
            self.lost_creates -= 1
            return Response(drop=True)
        if self.lost_held_status_reads and self.held and sql.lower() == "select * from checkpoint_status()":
            self.lost_held_status_reads -= 1
            return Response(drop=True)
        if self.down_after is not None and sql.lower() == self.down_after:
            self.down_after = None
            self.stop_listening()
            response = self._execute(query, sql)
            response.headers["Connection"] = "close"  # the client's next request needs a new connection
            return response
        if self.late_creates and sql.upper() in ("CHECKPOINT CREATE", "SNAPSHOT PREPARE"):
            self._creating += 1
            self.lock.release()  # handle() runs under the lock, taken once
            try:
                time.sleep(self.late_creates)
            finally:
                self.lock.acquire()
                self._creating -= 1
        response = self._execute(query, sql)
        response.delay_s = self.slow_answers.get(sql, 0.0)
        return response

    def _execute(self, query: str, sql: str) -> Response:
        lowered = sql.lower()
        if lowered == "select build()":
            if not self.has_build:
                return self._error(query, "unknown function name: build()", 7)
            jdk = "17.0.15" if self.modern else "11.0.22"
            return self._select(query, [("build", "STRING")],
                                [[f"Build Information: QuestDB {self.version}, JDK {jdk}, Commit Hash 1a2b3c4d"]])
        if lowered.startswith("checkpoint"):
            if not self.modern:
                return self._error(query, "table and column names that are SQL keywords have to be enclosed "
                                   "in double quotes, such as \"CHECKPOINT\"", 0)
            return self._checkpoint(query, lowered.split()[1:], create="create", release="release",
                                    expected=CHECKPOINT_EXPECTED)
        if lowered.startswith("snapshot"):
            return self._checkpoint(query, lowered.split()[1:], create="prepare", release="complete",
                                    expected=SNAPSHOT_EXPECTED)
        if lowered == "select * from checkpoint_status()":
            if not self.modern:
                return self._error(query, "unknown function name: checkpoint_status()", 14)
            started = ((self.held_since + self.clock_offset).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                       if self.held_since and not self.started_at_unknown else None)
            return self._select(query, [("in_progress", "BOOLEAN"), ("started_at", "TIMESTAMP")],
                                [[self.held, started]])
        if lowered == "select tablename,rowcount from table_storage()":
            if not self.modern:
                return self._error(query, "unknown function name: table_storage()", 29)
            return self._select(query, [("tableName", "STRING"), ("rowCount", "LONG")],
                                [[name, rows] for name, rows in sorted(self.tables.items())])
        if lowered == "select table_name from tables()":
            return self._select(query, [("table_name", "STRING")], [[name] for name in sorted(self.tables)])
        if match := _COUNT.match(sql):
            table = match.group("table").replace('""', '"')
            if table not in self.tables:
                return self._error(query, f"table does not exist [table={table}]", 21)
            return self._select(query, [("count", "LONG")], [[self.tables[table]]])
        if match := _CREATE_TABLE.match(sql):
            self.tables.setdefault(match.group("table"), 0)
            return Response.json({"ddl": "OK"})
        if match := _INSERT.match(sql):
            table = match.group("table")
            if table not in self.tables:
                return self._error(query, f"table does not exist [table={table}]", 12)
            self.tables[table] += _count_tuples(match.group("rows"))
            return Response.json({"dml": "OK"})
        return self._error(query, f"unexpected token [{sql.split()[0] if sql else ''}]", 0)

    def _checkpoint(self, query: str, words: list[str], *, create: str, release: str, expected: str) -> Response:
        if self.windows:
            return self._error(query, NOT_ON_WINDOWS, 0)
        if len(words) != 1 or words[0] not in (create, release):
            return self._error(query, expected, len(query.split()[0]) + 1)
        if self.racing > 0 or self._creating:
            self.racing = max(self.racing - 1, 0)
            return self._error(query, IN_PROGRESS, 0)
        if words[0] == release:
            self.held_since = None  # releasing nothing is a no-op, answered OK
            return Response.json({"ddl": "OK"})
        if self.held:
            return self._error(query, WAITING_RELEASE if self.modern else WAITING_COMPLETE, 0)
        self.held_since = datetime.now(UTC)
        return Response.json({"ddl": "OK"})

    @staticmethod
    def _error(query: str, message: str, position: int) -> Response:
        return Response.json({"query": query, "error": message, "position": position}, status=400)

    @staticmethod
    def _select(query: str, columns: list[tuple[str, str]], dataset: list[list[object]]) -> Response:
        return Response.json({
            "query": query,
            "columns": [{"name": name, "type": kind} for name, kind in columns],
            "timestamp": -1,
            "dataset": dataset,
            "count": len(dataset),
        })
