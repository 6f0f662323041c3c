"""Wire and data models shared by the agent, its engines and snapctl.

Pure pydantic, cheap to import: snapctl imports this module without the agent's web stack.
Everything here is versioned under the agent's ``/v1`` API; add fields, never repurpose them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from snapctl.timestamps import UtcTime

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_LEASE_S = 3600.0
# The longest hold lead snapctl may be configured with (policy.hold_lead_s; its automatic lead is
# at most 2 s, 0.17 s for 1000 nodes over TLS). An agent accepts a ``hold_at`` that far ahead of its
# clock plus 1 s, as snapctl's host may be a little ahead of it (NTP keeps them milliseconds
# apart); further ahead is a clock problem, or a prepare that only means to keep a connection busy.
MAX_HOLD_LEAD_S = 10.0
MAX_HOLD_AT_AHEAD_S = MAX_HOLD_LEAD_S + 1.0


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- one raft model for every engine that has one ---------------------------------------

RaftRole = Literal["leader", "follower", "candidate", "learner", "witness", "transferring", "error", "unknown"]


class ReplicationProgress(Model):
    """How far one follower is behind, as the leader (or the follower itself) sees it."""

    peer: str
    state: str | None = None  # e.g. braft idle|appending|blocking|installing snapshot; tarantool follow|...
    next_index: int | None = None
    match_index: int | None = None
    lag_entries: int | None = None
    lag_seconds: float | None = None
    consecutive_errors: int = 0
    error: str | None = None
    # Which link ``error`` is about, from the reporter: "to_peer" (a leader's replicator, tarantool's
    # downstream), "from_peer" (tarantool's upstream: the reporter not receiving from the peer), "both".
    error_direction: Literal["to_peer", "from_peer", "both"] = "to_peer"


class RaftGroup(Model):
    """One raft group as seen from one member: a DingoDB region, a Tarantool replica set, an etcd cluster."""

    group: str
    member: str  # this member's id (peer id, instance uuid, member id)
    role: RaftRole = "unknown"
    term: int | None = None
    leader: str | None = None
    commit_index: int | None = None
    applied_index: int | None = None
    last_log_index: int | None = None
    last_log_term: int | None = None
    last_snapshot_index: int | None = None
    last_snapshot_term: int | None = None
    snapshot_status: str | None = None  # IDLE|SAVING|LOADING|DOWNLOADING (braft) or engine's own
    peers: list[str] = Field(default_factory=list)
    conf_changing: bool = False
    replication: list[ReplicationProgress] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)  # engine-specific fields and unknown lines


# ---- engine data ---------------------------------------------------------------------------


class TableFacts(Model):
    rows: int
    checksum: str | None = None


class VerifyFacts(Model):
    """What a restore must reproduce. ``exact``: restored data must equal these facts; otherwise
    the restored data may be newer (the engine keeps writing its log while the disk is copied)
    and must hold at least as many rows."""

    tables: dict[str, TableFacts] = Field(default_factory=dict)
    position: dict[str, Any] = Field(default_factory=dict)  # lsn, vclock, revision, raft indexes
    exact: bool = True


class EngineState(Model):
    """What an engine reports when it is prepared: the evidence a drill checks later."""

    engine: str
    version: str | None = None
    prepared_at: UtcTime
    facts: VerifyFacts = Field(default_factory=VerifyFacts)
    files: list[str] = Field(default_factory=list)  # files the disk snapshot must contain
    raft: list[RaftGroup] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)


class EngineStatus(Model):
    engine: str
    version: str | None = None
    reachable: bool
    held: bool = False
    held_by: str | None = None  # who holds the engine when it is not this agent
    held_since: UtcTime | None = None
    raft: list[RaftGroup] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


JobStatus = Literal["succeeded", "failed", "running"]


class JobResult(Model):
    target: str
    status: JobStatus
    detail: str | None = None
    duration_s: float | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


# ---- agent API (/v1) -----------------------------------------------------------------------


class Request(Model):
    """A request body the agent parses: strict, so a value of the wrong JSON type is refused (422)
    rather than coerced (``"lease_s": "30"`` as 30, ``true`` as 1). An integer still counts where a
    number of seconds goes: JSON has one number type, and ``30`` is how most clients write thirty."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # JSON NaN, Infinity: Python reads them


