"""AresDB: snapshot dimension-table shards through the debug HTTP API and wait for the job table.

``POST /dbg/{table}/{shard}/snapshot`` submits a snapshot job (it blocks until the scheduler picks
it up); ``GET /dbg/jobs/snapshot`` shows its progress (status, stage, lastError, redologFile,
batchOffset). A snapshot writes the live store to disk and checkpoints the redo log at
(redologFile, batchOffset), so a restore replays only the redo log after it.

``prepare`` snapshots every configured shard, waits for each job to succeed, then holds: no new
triggers until ``complete``. AresDB keeps taking writes meanwhile (into its redo logs, which the
disk snapshot contains), and its scheduler may still start its own snapshot jobs.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from node_agent.engines.base import EngineSettings, split_user_info
from node_agent.models import EngineState, EngineStatus, JobResult, VerifyFacts
from snapctl.errors import BadInputError, EngineBusy, EngineError

log = logging.getLogger("snapctl.agent.aresdb")

_ACTIVE = ("waiting", "ready", "running")


class AresTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    shards: list[int] = Field(default_factory=lambda: [0], min_length=1)


class AresDBSettings(EngineSettings):
    type: Literal["aresdb"] = "aresdb"
    debug_url: str = "http://127.0.0.1:43202"  # the debug port (debug_port in AresDB's config)
    tables: list[AresTable] = Field(min_length=1)  # dimension tables and the shards this node owns
    root: str = Field(min_length=1)  # AresDB's root_path (data/, metastore/); relative to the inventory
    job_wait_s: float = Field(default=300.0, gt=0)  # per shard, from submit until the job finished
    poll_interval_s: float = Field(default=0.5, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)


class AresDBEngine:
    name = "aresdb"
    settings_model = AresDBSettings
    prepare_triggers = True  # prepare snapshots every shard: a backup's trigger before it is skipped

    def __init__(self, settings: AresDBSettings, *, base_dir: Path) -> None:
        self.settings = settings
        root = Path(settings.root).expanduser()
        self.root = root if root.is_absolute() else Path(base_dir) / root
        # User info in debug_url (a proxy in front of the debug port) is sent as basic auth, never shown.
        self.url, auth = split_user_info(settings.debug_url.rstrip("/"))
        self._client = httpx.Client(base_url=self.url, auth=auth, timeout=settings.timeout_s, trust_env=False)
        self._hold_run: str | None = None
        self._held_since: datetime | None = None
        self._state: EngineState | None = None

    # ---- the hold -----------------------------------------------------------------------

    def prepare(self, run_id: str) -> EngineState:
        if self._hold_run == run_id and self._state is not None:
            return self._state
        if self._hold_run is not None:
            raise EngineBusy(f"aresdb at {self.url} is held by run {self._hold_run}", hint="complete that run first",
                             holder=self._hold_run)
        jobs = [self._snapshot_shard(table, shard) for table, shard in self._shards(None)]
        failed = [job for job in jobs if job.status != "succeeded"]
        if failed:
            raise EngineError("aresdb prepare failed: " + "; ".join(f"{j.target}: {j.detail}" for j in failed))
        now = datetime.now(timezone.utc)
        self._hold_run, self._held_since = run_id, now
        self._state = EngineState(
            engine=self.name,
            prepared_at=now,
            facts=VerifyFacts(position={job.target: _checkpoint(job.extra) for job in jobs}, exact=False),
            files=[str(self.root / "data")],
            details={"debug_url": self.url, "snapshots": [job.model_dump() for job in jobs]},
        )
        return self._state

    def complete(self, run_id: str) -> None:
        if self._hold_run is not None and self._hold_run != run_id:
            log.warning("complete for run %s ignored: aresdb is held by run %s", run_id, self._hold_run)
            return
        self._hold_run = self._held_since = self._state = None

    # ---- engine snapshot, status, facts ----------------------------------------------------

    def trigger(self, target: str | None) -> list[JobResult]:
        """``target``: None or "all", a table name, or ``table/shard`` (``table|shard`` too)."""
        if self._hold_run is not None:
            raise EngineBusy(f"aresdb at {self.url} is held by run {self._hold_run}: no new snapshots until it "
                             f"completes", hint="retry after that run")
        return [self._snapshot_shard(table, shard) for table, shard in self._shards(target)]

    def status(self) -> EngineStatus:
        held = self._hold_run is not None
        details: dict[str, Any] = {"debug_url": self.url, "run_id": self._hold_run}
        try:
            jobs = self._jobs()
        except EngineError as exc:
            return EngineStatus(engine=self.name, reachable=False, held=held, held_since=self._held_since,
                                details=details, error=str(exc))
        details["jobs"] = jobs
        failed = {key: job for key, job in sorted(jobs.items()) if job.get("status") == "failed"}
        details["failed_jobs"] = list(failed)
        # A shard whose last snapshot failed keeps its whole redo log and fails the next prepare:
        # said as the engine's error, so status shows it (the scheduler retries only on its own interval).
        error = "; ".join(f"snapshot job {key.removesuffix('|snapshot').replace('|', '/')} failed at stage "
                          f"{job.get('stage') or '?'} (run {job.get('lastRun') or '?'}): "
                          f"{_error_text(job.get('lastError'))}" for key, job in failed.items())
        if error:
            error += " (hint: see the aresdb log; snapctl trigger TABLE/SHARD runs it again)"
        return EngineStatus(engine=self.name, reachable=True, held=held, held_since=self._held_since, details=details,
                            error=error or None)

    def verify(self) -> VerifyFacts:
        """Each configured shard's last checkpoint and the mutations since: positions, not row counts."""
        jobs = self._jobs()
        position: dict[str, Any] = {}
        for table, shard in self._shards(None):
            job = jobs.get(_job_key(table, shard)) or {}
            position[f"{table}/{shard}"] = {**_checkpoint(job), "num_mutations": job.get("numMutations"),
                                            "last_run": job.get("lastRun")}
        return VerifyFacts(position=position, exact=False)

    def restore_prepare(self, path: Path | None) -> None:
        # AresDB bootstraps from the newest snapshot directory and replays the redo logs after it:
        # no marker to write. Check that what was restored looks like an AresDB root.
        root = Path(path) if path else self.root
        if not (root / "data").is_dir():
            raise EngineError(f"aresdb root {root} has no data/ directory", hint="restore the volume first")

    def data_paths(self) -> list[Path]:
        return [self.root]

    def close(self) -> None:
        self._client.close()

    # ---- helpers --------------------------------------------------------------------------

    def _shards(self, target: str | None) -> list[tuple[str, int]]:
        configured = [(table.name, shard) for table in self.settings.tables for shard in table.shards]
        if target in (None, "", "all"):
            return configured
        name, _, shard = target.replace("|", "/").partition("/")
        if not shard:
            chosen = [(t, s) for t, s in configured if t == name]
            if not chosen:
                raise BadInputError(f"aresdb table {name!r} is not configured for this node",
                                    hint="add it to engine.tables or name it as table/shard")
            return chosen
        if not shard.isdigit():
            raise BadInputError(f"aresdb target {target!r}: shard must be a number (table/shard)",
                                hint=f"e.g. {name}/0")
        return [(name, int(shard))]

    def _snapshot_shard(self, table: str, shard: int) -> JobResult:
        started = time.monotonic()
        deadline = started + self.settings.job_wait_s
        target = f"{table}/{shard}"

        def result(status: Literal["succeeded", "failed"], detail: str, job: dict[str, Any] | None = None) -> JobResult:
            return JobResult(target=target, status=status, detail=detail,
                             duration_s=round(time.monotonic() - started, 3), extra=dict(job or {}))

        key = _job_key(table, shard)
        # Transport failures propagate: an engine that does not answer fails the whole call at once.
        before = self._jobs().get(key) or {}
        refusal = self._submit(table, shard, deadline)
        if refusal:
            return result("failed", refusal)
        seen_active = False
        while True:
            job = self._jobs().get(key) or {}
            status = job.get("status")
            fresh = seen_active or (job and job.get("lastStartTime") != before.get("lastStartTime"))
            if fresh and status == "succeeded":
                return result("succeeded", f"redo log checkpointed at {job.get('redologFile')}/"
                              f"{job.get('batchOffset')} (stage {job.get('stage') or 'complete'})", job)
            if fresh and status == "failed":
                return result("failed", f"snapshot job failed at stage {job.get('stage') or '?'}: "
                              f"{_error_text(job.get('lastError'))}", job)
            seen_active = seen_active or status in _ACTIVE
            if time.monotonic() + self.settings.poll_interval_s > deadline:
                return result("failed", f"snapshot job still {status or 'not listed'} (stage "
                              f"{job.get('stage') or '?'}) after {self.settings.job_wait_s}s", job)
            time.sleep(self.settings.poll_interval_s)

    def _submit(self, table: str, shard: int, deadline: float) -> str | None:
        """Submit the job; a refusal is returned as text (one shard's failure is not the whole run's)."""
        path = f"/dbg/{quote(table, safe='')}/{shard}/snapshot"
        # The handler answers once the scheduler has picked the job up: allow the whole job wait.
        wait = max(self.settings.timeout_s, deadline - time.monotonic())
        try:
            response = self._request("POST", path, read_timeout=wait)
        except EngineError as exc:
            # It answered nothing for the whole wait: the scheduler's one job executor is busy, not
            # AresDB gone; this shard fails and the next is tried.
            if not isinstance(exc.__cause__, httpx.ReadTimeout):
                raise
            return (f"the scheduler did not start the snapshot job within job_wait_s "
                    f"({self.settings.job_wait_s:g}s): another job such as archiving or backfill may be running; "
                    "see the aresdb log")
        if response.status_code == 200 and not response.content.strip():
            return "snapshot jobs are disabled on this aresdb (empty answer to the snapshot request)"
        if response.status_code != 200:
            try:
                message = response.json().get("message")
            except (ValueError, AttributeError):
                message = None
            said = message or response.text.strip()[:200]
            return f"aresdb refused the snapshot (HTTP {response.status_code}): {said}"
        return None

    def _jobs(self) -> dict[str, dict[str, Any]]:
        response = self._request("GET", "/dbg/jobs/snapshot")
        try:
            jobs = response.json()
        except ValueError:
            jobs = None
        if response.status_code != 200 or not isinstance(jobs, dict):
            raise EngineError(f"aresdb at {self.url} answered /dbg/jobs/snapshot with HTTP {response.status_code} "
                              f"and no job table", hint="is debug_url AresDB's debug port (43202)?")
        return jobs

    def _request(self, method: str, path: str, *, read_timeout: float | None = None) -> httpx.Response:
        limit = self.settings.timeout_s
        timeout = httpx.Timeout(limit, read=read_timeout if read_timeout is not None else limit)
        try:
            return self._client.request(method, path, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise EngineError(f"aresdb at {self.url} did not answer {method} {path} in time",
                              hint="is the server overloaded or stuck?") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"aresdb at {self.url} is unreachable: {exc}", hint="is aresdb running?") from exc


def _job_key(table: str, shard: int) -> str:
    return f"{table}|{shard}|snapshot"


def _checkpoint(job: dict[str, Any]) -> dict[str, Any]:
    return {"redolog_file": job.get("redologFile"), "batch_offset": job.get("batchOffset")}


def _error_text(error: Any) -> str:
    # Go marshals an ``error`` field as {} (its fields are unexported): nothing more to show.
    if isinstance(error, str) and error:
        return error
    if isinstance(error, dict) and error:
        return str(error.get("message") or error)
    return "no error text reported"
