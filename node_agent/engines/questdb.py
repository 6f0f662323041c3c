"""QuestDB: hold a checkpoint (``CHECKPOINT CREATE``, ``SNAPSHOT PREPARE`` before 8.1.1) over HTTP /exec.

The checkpoint is global to the server, not to a connection, so anyone can hold or release it.
This adapter remembers which hold it made, by the start ``checkpoint_status()`` gives (8.1.1+), and
never releases one it did not make; before 8.1.1 no start is given, so complete takes whatever is
held for its own. A hold it finds (a crashed backup, another tool) is reported with its start time,
and only ``force_release`` lets prepare take it over. Row counts are read *before* the checkpoint
is created: writes go on during the window, so a restore must hold at least those rows (``exact=False``).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import Field

from node_agent.engines.base import EngineSettings, split_user_info
from node_agent.engines.questdb_conf import touch_restore_marker, write_instance_id
from node_agent.engines.questdb_holds import (
    CHECKPOINT,
    CLOCK_SLACK_S,
    DEFAULT_LATE_CREATE_WINDOW_S,
    LEGACY,
    Unconfirmed,
    Verbs,
    began_within,
    foreign_hold,
    parse_timestamp,
    same_start,
)
from node_agent.models import EngineState, EngineStatus, JobResult, TableFacts, VerifyFacts
from snapctl.errors import EngineBusy, EngineError
from snapctl.timestamps import utc_text

log = logging.getLogger("snapctl.agent.questdb")

_BUILD = re.compile(r"QuestDB\s+(\d+)\.(\d+)\.(\d+)")
_FIRST_CHECKPOINT_VERSION = (8, 1, 1)
_RESTORE_MARKER_VERSION = (8, 0, 0)
_RACE_BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.8)
# QuestDB's own bookkeeping tables: their rows change on every start, so they are no evidence.
_SYSTEM_TABLES = re.compile(r"^(sys\.|telemetry$|telemetry_config$)")


class QuestDBSettings(EngineSettings):
    type: Literal["questdb"] = "questdb"
    url: str = "http://127.0.0.1:9000"  # the HTTP endpoint serving /exec
    root: str = Field(min_length=1)  # the server's root directory (db/, conf/); relative to the inventory
    force_release: bool = False  # prepare may release a checkpoint this agent did not make
    tables: list[str] | None = None  # verify only these tables (default: every user table)
    timeout_s: float = Field(default=10.0, gt=0)
    # How long after a create whose answer was lost a checkpoint that begins is still taken for
    # that create's and released (docs/engines/questdb.md).
    late_create_window_s: float = Field(default=DEFAULT_LATE_CREATE_WINDOW_S, gt=0)


class QuestDBQueryError(EngineError):
    """QuestDB answered a query with ``{"error": ...}``; ``server_message`` is its text verbatim."""

    def __init__(self, sql: str, server_message: str, *, hint: str | None = None) -> None:
        super().__init__(f"questdb refused {sql!r}: {server_message}", hint=hint)
        self.server_message = server_message


class QuestDBNotSent(EngineError):
    """The request never reached QuestDB (the connection was refused or not made in time)."""


class QuestDBEngine:
    name = "questdb"
    settings_model = QuestDBSettings

    def __init__(self, settings: QuestDBSettings, *, base_dir: Path) -> None:
        self.settings = settings
        root = Path(settings.root).expanduser()
        self.root = root if root.is_absolute() else Path(base_dir) / root
        # http://user:password@host:9000 (QuestDB's http.user/http.password) is sent as basic auth.
        self.url, auth = split_user_info(settings.url.rstrip("/"))
        self._client = httpx.Client(base_url=self.url, auth=auth, timeout=settings.timeout_s, trust_env=False)
        self._version: tuple[int, int, int] | None = None
        self._build: str | None = None
        self._hold_run: str | None = None
        self._held_since: datetime | None = None
        self._server_since: datetime | None = None  # our checkpoint's start, as checkpoint_status() gives it
        # When that read failed: our checkpoint began while our last create ran, from sent to answered.
        self._created_within: tuple[datetime, datetime] | None = None
        self._verbs: Verbs | None = None
        self._state: EngineState | None = None
        self._unconfirmed: Unconfirmed | None = None
        self._attempting: Verbs | None = None

    # ---- the hold -----------------------------------------------------------------------

    def prepare(self, run_id: str) -> EngineState:
        if self._hold_run == run_id and self._state is not None:
            return self._state
        if self._hold_run is not None:
            raise EngineBusy(f"questdb at {self.url} is held by run {self._hold_run}", hint="complete that run first",
                             holder=self._hold_run)
        deadline = time.monotonic() + self.settings.timeout_s
        self._detect_version()
        held, since = self._checkpoint_status()
        if held and not self._release_if_unconfirmed(since, deadline):
            if not self.settings.force_release:
                raise foreign_hold(self.url, since)
            self._release_foreign(self._verbs_to_try()[0], since, deadline)
        facts = self._table_facts(exact=False)
        sent = datetime.now(timezone.utc)
        try:
            verbs = self._create_checkpoint(deadline)
        except (QuestDBQueryError, EngineBusy, QuestDBNotSent):
            raise  # the server answered, or never got it: nothing was created
        except EngineError:
            # The create may have reached the server with only its answer lost, and may even run
            # later: remember it until a release of it is confirmed (complete, the next prepare,
            # or the agent's tidy). An earlier one still unconfirmed is kept in the same window.
            first = self._unconfirmed.sent if self._unconfirmed is not None else sent
            self._unconfirmed = Unconfirmed(run_id, self._attempting or CHECKPOINT, min(first, sent),
                                             self.settings.late_create_window_s)
            raise
        # Ours now; a create still unconfirmed that runs late meets our hold and is refused.
        self._unconfirmed = None
        now = datetime.now(timezone.utc)
        self._hold_run, self._held_since, self._verbs = run_id, now, verbs
        self._created_within = (sent, now)
        try:
            # What complete compares: the checkpoint is the server's, anyone may end it and take another.
            self._server_since = self._checkpoint_status()[1]
        except EngineError as exc:
            log.warning("run %s: could not read checkpoint_status() after the create (%s): a checkpoint is taken "
                        "for the run's only if it began while the create ran", run_id, exc)
        self._state = EngineState(
            engine=self.name,
            version=self._build,
            prepared_at=now,
            facts=facts,
            files=[str(self.root / "db"), str(self.root / verbs.directory)],
            details={"url": self.url, "command": verbs.create, "checkpoint_dir": str(self.root / verbs.directory)},
        )
        return self._state

    def complete(self, run_id: str) -> bool | None:
        if self._hold_run is None:
            if self._unconfirmed is not None and self._unconfirmed.run_id == run_id:
                self.tidy()
            return None
        if self._hold_run != run_id:
            log.warning("complete for run %s ignored: this agent's checkpoint belongs to run %s",
                        run_id, self._hold_run)
            return None
        verbs = self._verbs or CHECKPOINT
        deadline = time.monotonic() + self.settings.timeout_s
        # The checkpoint is the server's, not this connection's: any client's RELEASE (or a restart)
        # ends it, and any client may then take another. Either way the files were not held all along.
        held, since = self._checkpoint_status()
        theirs = bool(held) and not self._is_ours(since)
        if held is False or theirs:
            self._hold_run = self._held_since = self._server_since = self._verbs = self._state = None
            if theirs:
                log.warning("run %s: the questdb checkpoint had been released before complete, and another "
                            "client's checkpoint (since %s) holds now: left alone", run_id, utc_text(since))
            else:
                log.warning("run %s: the questdb checkpoint had already been released when complete came "
                            "(another client's release, or a restart)", run_id)
            return False
        self._retry_race(verbs.release, deadline)
        self._hold_run = self._held_since = self._server_since = self._verbs = self._state = None
        return None

    def hold_facts(self, run_id: str) -> dict[str, Any]:
        """What the agent's hold record keeps of this run's checkpoint once it is made: its start, as
        ``checkpoint_status()`` gave it (null before 8.1.1), which fences ``release_recorded_hold``."""
        verbs = "legacy" if self._verbs is LEGACY else "checkpoint"
        since = utc_text(self._server_since) if self._server_since else None
        facts = {"created": self._hold_run == run_id, "server_since": since, "verbs": verbs}
        if facts["created"] and since is None and self._created_within is not None:
            # Its start unread: when the create ran fences the release as it fences complete().
            facts["create_ran"] = [utc_text(moment) for moment in self._created_within]
        return facts

    def release_recorded_hold(self, run_id: str, began_at: datetime, facts: dict[str, Any]) -> str | None:
        """Release the checkpoint an agent process that died left for ``run_id``, as its hold record
        tells it, and never another client's: one that began at the recorded start; where that start
        was never read, one that began while the prepare could have made it; where the create was
        never answered, one that began while it could still run (both from ``began_at`` on, within
        ``late_create_window_s``). What was done, in words; None while such a create may still come
        (asked again). Raises ``EngineError`` (asked again) while the server does not say when the
        checkpoint it holds began: it cannot be told from another client's."""
        self._detect_version()
        verbs = LEGACY if facts.get("verbs") == "legacy" else CHECKPOINT if facts else self._verbs_to_try()[0]
        if not facts.get("created"):
            if self._unconfirmed is None or self._unconfirmed.run_id != run_id:
                self._unconfirmed = Unconfirmed(run_id, verbs, began_at, self.settings.late_create_window_s)
            passed = datetime.now(timezone.utc) > self._unconfirmed.too_late + timedelta(seconds=CLOCK_SLACK_S)
            if self.tidy():
                return None
            return ("no checkpoint of its came" if passed else
                    "released the questdb checkpoint its create made, whose answer it never read")
        held, since = self._checkpoint_status()
        if held is False:
            return "no checkpoint of its was held"
        recorded = parse_timestamp(facts.get("server_since"))
        if since is None:
            # Before 8.1.1 (or a status without a start) any client's checkpoint looks the same:
            # releasing it could end another tool's backup. Asked again, so a release by hand ends it.
            raise EngineError(
                f"questdb at {self.url} does not say when the checkpoint held now began (checkpoint_status() "
                "needs 8.1.1), so it cannot be told from another client's: left alone",
                hint=f"if it is run {run_id}'s, release it by hand ({verbs.release}), then remove the agent's "
                     "hold record and restart the agent (docs/agent.md, 'an engine left held')")
        if recorded is not None and not same_start(since, recorded):
            return f"the checkpoint held now began at {utc_text(since)}, not at its {utc_text(recorded)}: " \
                   "another client's, left alone"
        # Its start never read (the status read after the create failed): the create ran when the
        # record says; a record without that (an older agent's) has the prepare's start, and
        # late_create_window_s bounds even a create whose answer was lost.
        first, last = began_at, began_at + timedelta(seconds=self.settings.late_create_window_s)
        ran = [parse_timestamp(moment) for moment in facts.get("create_ran") or ()]
        if len(ran) == 2 and None not in ran and first <= ran[0] <= ran[1] <= last:  # type: ignore[operator]
            first, last = ran  # type: ignore[assignment]  # an interval outside the prepare's is no fence
        if recorded is None and not began_within(since, first, last):
            return (f"the checkpoint held now began at {utc_text(since)}, not while its create (from "
                    f"{utc_text(first)}) could have made it: another client's, left alone")
        self._retry_race(verbs.release, time.monotonic() + self.settings.timeout_s)
        return f"released its questdb checkpoint (since {utc_text(since)})"

    def tidy(self) -> bool:
        """Release the checkpoint a create whose answer was lost made, should it have come since
        (the server may run it late). True while such a create is still unconfirmed: the agent
        calls this again later, while no run holds it."""
        if self._unconfirmed is None or self._hold_run is not None:
            return False
        if datetime.now(timezone.utc) > self._unconfirmed.too_late + timedelta(seconds=CLOCK_SLACK_S):
            log.info("the create of run %s never took a checkpoint: no longer watched for", self._unconfirmed.run_id)
            self._unconfirmed = None
            return False
        held, since = self._checkpoint_status()
        if held is False:
            return True  # not (yet): a create queued on the server may still run
        # Not released: someone else's checkpoint holds, and ours may still come once it ends.
        return not self._release_if_unconfirmed(since, time.monotonic() + self.settings.timeout_s)

    # ---- engine snapshot, status, facts ----------------------------------------------------

    def trigger(self, target: str | None) -> list[JobResult]:
        """QuestDB has no snapshot of its own: its data files are the snapshot. Nothing to run."""
        return []

    def status(self) -> EngineStatus:
        ours = self._hold_run is not None
        details: dict[str, Any] = {"url": self.url, "run_id": self._hold_run}
        try:
            self._detect_version(refresh=True)
            held, since = self._checkpoint_status()
        except EngineError as exc:
            return EngineStatus(engine=self.name, version=self._build, reachable=False, held=ours,
                                held_since=self._held_since, details=details, error=str(exc))
        details["checkpoint_status"] = "unavailable before 8.1.1" if held is None else "available"
        if ours and held and not self._is_ours(since):
            ours = False  # ours was released behind our back, and another client's holds now
        if self._unconfirmed is not None:
            details["unconfirmed_create"] = {"run_id": self._unconfirmed.run_id,
                                             "sent": utc_text(self._unconfirmed.sent)}
            ours = ours or bool(held) and self._unconfirmed.may_be(since)
        foreign = bool(held) and not ours
        return EngineStatus(
            engine=self.name,
            version=self._build,
            reachable=True,
            held=ours or bool(held),
            held_by="another questdb client (a checkpoint this agent did not make)" if foreign else None,
            held_since=since or self._held_since,
            details=details,
        )

    def verify(self) -> VerifyFacts:
        return self._table_facts(exact=True)

    def restore_prepare(self, path: Path | None) -> None:
        root = Path(path) if path else self.root
        if not root.is_dir():
            raise EngineError(f"questdb root {root} does not exist", hint="restore the volume before restore-prepare")
        version = self._version
        if version is None and (root / CHECKPOINT.directory).is_dir():
            version = _FIRST_CHECKPOINT_VERSION
        # Unknown version: do both; each mechanism is ignored by the versions that lack it.
        if version is None or version >= _RESTORE_MARKER_VERSION:
            touch_restore_marker(root)
        if version is None or version < _RESTORE_MARKER_VERSION:
            write_instance_id(root, uuid.uuid4().hex)

    def data_paths(self) -> list[Path]:
        return [self.root]

    def close(self) -> None:
        self._client.close()

    # ---- helpers --------------------------------------------------------------------------

    def _exec(self, sql: str) -> dict[str, Any]:
        try:
            response = self._client.get("/exec", params={"query": sql})
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # No connection, so nothing of the request reached the server: it cannot run it later.
            raise QuestDBNotSent(f"questdb at {self.url} is unreachable: {exc}", hint="is questdb running?") from exc
        except httpx.TimeoutException as exc:
            raise EngineError(f"questdb at {self.url} did not answer {sql!r} within {self.settings.timeout_s}s",
                              hint="is the server overloaded or stuck?") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"questdb at {self.url} is unreachable: {exc}", hint="is questdb running?") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "error" in body:  # the error key decides, not the status code
            raise QuestDBQueryError(sql, str(body["error"]))
        if response.status_code >= 400 or not isinstance(body, dict):
            raise EngineError(f"questdb at {self.url} answered {sql!r} with HTTP {response.status_code} "
                              f"and no usable JSON", hint="is the url QuestDB's HTTP port (9000)?")
        return body

    def _detect_version(self, *, refresh: bool = False) -> None:
        if self._build is not None and not refresh:
            return
        try:
            body = self._exec("SELECT build()")
        except QuestDBQueryError:
            return  # no build(): decided later from the syntax the server accepts
        text = str((body.get("dataset") or [[""]])[0][0])
        self._build = text.removeprefix("Build Information: ").split(",")[0].strip() or text
        match = _BUILD.search(text)
        self._version = (int(match[1]), int(match[2]), int(match[3])) if match else None

    def _checkpoint_status(self) -> tuple[bool | None, datetime | None]:
        """(held, since) from ``checkpoint_status()``; (None, None) where the server lacks it."""
        if self._version is not None and self._version < _FIRST_CHECKPOINT_VERSION:
            return None, None
        try:
            body = self._exec("SELECT * FROM checkpoint_status()")
        except QuestDBQueryError:
            return None, None
        row = (body.get("dataset") or [[False, None]])[0]
        held = bool(row[0])
        since = parse_timestamp(row[1]) if held and len(row) > 1 else None
        return held, since

    def _is_ours(self, since: datetime | None) -> bool:
        """Whether the checkpoint held since ``since`` is the one our create made: begun at the start
        read right after it or, that read failed, while the create ran. No start (before 8.1.1): ours."""
        if since is None or self._created_within is None:
            return True
        if self._server_since is not None:
            return same_start(since, self._server_since)
        return began_within(since, *self._created_within)

    def _verbs_to_try(self) -> list[Verbs]:
        if self._version is None:
            return [CHECKPOINT, LEGACY]
        return [CHECKPOINT] if self._version >= _FIRST_CHECKPOINT_VERSION else [LEGACY]

    def _release_if_unconfirmed(self, since: datetime | None, deadline: float) -> bool:
        """Release a checkpoint held since ``since`` if the unconfirmed create may have made it.
        "Another checkpoint command is in progress" meanwhile may be that very create still running:
        retried until ``deadline``, and the create stays unconfirmed if it does not get through."""
        unconfirmed = self._unconfirmed
        if unconfirmed is None or not unconfirmed.may_be(since):
            return False
        log.warning("releasing the checkpoint (since %s) that run %s's create made after its answer was lost",
                    utc_text(since) if since else "an unknown time", unconfirmed.run_id)
        self._retry_race(unconfirmed.verbs.release, deadline)
        self._unconfirmed = None
        return True

    def _release_foreign(self, verbs: Verbs, since: datetime | None, deadline: float) -> None:
        log.warning("force_release: releasing a questdb checkpoint held since %s that this agent did not make",
                    since or "an unknown time")
        self._retry_race(verbs.release, deadline)

    def _create_checkpoint(self, deadline: float) -> Verbs:
        candidates = self._verbs_to_try()
        for verbs in candidates:
            self._attempting = verbs
            try:
                self._retry_race(verbs.create, deadline)
                return verbs
            except QuestDBQueryError as exc:
                message = exc.server_message
                if message.startswith("Waiting for"):
                    # Someone took the checkpoint between our status check and our create: maybe
                    # our own earlier create, whose answer was lost, run late.
                    since = self._checkpoint_status()[1]
                    if self._release_if_unconfirmed(since, deadline):
                        self._retry_race(verbs.create, deadline)
                        return verbs
                    if not self.settings.force_release:
                        raise foreign_hold(self.url, since, message) from exc
                    self._release_foreign(verbs, since, deadline)
                    self._retry_race(verbs.create, deadline)
                    return verbs
                if "not supported on Windows" in message or verbs is candidates[-1]:
                    raise
                log.info("questdb at %s refused %s (%s); trying %s", self.url, verbs.create, message, LEGACY.create)
        raise AssertionError("unreachable: the last candidate raises")

    def _retry_race(self, sql: str, deadline: float) -> None:
        """Run a checkpoint command, retrying while another one is in progress on the server."""
        for attempt in range(1000):
            try:
                self._exec(sql)
                return
            except QuestDBQueryError as exc:
                if "Another checkpoint command is in progress" not in exc.server_message:
                    raise
                pause = _RACE_BACKOFF_S[min(attempt, len(_RACE_BACKOFF_S) - 1)]
                if time.monotonic() + pause >= deadline:
                    raise EngineBusy(f"questdb at {self.url}: another client keeps running checkpoint commands; "
                                     f"{sql} did not get through within {self.settings.timeout_s}s",
                                     hint="find the other backup tool and stop it") from exc
                time.sleep(pause)

    def _table_facts(self, *, exact: bool) -> VerifyFacts:
        wanted = set(self.settings.tables) if self.settings.tables else None
        try:
            body = self._exec("SELECT tableName,rowCount FROM table_storage()")
            counts = {str(name): int(rows or 0) for name, rows in body.get("dataset") or []}
        except QuestDBQueryError:
            counts = self._count_each_table(wanted)
        tables = {
            name: TableFacts(rows=rows)
            for name, rows in sorted(counts.items())
            if (wanted is None and not _SYSTEM_TABLES.match(name)) or (wanted is not None and name in wanted)
        }
        if wanted:
            missing = sorted(wanted - tables.keys())
            if missing:
                raise EngineError(f"questdb at {self.url} has no table {', '.join(missing)}",
                                  hint="fix engine.tables in the inventory")
        return VerifyFacts(tables=tables, exact=exact)

    def _count_each_table(self, wanted: set[str] | None) -> dict[str, int]:
        body = self._exec("SELECT table_name FROM tables()")
        names = [str(row[0]) for row in body.get("dataset") or []]
        counts: dict[str, int] = {}
        for name in names:
            if (wanted is not None and name not in wanted) or (wanted is None and _SYSTEM_TABLES.match(name)):
                continue
            quoted = name.replace('"', '""')
            result = self._exec(f'SELECT count() FROM "{quoted}"')
            counts[name] = int((result.get("dataset") or [[0]])[0][0])
        return counts