def _iso_time_only(value: Any) -> Any:
    # JSON has no time type: the only way to send one is an ISO 8601 string. Lax datetime parsing
    # would also take a number as Unix seconds, which no client of this API means.
    if isinstance(value, str):
        return value
    raise PydanticCustomError("datetime_type", "input should be an ISO 8601 time with its zone")


def _with_zone(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise PydanticCustomError("timezone_aware", "input should have a time zone")
    return value


# strict=False lets the string be parsed into a datetime; the validators keep it to strings with a zone.
IsoTime = Annotated[datetime, Field(strict=False), BeforeValidator(_iso_time_only), AfterValidator(_with_zone)]


class PrepareRequest(Request):
    run_id: str = Field(pattern=RUN_ID_PATTERN)
    lease_s: float = Field(gt=0, le=MAX_LEASE_S)
    # The instant (UTC, the agent's clock) to begin the hold: every node of a cluster is sent the
    # same one, so their holds begin together however long sending N prepares takes. A prepare
    # that arrives later holds at once; absent, the hold begins on arrival.
    hold_at: IsoTime | None = None


class RenewRequest(Request):
    run_id: str = Field(pattern=RUN_ID_PATTERN)
    lease_s: float | None = Field(default=None, gt=0, le=MAX_LEASE_S)


class CompleteRequest(Request):
    run_id: str = Field(pattern=RUN_ID_PATTERN)


class TriggerRequest(Request):
    target: str | None = Field(default=None, max_length=256)


class RestorePrepareRequest(Request):
    path: str | None = Field(default=None, max_length=4096)
    # True: answer what restore-prepare would say of ``path`` (204, or its 400 or 409) without
    # touching the engine. snapctl asks before restoring anything, as only this agent can resolve
    # the path on its own host; an agent older than the field refuses it (422), acting on nothing.
    check_only: bool = False


class LeaseInfo(Model):
    run_id: str
    acquired_at: UtcTime
    expires_at: UtcTime


class PrepareResponse(Model):
    run_id: str
    lease: LeaseInfo
    state: EngineState


LOST_ON_ENGINE = "lost on the engine before complete"  # a CompleteResponse.ended: an engine restart, say
# A CompleteResponse.ended: the agent that held was killed, and the one started since released the
# hold from its record (docs/agent.md, "An engine left held").
LOST_WITH_AGENT = "lost with the agent, killed while it held"


class CompleteResponse(Model):
    run_id: str
    released: bool  # False when this run's hold had already ended (idempotent repeat, or expired)
    held_for_s: float | None = None
    ended: str | None = None  # released false: how it had ended ("expired", "completed", LOST_ON_ENGINE, ...)


class TriggerResponse(Model):
    jobs: list[JobResult]


class AgentStatus(Model):
    node: str
    agent_version: str
    engine: EngineStatus
    lease: LeaseInfo | None = None
    data_paths: list[str] = Field(default_factory=list)
    # Where restore-prepare may act besides data_paths (a scratch agent's config); None: not set.
    restore_root: str | None = None
    free_bytes: int | None = None
    # The `engine: type` of the agent's config, the entry point it was built from: an alias or a
    # subclass of another engine may carry that one's ``engine.engine``. None from older agents.
    engine_type: str | None = None
    # The runs whose prepare has arrived and is not answered yet (waiting for its hold_at, for the
    # engine, or in its prepare call): holds about to begin, which no lease shows. None from older agents.
    preparing: list[str] | None = None


class Health(Model):
    status: Literal["ok"] = "ok"
    agent_version: str


class ErrorBody(Model):
    """Every non-2xx answer of the agent: ``{"error": "...", "hint": "..."}``."""

    error: str
    hint: str | None = None
    holder: str | None = None  # run id holding the lease, on 409
