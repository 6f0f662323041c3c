"""DingoDB store: per-region raft snapshots through brpc's HTTP+JSON gateway, progress from raft_stat.

A store holds many regions, each its own braft group. ``trigger`` asks for a region's snapshot
with the Snapshot RPC on the store's *server* port (DebugService today; RegionControlService and
StoreService in older releases, found by probing when ``rpc_era: auto``). The RPC only queues the
snapshot, so a region counts as snapshotted when ``last_snapshot_index`` in the *raft* port's
``/raft_stat`` reaches the applied index read just before the trigger. One snapshot at a time per
store: regions go one after the other.

``prepare`` snapshots every region and waits for each, then holds: no new triggers until
``complete``. That bounds how much raft log a restore replays; it is not a cross-region point in
time (see docs/engines/dingodb.md).
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, field_validator

from node_agent.engines.base import EngineSettings
from node_agent.engines.raft_stat import RaftStatError, parse_raft_stat
from node_agent.models import EngineState, EngineStatus, JobResult, RaftGroup, VerifyFacts
from snapctl.errors import BadInputError, EngineBusy, EngineError

log = logging.getLogger("snapctl.agent.dingodb")

Era = Literal["debug", "region_control", "store"]
_SERVICES: dict[str, str] = {
    "debug": "dingodb.pb.debug.DebugService",  # since 2023-11
    "region_control": "dingodb.pb.region_control.RegionControlService",  # 2023-07..11
    "store": "dingodb.pb.store.StoreService",  # 2023-03..07
}
_PROBE_ORDER: tuple[Era, ...] = ("debug", "region_control", "store")
_OK_CODES = (None, 0, "0", "OK")
_REGION_SUFFIX = re.compile(r"(?:^|_)(\d+)$")
# Reads of raft_stat showing the region idle and behind after a Snapshot request before it is sent
# again: a request the store dropped never shows as SAVING.
_RESEND_AFTER_IDLE_READS = 4


class DingoDBSettings(EngineSettings):
    type: Literal["dingodb"] = "dingodb"
    server: str = Field(min_length=1)  # host:port of the store's service port (the Snapshot RPC)
    raft: str = Field(min_length=1)  # host:port of the store's raft port (/raft_stat)
    rpc_era: Literal["auto", "debug", "region_control", "store"] = "auto"
    regions: list[int] | Literal["all"] = "all"  # region ids to snapshot; "all": every region on the store
    snapshot_wait_s: float = Field(default=300.0, gt=0)  # per region, until its snapshot has landed
    poll_interval_s: float = Field(default=0.5, gt=0)
    data_path: str = Field(min_length=1)  # the store's data directory (holds raft.path); relative to the inventory
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("server", "raft")
    @classmethod
    def _address(cls, value: str) -> str:
        url = value if "://" in value else f"http://{value}"
        if not re.match(r"^https?://[^/\s:]+:\d{1,5}/?$", url):
            raise ValueError(f"{value!r} is not host:port")
        return url.rstrip("/")


def region_id_of(group: str) -> int | None:
    """DingoDB names a region's raft group by its id, bare (``1007``) or last (``2_XYZ_part_0_1007``)."""
    match = _REGION_SUFFIX.search(group)
    return int(match.group(1)) if match else None


class DingoRpcError(EngineError):
    """The store answered the Snapshot RPC with its own ``error`` (HTTP 200)."""


