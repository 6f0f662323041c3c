"""How a run behaves: the inventory's ``policy`` (timeouts, limits, where snapshot calls are made)
and ``retention`` blocks, and the durations they are written in (``30s``, ``15m``, ``24h``).
snapctl.config builds the whole inventory on these.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from snapctl.errors import RefusedValue
from snapctl.units import MAX_DURATION_S, MAX_DURATION_WORDS
from snapctl.yaml_errors import Count, Flag

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


NOT_A_DURATION = "expected a duration like 30s, 15m, 24h, not a YAML boolean (yes/no, true/false, on/off)"
DURATION_HINT = "e.g. 30s, 15m, 24h or 7d"


def parse_duration(value: Any) -> float:
    """Seconds from ``30``, ``"30s"``, ``"15m"``, ``"24h"``, ``"7d"``; finite and at most ``MAX_DURATION_S``."""
    if isinstance(value, bool):  # a ValueError, which pydantic reports as the field's error
        raise ValueError(NOT_A_DURATION)  # noqa: TRY004
    if isinstance(value, (int, float)):
        seconds = value  # an int stays one to compare: float() of a 400-digit one raises OverflowError
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 15m, 24h, 7d)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]  # 400 digits: inf, refused below
    # YAML's .nan and .inf are floats: NaN passed every `<= 0` check and turned the RPO and the
    # drill age off (status healthy, "RPO nand"), and inf overflowed the deadlines it fed.
    if isinstance(seconds, float) and not math.isfinite(seconds):
        raise RefusedValue(f"{_shown(value)} is not a finite duration", hint=DURATION_HINT)
    if seconds > MAX_DURATION_S:
        raise RefusedValue(f"at most {MAX_DURATION_WORDS}, not {_shown(value)}", hint=DURATION_HINT)
    return float(seconds)


def _shown(value: Any) -> str:
    shown = repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def positive_duration(value: Any) -> float:
    """``parse_duration``, refusing zero: a timeout or a limit of none fails everything at once."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


# Every duration of the inventory that must be more than zero: one definition, so none is left
# without the checks above.
Duration = Annotated[float, BeforeValidator(positive_duration)]


class Strict(BaseModel):
    # No NaN or infinity in any float: pydantic's default takes YAML's .nan and .inf.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Policy(Strict):
    lease_ttl_s: Duration = 30.0
    max_freeze_s: Duration = 60.0  # a node held longer than this fails the run
    agent_timeout_s: Duration = 10.0  # per request to an agent
    prepare_timeout_s: Duration = 60.0  # the engine's time to answer a prepare, from the hold instant on
    trigger_timeout_s: Duration = 600.0  # a backup's engine snapshots (--trigger), per node
    snapshot_timeout_s: Duration = 120.0  # per node, until its create calls returned
    wait_timeout_s: Duration = 3600.0  # until every snapshot completed
    max_follower_lag: Count = 10_000  # raft entries
    max_snapshot_busy_s: Duration = 600.0  # SAVING/LOADING/DOWNLOADING longer than this is flagged
    concurrency: Count = Field(default=64, ge=1, le=4096)
    consistency: Literal["cluster", "per-node"] = "cluster"
    # Cluster mode: every prepare carries one instant to begin the hold, this far ahead of sending
    # them, so holds begin together however long N requests take to send. None: from the
    # preflight's fan-out time (at most 2 s); 0: each node holds as its prepare arrives.
    hold_lead_s: float | None = Field(default=None, ge=0)
    trigger_engine_snapshot: Flag = False
    lock_ttl_s: Duration = 120.0
    # Where snapshot calls are made: a child process of their own (its GIL is not the event loop's,
    # so hundreds of calls returning at once do not delay the completes) or threads in snapctl's.
    # auto: the child process from 50 concurrent calls on (the smaller of concurrency and nodes),
    # and one more process per 50 calls, up to 4, unless the provider's rate limit could bind; a
    # provider with an async create call (azure; aws with aiobotocore) makes it there on an event
    # loop in each process, and below 50 on snapctl's own loop; any other, below 50, in threads.
    # always / never: the blocking calls, in the child / in threads.
    provider_process: Literal["auto", "always", "never"] = "auto"

    @field_validator("lease_ttl_s", mode="after")
    @classmethod
    def _lease_within_the_agents_cap(cls, value: float) -> float:
        # Every agent refuses a longer lease (422), so every prepare of every run would fail.
        from node_agent.models import MAX_LEASE_S  # noqa: PLC0415 (pure pydantic, cheap)

        if value > MAX_LEASE_S:
            raise ValueError(f"at most {MAX_LEASE_S:g}s (1h): agents refuse longer leases")
        return value

    @field_validator("max_follower_lag", mode="after")
    @classmethod
    def _lag(cls, value: int) -> int:
        if value < 0:  # every follower, even one caught up, is further behind than that
            raise RefusedValue(f"must be 0 or more, not {value}",
                               hint="a number of raft entries, e.g. 10000 (the default)")
        return value

    @field_validator("hold_lead_s", mode="before")
    @classmethod
    def _lead(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)  # 0 is allowed: holds begin on arrival

    @field_validator("hold_lead_s", mode="after")
    @classmethod
    def _lead_within_the_agents_bound(cls, value: float | None) -> float | None:
        # Agents refuse a hold_at further ahead (400), so every prepare of every run would fail.
        from node_agent.models import MAX_HOLD_LEAD_S

        if value is not None and value > MAX_HOLD_LEAD_S:
            raise ValueError(f"at most {MAX_HOLD_LEAD_S:g}s: agents refuse a hold instant further ahead")
        return value


class Retention(Strict):
    keep_last: Count = Field(default=7, ge=1)
    daily: Count = Field(default=7, ge=0)
    weekly: Count = Field(default=4, ge=0)
    monthly: Count = Field(default=6, ge=0)
