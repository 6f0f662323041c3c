"""Tarantool: pin a fresh checkpoint with ``box.backup.start()`` while the disk is snapshotted.

prepare runs ``box.snapshot()`` then ``box.backup.start()`` in one Lua call, so the checkpoint
files (the ``.snap`` and vinyl files it returns) cannot be garbage-collected until
``box.backup.stop()`` in complete. Writers go on: the xlogs keep growing, so a restored copy
holds at least the recorded facts (``facts.exact=False``).

The hold is fenced by run id on the server itself: a global ``snapctl_backup_run`` records which
snapctl run pinned the checkpoint, so a second agent, a late complete from a dead run or a
restarted agent never releases a pin it did not make, and a pin made by another backup tool
(``box.backup.start`` without our marker) is reported as held by someone else. A prepare call
the agent gave up on never pins afterwards: see ``tarantool_lua``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from node_agent.engines.base import EngineSettings, PasswordFile
from node_agent.engines.tarantool_info import position_of, raft_group, table_facts, vclock_of
from node_agent.engines.tarantool_local import explain_refused
from node_agent.engines.tarantool_lua import PREPARE_LUA, RELEASE_LUA, SNAPSHOT_LUA, STATUS_LUA, VERIFY_LUA
from node_agent.models import (
    EngineState,
    EngineStatus,
    JobResult,
    VerifyFacts,
)
from snapctl.errors import BadInputError, EngineBusy, EngineError

log = logging.getLogger("snapctl.agent.tarantool")

ER_ACCESS_DENIED, ER_CREDS_MISMATCH, ER_NO_SUCH_USER = 42, 47, 45
ER_MISSING_SNAPSHOT, ER_LOADING, ER_CHECKPOINT_IN_PROGRESS, ER_BACKUP_IN_PROGRESS = 93, 116, 120, 129
LOADING_HINT = ("wait for recovery to finish; check the instance's log (box.cfg.log) for its progress or what it "
                "waits for")
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 3301
# Of snapshot_timeout_s, what prepare may spend waiting for a checkpoint another fiber is writing.
_WAIT_SHARE = 0.9
# Runs whose complete came while the server could not be asked (each one complete, so a handful).
_UNASKED_RUNS_KEPT = 64
GRANT_HINT = "the user needs: box.schema.user.grant('<user>', 'read,write,execute', 'universe')"


class TarantoolSettings(EngineSettings):
    type: Literal["tarantool"] = "tarantool"
    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    # box.cfg.listen as a unix socket: reachable only by who may enter its directory (a drill's
    # scratch instance); relative to the inventory/config
    socket: str | None = None
    user: str = "snapctl"
    password_env: str | None = None  # name of the variable holding the password
    password_file: str | None = None  # first line is the password; relative to the inventory/config
    work_dir: str | None = None  # box.cfg.work_dir: memtx/wal/vinyl dirs default to it
    data_paths: list[str] = Field(default_factory=list)  # when memtx_dir/wal_dir/vinyl_dir live elsewhere
    timeout_s: float = Field(default=10.0, gt=0)  # connect and every short call
    snapshot_timeout_s: float = Field(default=600.0, gt=0)  # box.snapshot(): minutes on a big instance
    snapshot_on_prepare: bool = True  # False pins the latest existing checkpoint instead

    @model_validator(mode="after")
    def _needs_paths(self) -> TarantoolSettings:
        if not self.work_dir and not self.data_paths:
            raise ValueError("tarantool needs work_dir or data_paths: the directories the disk snapshot must cover")
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        if self.socket is not None:
            if not self.socket.strip():
                # Read as "no socket", it would reach whatever listens on the default host/port.
                raise ValueError("socket is empty: give the socket's path, or leave socket out to use host/port")
            # Given, not just different: host: 127.0.0.1 written out with a socket is as ambiguous.
            given = sorted({"host", "port"} & self.model_fields_set)
            if given:
                raise ValueError(f"give socket or host/port, not both: socket {self.socket!r} with "
                                 f"{' and '.join(given)}; remove {' and '.join(given)} or socket")
        return self


class TarantoolEngine:
    """One Tarantool instance on this node, reached over iproto."""

    name = "tarantool"
    settings_model = TarantoolSettings

    def __init__(self, settings: TarantoolSettings, *, base_dir: Path) -> None:
        self.settings = settings
        self.base_dir = Path(base_dir)
        self._socket = self._absolute(settings.socket) if settings.socket else None
        self._connect_socket = self._socket  # another name of it: see reach_socket_through
        self.address = f"unix/:{self._socket}" if self._socket else f"{settings.host}:{settings.port}"
        self._held_run: str | None = None
        self._state: EngineState | None = None
        self._uncertain_run: str | None = None  # a prepare whose answer never came may have pinned
        self._uncertain_attempt: str | None = None  # ...and that prepare's id on the server, to cancel it
        # Runs release_left_hold could not ask the server about: a killed agent's prepare of one may
        # still pin. Asked again by tidy() and before the next prepare; dict as an ordered set.
        self._unasked_runs: dict[str, None] = {}
        self._password_file = (PasswordFile("tarantool", self._resolve(settings.password_file), log)
                               if settings.password_file else None)

    def reach_socket_through(self, path: str) -> None:
        """Connect to the socket by ``path``, another name of the same file (the drill's
        /proc/self/fd/N/NAME when the real path is longer than AF_UNIX takes); errors and status
        go on naming the real path, as that name means nothing outside this process."""
        self._connect_socket = Path(path)

    # ---- the hold -----------------------------------------------------------------------

    def prepare(self, run_id: str) -> EngineState:
        if self._held_run == run_id and self._state is not None:
            return self._state
        if self._uncertain_run is not None and self._uncertain_run != run_id:
            # An earlier prepare went unanswered and its run's complete found no pin yet (the agent
            # completes a failed prepare at once, while the server may still be checkpointing):
            # the pin may have come since, and nobody else will ever release it.
            log.warning("releasing what the unanswered prepare of run %s may have pinned", self._uncertain_run)
            self._release(self._uncertain_run)
        self._ask_unasked_runs()
        attempt = uuid.uuid4().hex
        with self._session(self.settings.snapshot_timeout_s) as conn:
            try:
                timeout_s = self.settings.snapshot_timeout_s
                result = self._eval(conn, PREPARE_LUA, run_id, self.settings.snapshot_on_prepare, attempt,
                                    timeout_s, timeout_s * _WAIT_SHARE, what="box.snapshot() and box.backup.start()")
            except EngineError as exc:
                if exc.__cause__ is not None and _is_network(exc.__cause__):
                    # The call went out: the server may pin after all, until a release cancels it.
                    self._uncertain_run, self._uncertain_attempt = run_id, attempt
                raise
        if result.get("run_completed"):
            raise EngineError(
                f"tarantool at {self.address}: run {run_id} was completed here before this prepare could pin "
                "(its rollback, or a restarted agent releasing what a killed one left); nothing was pinned",
                hint="a run's prepare never holds once its complete has come: start a new backup")
        if result.get("given_up"):
            raise EngineError(
                f"tarantool at {self.address}: box.snapshot() took longer than snapshot_timeout_s "
                f"({self.settings.snapshot_timeout_s:g}s); nothing was pinned",
                hint="raise snapshot_timeout_s (minutes on a big instance)")
        if result.get("pinned_by_other"):
            raise _backup_busy(self.address)
        if result.get("checkpoint_in_progress"):
            raise _snapshot_busy(self.address, f" (waited {self.settings.snapshot_timeout_s * _WAIT_SHARE:g}s for it)")
        if "held_by" in result:
            raise EngineBusy(
                f"tarantool at {self.address} is held by snapctl run {result['held_by']}",
                hint="its agent releases it when that run completes or its lease expires; if no agent holds it "
                     "any more, run box.backup.stop() on the instance (docs/agent.md, 'an engine left held')",
                holder=str(result["held_by"]),
            )
        info = result["info"]
        files = [str(f) for f in result["files"]]
        outside = self._outside_data_paths(files)
        if outside:
            try:
                self._release(run_id)
            except EngineError as exc:
                # Still pinned: complete, or the next prepare, releases it; no one else would.
                self._uncertain_run, self._uncertain_attempt = run_id, None
                log.warning("run %s: the pin of a checkpoint outside the data paths is not released yet: %s",
                            run_id, exc)
            roots = ", ".join(str(p) for p in self.data_paths())
            raise EngineError(
                f"tarantool checkpoint file {outside[0]} lies outside the data paths ({roots})",
                hint="add its directory to engine.data_paths and make sure a snapshotted volume covers it",
            )
        now = datetime.now(timezone.utc)
        self._state = EngineState(
            engine=self.name,
            version=info.get("version"),
            prepared_at=now,
            facts=VerifyFacts(tables=table_facts(result["tables"]), position=position_of(info), exact=False),
            files=files,
            raft=[raft_group(info)],
            details={"instance_id": info.get("id"), "ro": info.get("ro"), "snapshot_taken": result["snapshot_taken"]},
        )
        self._held_run, self._uncertain_run, self._uncertain_attempt = run_id, None, None
        return self._state

    def complete(self, run_id: str) -> bool | None:
        known = run_id in (self._held_run, self._uncertain_run)
        held = self._held_run == run_id
        try:
            result = self._release(run_id)
        except EngineError:
            if not known:
                return None  # nothing of this run is recorded as held, and the engine cannot be asked
            raise
        if held and not (result.get("released") and result.get("pinned")):
            # The pin went before complete: the instance restarted (a pin lives in memory), or someone
            # ran box.backup.stop(). Checkpoint files the snapshot needed may have been collected since.
            log.warning("run %s: the tarantool pin had already gone when complete came (restart, or "
                        "box.backup.stop() by hand)", run_id)
            return False
        return None

    def release_left_hold(self, run_id: str) -> bool | None:
        """Release the pin an earlier agent process made for ``run_id`` (killed with it held: a pin
        outlives the agent), fenced by the run's marker on the server. True: it was pinned all along
        and is released now; False: its marker was there, the pin had gone; None: none of this run.

        With no pin of the run, the server is told that no prepare of it may pin from now on: one
        the killed agent left in ``box.snapshot()`` would otherwise pin after this answer, and
        nobody would release it. The whole run, not the attempts: this process never knew their
        ids, and one still queued on the server has not begun. A later prepare of the run is
        refused, as the agent refuses a prepare that comes after its run's complete."""
        try:
            result = self._release(run_id, keep_s=self.settings.snapshot_timeout_s)
        except EngineError:
            self._unasked_runs[run_id] = None
            while len(self._unasked_runs) > _UNASKED_RUNS_KEPT:
                del self._unasked_runs[next(iter(self._unasked_runs))]
            raise
        self._unasked_runs.pop(run_id, None)
        if not result.get("released"):
            return None
        log.warning("released the pin of run %s, which an earlier agent process made", run_id)
        return bool(result.get("pinned"))

    def tidy(self) -> bool:
        """What a failed prepare or release_left_hold left unsettled, settled once the server answers
        (raises until it does); False when nothing is left. The agent calls it while no run holds."""
        if self._uncertain_run is not None:
            self._release(self._uncertain_run)
        self._ask_unasked_runs()
        return False

    def _ask_unasked_runs(self) -> None:
        for run_id in list(self._unasked_runs):
            self.release_left_hold(run_id)  # a pin that came meanwhile is released, and logged there

    def _release(self, run_id: str, keep_s: float | None = None) -> dict[str, Any]:
        uncertain = self._uncertain_run == run_id
        with self._session() as conn:
            result = self._eval(conn, RELEASE_LUA, run_id, self._uncertain_attempt if uncertain else None, keep_s,
                                what="box.backup.stop()")
        if not result.get("released") and result.get("holder"):
            # Fencing: a late complete must not release another run's pin.
            log.warning("complete from run %s ignored: the pin belongs to run %s", run_id, result["holder"])
        if self._held_run == run_id:
            self._held_run, self._state = None, None
        if uncertain:
            # Released if it had pinned; and the server now refuses its pin if it still comes.
            self._uncertain_run = self._uncertain_attempt = None
        return result

    # ---- the rest of the contract -------------------------------------------------------

    def trigger(self, target: str | None) -> list[JobResult]:
        if target not in (None, "", "snapshot", "box.snapshot"):
            raise BadInputError(
                f"tarantool has one checkpoint per instance: unknown trigger target {target!r}",
                hint="omit the target or use 'snapshot'",
            )
        started = time.monotonic()
        deadline = started + self.settings.snapshot_timeout_s
        while True:
            try:
                with self._session(max(deadline - time.monotonic(), 0.1)) as conn:
                    signature, vclock = self._eval(conn, SNAPSHOT_LUA, what="box.snapshot()", whole=True)
                break
            except EngineBusy as exc:
                # The checkpoint daemon (or another client) is writing one: wait for it, then take ours.
                if time.monotonic() + 0.2 >= deadline:
                    return [JobResult(target="box.snapshot", status="failed", detail=exc.message,
                                      duration_s=time.monotonic() - started)]
                time.sleep(0.2)
        return [JobResult(target="box.snapshot", status="succeeded", detail="checkpoint written",
                          duration_s=time.monotonic() - started,
                          extra={"signature": signature, "vclock": vclock_of(vclock)})]

    def status(self) -> EngineStatus:
        try:
            with self._session() as conn:
                info = self._eval(conn, STATUS_LUA, what="box.info")
        except EngineError as exc:
            held_since = self._state.prepared_at if self._state else None
            return EngineStatus(engine=self.name, reachable=False, held=self._held_run is not None,
                                held_since=held_since, error=str(exc))
        holder = info.get("holder") if info.get("pinned") else None
        held_by = None
        if holder is not None and holder != self._held_run:
            held_by = f"snapctl run {holder}"
        elif holder is None and info.get("pinned"):
            held_by = "box.backup.start() by another backup tool"
        details = {"instance_id": info.get("id"), "ro": info.get("ro"), "status": info.get("status"),
                   "vclock": vclock_of(info.get("vclock")), "lsn": info.get("lsn"), "address": self.address}
        if self._held_run:
            details["held_for_run"] = self._held_run
        return EngineStatus(
            engine=self.name, version=info.get("version"), reachable=True,
            held=bool(info.get("pinned")), held_by=held_by,
            held_since=self._state.prepared_at if self._state and holder == self._held_run else None,
            raft=[raft_group(info)], details=details, error=self._not_running(info.get("status")),
        )

    def _not_running(self, status: Any) -> str | None:
        """box.info.status other than running, said with what it means: it answers, but read-only."""
        where = f"tarantool at {self.address}"
        if status in (None, "running"):
            return None
        if status == "orphan":
            return (f"{where} is an orphan: it has not connected to replication_connect_quorum of its peers "
                    "(box.cfg.replication) and stays read-only until it does (hint: check that those peers are up "
                    "and reachable from it, and box.info.replication there)")
        if status == "loading":
            return f"{where} is still loading its data (recovery or bootstrap): read-only until it finishes " \
                   f"(hint: {LOADING_HINT})"
        return f"{where} reports box.info.status {status!r}, not running"

    def verify(self) -> VerifyFacts:
        with self._session(self.settings.snapshot_timeout_s) as conn:
            result = self._eval(conn, VERIFY_LUA, what="counting tuples")
        return VerifyFacts(tables=table_facts(result["tables"]), position=position_of(result["info"]), exact=False)

    def restore_prepare(self, path: Path | None) -> None:
        root = Path(path) if path is not None else self.data_paths()[0]
        if not root.is_dir():
            raise EngineError(f"tarantool restore: {root} is not a directory")
        if not any(root.rglob("*.snap")):
            raise EngineError(f"tarantool restore: no .snap file under {root}",
                              hint="restore the volume holding memtx_dir, or pass the directory that holds it")
        # A checkpoint or dump being written at snapshot time leaves *.inprogress files: incomplete
        # by definition, and never read at recovery; drop them so they are not mistaken for data.
        for leftover in root.rglob("*.inprogress"):
            leftover.unlink()
            log.info("removed incomplete file %s", leftover)

    def data_paths(self) -> list[Path]:
        paths = self.settings.data_paths or [self.settings.work_dir]
        return [self._resolve(p) for p in paths if p]

    def close(self) -> None:
        """Every call uses its own connection: nothing stays open."""

    # ---- plumbing -----------------------------------------------------------------------

    def _resolve(self, path: str) -> Path:
        return self._absolute(path).resolve()

    def _absolute(self, path: str) -> Path:
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else self.base_dir / p

    def _outside_data_paths(self, files: list[str]) -> list[str]:
        roots = self.data_paths()
        return [f for f in files if not any(Path(f).resolve().is_relative_to(root) for root in roots)]

    def _password(self) -> str | None:
        s = self.settings
        if s.password_env:
            value = os.environ.get(s.password_env)
            if value is None:
                raise EngineError(f"tarantool password variable {s.password_env} is not set",
                                  hint="export it in the agent's environment, or use password_file")
            return value
        if self._password_file is not None:
            return self._password_file.read()
        return None

    @contextmanager
    def _session(self, call_timeout_s: float | None = None) -> Iterator[Any]:
        """A connection for one call. Connecting is bounded by ``timeout_s``; the call's answer by
        ``call_timeout_s`` (default ``timeout_s``), which long calls such as box.snapshot() raise.
        The client's ``connection_timeout`` covers the TCP connect only: the greeting and the login
        are read under ``socket_timeout``. So the connection is made with ``timeout_s`` as its socket
        timeout, and only then widened for the call: a stopped instance (SIGSTOP, a hung event loop)
        accepts connections in the kernel and never greets, and must fail within ``timeout_s``, not
        ``snapshot_timeout_s``."""
        import tarantool  # optional dependency (snapctl[tarantool]); only agents running this engine need it

        try:
            # The client takes a unix socket as host None and the path as port.
            host, port = ((None, str(self._connect_socket)) if self._connect_socket
                          else (self.settings.host, self.settings.port))
            conn = tarantool.Connection(
                host, port, user=self.settings.user, password=self._password(),
                socket_timeout=self.settings.timeout_s, connection_timeout=self.settings.timeout_s,
                reconnect_max_attempts=0, fetch_schema=False, connect_now=True,
            )
        except tarantool.DatabaseError as exc:
            raise self._translate(exc, "connecting") from exc
        if call_timeout_s and call_timeout_s != self.settings.timeout_s:
            conn.socket_timeout = call_timeout_s
            conn._socket.settimeout(call_timeout_s)  # the client reads its attribute only when it connects
        try:
            yield conn
        finally:
            conn.close()

    def _eval(self, conn: Any, lua: str, *args: Any, what: str, whole: bool = False) -> Any:
        import tarantool

        try:
            data = conn.eval(lua, list(args)).data
        except tarantool.DatabaseError as exc:  # NetworkError included: _translate tells them apart
            raise self._translate(exc, what, conn.socket_timeout) from exc
        return data if whole else (data[0] if data else None)

    def _translate(self, exc: Exception, what: str, timeout_s: float | None = None) -> EngineError:
        cause = _root_cause(exc)
        where = f"tarantool at {self.address}"
        if isinstance(cause, TimeoutError):
            seconds = timeout_s or self.settings.timeout_s
            return EngineError(f"{where}: no answer to {what} within {seconds:g}s",
                               hint="is the instance overloaded or stuck? if it is just slow, raise "
                                    "timeout_s (snapshot_timeout_s for box.snapshot)")
        if isinstance(cause, OSError):
            if cause.errno == errno.ECONNREFUSED:
                # A hot standby listens only once it takes over, a starting instance once it has the WAL lock:
                # say which, when this node shows it.
                explained = explain_refused(where, self.data_paths(), LOADING_HINT)
                if explained is not None:
                    return explained
            reason = cause.strerror or str(cause) or "connection lost"
            return EngineError(f"{where}: {what} failed: {reason.lower()}",
                               hint="is tarantool running and listening there?")
        code, message = getattr(cause, "code", 0), getattr(cause, "message", "") or str(cause)
        if code == ER_BACKUP_IN_PROGRESS:
            return _backup_busy(self.address)
        if code == ER_CHECKPOINT_IN_PROGRESS:
            return _snapshot_busy(self.address)
        if code == ER_LOADING:  # every request, the login included, until box.cfg{} has finished
            return EngineError(f"{where} is still loading its data (local recovery, or bootstrap waiting for its "
                               "replication peers): it answers no request until it finishes", hint=LOADING_HINT)
        if code == ER_MISSING_SNAPSHOT:
            return EngineError(f"{where}: no checkpoint to back up ({message})",
                               hint="set snapshot_on_prepare: true, or run box.snapshot() first")
        if code in (ER_CREDS_MISMATCH, ER_NO_SUCH_USER):
            return EngineError(f"{where}: authentication as {self.settings.user!r} failed",
                               hint="check user and password_env/password_file")
        if code == ER_ACCESS_DENIED:
            return EngineError(f"{where}: {what}: {message}", hint=GRANT_HINT.replace("<user>", self.settings.user))
        if code:
            return EngineError(f"{where}: {what} failed with error {code}: {message}")
        return EngineError(f"{where}: {what} failed: {message or type(cause).__name__}")


def _backup_busy(address: str) -> EngineBusy:
    return EngineBusy(f"tarantool at {address}: a backup is already in progress (box.backup.start() by another tool)",
                      hint="wait for that backup; if it was abandoned run box.backup.stop() on the instance")


def _snapshot_busy(address: str, waited: str = "") -> EngineBusy:
    return EngineBusy(f"tarantool at {address}: a snapshot is already in progress{waited}",
                      hint="retry once box.info.gc().checkpoint_is_in_progress is false, or raise snapshot_timeout_s")


def _root_cause(exc: BaseException) -> BaseException:
    """The client wraps errors in NetworkError (even a failed login): find what actually happened."""
    seen = exc
    while True:
        nxt = seen.__cause__ or (seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None)
        if nxt is None or nxt is seen:
            return seen
        if getattr(nxt, "code", 0) and type(nxt).__name__ != "NetworkError":
            return nxt
        if isinstance(nxt, (socket.timeout, OSError)):
            return nxt
        seen = nxt


def _is_network(exc: BaseException) -> bool:
    return isinstance(_root_cause(exc), OSError) or type(exc).__name__ == "NetworkError"