class DingoDBEngine:
    name = "dingodb"
    settings_model = DingoDBSettings
    prepare_triggers = True  # prepare snapshots every region: a backup's trigger before it is skipped

    def __init__(self, settings: DingoDBSettings, *, base_dir: Path) -> None:
        self.settings = settings
        data = Path(settings.data_path).expanduser()
        self.data_path = data if data.is_absolute() else Path(base_dir) / data
        self._client = httpx.Client(timeout=settings.timeout_s, trust_env=False)
        self._era: str | None = None if settings.rpc_era == "auto" else settings.rpc_era
        self._hold_run: str | None = None
        self._held_since: datetime | None = None
        self._state: EngineState | None = None

    # ---- the hold -----------------------------------------------------------------------

    def prepare(self, run_id: str) -> EngineState:
        if self._hold_run == run_id and self._state is not None:
            return self._state
        if self._hold_run is not None:
            raise EngineBusy(f"dingodb store {self.settings.server} is held by run {self._hold_run}",
                             hint="complete that run first")
        jobs = self._snapshot_regions(self._select_regions(None))
        failed = [job for job in jobs if job.status != "succeeded"]
        if failed:
            raise EngineError("dingodb prepare failed: " + "; ".join(f"{j.target}: {j.detail}" for j in failed))
        # Every call that can fail comes before the hold is marked: a prepare that fails holds nothing.
        groups, version = self._raft_groups(), self._version()
        now = datetime.now(timezone.utc)
        self._state = EngineState(
            engine=self.name,
            version=version,
            prepared_at=now,
            facts=_facts(groups, self._wanted_ids(groups)),
            files=[str(self.data_path)],
            raft=groups,
            details={"rpc_era": self._era, "snapshots": [job.model_dump() for job in jobs]},
        )
        self._hold_run, self._held_since = run_id, now
        return self._state

    def complete(self, run_id: str) -> None:
        if self._hold_run is not None and self._hold_run != run_id:
            log.warning("complete for run %s ignored: the store is held by run %s", run_id, self._hold_run)
            return
        self._hold_run = self._held_since = self._state = None

    # ---- engine snapshot, status, facts ----------------------------------------------------

    def trigger(self, target: str | None) -> list[JobResult]:
        if self._hold_run is not None:
            raise EngineBusy(f"dingodb store {self.settings.server} is held by run {self._hold_run}: "
                             f"no new snapshots until it completes", hint="retry after that run")
        return self._snapshot_regions(self._select_regions(target))

    def status(self) -> EngineStatus:
        held = self._hold_run is not None
        details: dict[str, Any] = {"server": self.settings.server, "raft": self.settings.raft,
                                   "rpc_era": self._era or self.settings.rpc_era, "run_id": self._hold_run}
        try:
            version = self._version()
            groups = self._raft_groups()
        except RaftStatError as exc:  # it answered, with a page we cannot read
            return EngineStatus(engine=self.name, version=version, reachable=True, held=held,
                                held_since=self._held_since, details=details, error=str(exc))
        except EngineError as exc:
            return EngineStatus(engine=self.name, reachable=False, held=held, held_since=self._held_since,
                                details=details, error=str(exc))
        details["regions"] = sorted(i for g in groups if (i := region_id_of(g.group)) is not None)
        return EngineStatus(engine=self.name, version=version, reachable=True, held=held,
                            held_since=self._held_since, raft=groups, details=details)

    def verify(self) -> VerifyFacts:
        groups = self._raft_groups()
        return _facts(groups, self._wanted_ids(groups))

    def restore_prepare(self, path: Path | None) -> None:
        # braft needs no marker: on start it loads the newest snapshot under raft.path and replays
        # the raft log after it. What matters is that every store of the cluster is restored.
        target = Path(path) if path else self.data_path
        if not target.is_dir():
            raise EngineError(f"dingodb data path {target} does not exist", hint="restore the volume first")

    def data_paths(self) -> list[Path]:
        return [self.data_path]

    def close(self) -> None:
        self._client.close()

    # ---- regions --------------------------------------------------------------------------

    def _wanted_ids(self, groups: list[RaftGroup]) -> set[int]:
        present = {i for g in groups if (i := region_id_of(g.group)) is not None}
        return present if self.settings.regions == "all" else set(self.settings.regions)

    def _select_regions(self, target: str | None) -> list[tuple[int, str]]:
        """(region id, raft group) pairs for ``target`` (a region id or group; None or "all": configured)."""
        by_id: dict[int, str] = {}
        for group in self._raft_groups():
            region = region_id_of(group.group)
            if region is not None:
                by_id.setdefault(region, group.group)
        # A target the caller named that is not here is its bad input (400); a configured region
        # missing from the store is the engine's (or its config's) failure.
        missing_here: type[EngineError | BadInputError] = BadInputError
        if target in (None, "", "all"):
            wanted = sorted(by_id if self.settings.regions == "all" else set(self.settings.regions))
            missing_here = EngineError
        elif target.isdigit():
            wanted = [int(target)]
        else:
            wanted = [region for region, group in by_id.items() if group == target]
            if not wanted:
                raise BadInputError(f"dingodb store {self.settings.raft} has no raft group {target!r}",
                                    hint=f"regions here: {', '.join(map(str, sorted(by_id))) or 'none'}")
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise missing_here(f"dingodb store {self.settings.raft} has no region {', '.join(map(str, missing))}",
                               hint=f"regions here: {', '.join(map(str, sorted(by_id))) or 'none'}")
        return [(i, by_id[i]) for i in wanted]

    def _snapshot_regions(self, regions: list[tuple[int, str]]) -> list[JobResult]:
        # Sequential on purpose: a store takes one snapshot at a time and drops a second request.
        return [self._snapshot_region(region, group) for region, group in regions]

    def _snapshot_region(self, region: int, group: str) -> JobResult:
        started = time.monotonic()
        target = f"region {region}"

        def result(status: Literal["succeeded", "failed"], detail: str, **extra: Any) -> JobResult:
            return JobResult(target=target, status=status, detail=detail,
                             duration_s=round(time.monotonic() - started, 3), extra={"group": group, **extra})

        try:
            before = self._group(group)
            wanted = before.applied_index if before.applied_index is not None else before.commit_index
            if before.last_snapshot_index is None or wanted is None:
                return result("failed", "raft_stat shows no last_snapshot_index: no snapshot storage for this region")
            if before.last_snapshot_index >= wanted:
                return result("succeeded", f"snapshot already at index {before.last_snapshot_index}",
                              snapshot_index=before.last_snapshot_index)
            self._call_snapshot(region)
            sends, idle_reads = 1, 0
            deadline = started + self.settings.snapshot_wait_s
            current = before
            while current.last_snapshot_index is None or current.last_snapshot_index < wanted:
                if time.monotonic() + self.settings.poll_interval_s > deadline:
                    return result("failed", f"last_snapshot_index stayed at {current.last_snapshot_index} "
                                  f"(snapshot_status {current.snapshot_status}), below the applied index {wanted} "
                                  f"of the trigger, for {self.settings.snapshot_wait_s}s", wanted_index=wanted,
                                  requests=sends)
                time.sleep(self.settings.poll_interval_s)
                previous, current = current, self._group(group)
                # A request that arrives while a snapshot is saving (DingoDB's own timer, or another
                # region's on this store) is answered OK and dropped: braft's EBUSY reaches only the
                # store's log. A snapshot that ended short of our index, or a region idle for a few
                # reads, means ours was dropped: ask again (a spare request costs one more snapshot).
                if _saving(current) or (current.last_snapshot_index or 0) >= wanted:
                    idle_reads = 0
                    continue
                idle_reads += 1
                ended_short = _saving(previous) or current.last_snapshot_index != previous.last_snapshot_index
                if ended_short or idle_reads >= _RESEND_AFTER_IDLE_READS:
                    self._call_snapshot(region)
                    sends, idle_reads = sends + 1, 0
        except DingoRpcError as exc:
            return result("failed", str(exc))
        return result("succeeded", f"snapshot at index {current.last_snapshot_index}",
                      snapshot_index=current.last_snapshot_index, wanted_index=wanted, requests=sends)

    # ---- the wire ---------------------------------------------------------------------------

    def _call_snapshot(self, region: int) -> None:
        eras = [self._era] if self._era else list(_PROBE_ORDER)
        for era in eras:
            service = _SERVICES[era]
            body: dict[str, Any] = {"region_id": region}
            if era == "debug":
                body = {"request_info": {"request_id": int(time.time() * 1000)}, "region_id": region}
            response = self._request("POST", f"{self.settings.server}/{service}/Snapshot", json=body)
            code = response.headers.get("x-bd-error-code")
            if response.status_code == 404 and code and self._era is None:
                log.info("dingodb store %s has no %s/Snapshot (brpc error %s)", self.settings.server, service, code)
                continue
            if response.status_code != 200:
                raise EngineError(f"dingodb {service}/Snapshot on {self.settings.server} failed with HTTP "
                                  f"{response.status_code}" + (f" (brpc error {code})" if code else "")
                                  + f": {response.text.strip()[:200]}",
                                  hint="check rpc_era and that server is the store's service port, not its raft port")
            try:
                error = (response.json() or {}).get("error") or {}
            except ValueError as exc:
                raise EngineError(f"dingodb {service}/Snapshot answered a body that is not JSON") from exc
            if error.get("errcode") not in _OK_CODES:
                raise DingoRpcError(f"dingodb refused the snapshot of region {region}: "
                                    f"{error.get('errcode')} {error.get('errmsg') or ''}".strip())
            self._era = era
            return
        raise EngineError(f"dingodb store {self.settings.server} answers none of the Snapshot RPCs "
                          f"({', '.join(_SERVICES[e] for e in _PROBE_ORDER)})",
                          hint="is server the store's service port? set rpc_era if the probe is wrong")

    def _raft_groups(self) -> list[RaftGroup]:
        return parse_raft_stat(self._raft_page(f"{self.settings.raft}/raft_stat"))

    def _group(self, group: str) -> RaftGroup:
        url = f"{self.settings.raft}/raft_stat/{quote(group, safe='')}"
        groups = [g for g in parse_raft_stat(self._raft_page(url)) if g.group == group]
        if not groups:
            raise EngineError(f"raft group {group} is gone from {self.settings.raft} (moved or deleted?)")
        return groups[0]

    def _raft_page(self, url: str) -> str:
        response = self._request("GET", url, params={"console": "1"})
        if response.status_code != 200:
            # brpc's own failure (a port without braft's builtin service): not a page to parse.
            code = response.headers.get("x-bd-error-code")
            raise EngineError(f"dingodb at {self.settings.raft} answered /raft_stat with HTTP {response.status_code}"
                              + (f" (brpc error {code})" if code else "") + f": {response.text.strip()[:200]}",
                              hint="raft must be the store's raft port (the one serving /raft_stat), not its "
                                   "server port")
        return response.text

    def _version(self) -> str | None:
        response = self._request("GET", f"{self.settings.server}/version")
        text = response.text.strip() if response.status_code == 200 else ""
        return None if text in ("", "unknown") else text  # brpc answers "unknown" when none was set

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise EngineError(f"dingodb at {url.split('/')[2]} did not answer within {self.settings.timeout_s}s",
                              hint="is the store overloaded or stuck?") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"dingodb at {url.split('/')[2]} is unreachable: {exc}",
                              hint="is the store running?") from exc


def _saving(group: RaftGroup) -> bool:
    machine = str(group.extra.get("state_machine") or "")
    return group.snapshot_status not in (None, "IDLE") or machine.startswith("Saving")


def _facts(groups: list[RaftGroup], wanted: set[int]) -> VerifyFacts:
    """Raft positions per region. Not exact: regions keep applying writes after their snapshot."""
    position: dict[str, Any] = {}
    for group in groups:
        region = region_id_of(group.group)
        if region is None or region not in wanted:
            continue
        position[f"region {region}"] = {
            "group": group.group, "role": group.role, "term": group.term, "applied_index": group.applied_index,
            "commit_index": group.commit_index, "last_log_index": group.last_log_index,
            "last_snapshot_index": group.last_snapshot_index, "last_snapshot_term": group.last_snapshot_term,
        }
    return VerifyFacts(position=position, exact=False)
