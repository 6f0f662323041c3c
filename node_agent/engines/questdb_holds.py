"""Which QuestDB checkpoint is whose (node_agent/engines/questdb.py). The checkpoint belongs to the
server, not to a connection: any client may take or release it, so the adapter tells its own from
another client's by when the server says it began, against when its create ran."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from snapctl.errors import EngineBusy
from snapctl.timestamps import utc_text


@dataclass(frozen=True)
class Verbs:
    create: str
    release: str
    directory: str  # what the server writes under root while held


CHECKPOINT = Verbs("CHECKPOINT CREATE", "CHECKPOINT RELEASE", ".checkpoint")
LEGACY = Verbs("SNAPSHOT PREPARE", "SNAPSHOT COMPLETE", "snapshot")
CLOCK_SLACK_S = 1.0
# checkpoint_status() gives the start in microseconds, its resolution: our checkpoint read again is
# the same instant, and another client's, taken once ours ended, may begin a millisecond later.
SAME_START_S = 0.000001
# A create runs late behind a queue or a slow sync: seconds. A checkpoint begun later than this
# after an unconfirmed create was sent is not taken for that create's (``late_create_window_s``):
# the wider the window, the longer another client's checkpoint can be taken for ours and released.
DEFAULT_LATE_CREATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class Unconfirmed:
    """A create whose answer was lost (timeout, reset): the server may hold a checkpoint we made,
    now or later, for a create queued or slow on the server runs after the client gave up."""

    run_id: str
    verbs: Verbs
    sent: datetime
    window_s: float

    def may_be(self, since: datetime | None) -> bool:
        if since is None:  # servers without checkpoint_status() cannot tell: assume it is ours
            return True
        return began_within(since, self.sent, min(datetime.now(timezone.utc), self.too_late))

    @property
    def too_late(self) -> datetime:
        return self.sent + timedelta(seconds=self.window_s)


def foreign_hold(url: str, since: datetime | None, server_message: str | None = None) -> EngineBusy:
    when = f" since {utc_text(since)}" if since else ""
    said = f" (questdb: {server_message})" if server_message else ""
    return EngineBusy(
        f"questdb at {url} is held by a checkpoint{when} that this agent did not make{said}",
        hint="let its owner release it (CHECKPOINT RELEASE, or SNAPSHOT COMPLETE before 8.1.1), "
             "or set force_release: true for this node",
    )


def same_start(since: datetime, ours: datetime) -> bool:
    return abs((since - ours).total_seconds()) <= SAME_START_S


def began_within(since: datetime, first: datetime, last: datetime) -> bool:
    """Whether a checkpoint the server says began at ``since`` may be one a create run between
    ``first`` and ``last`` (the agent's clock) made: the two clocks may differ by the slack."""
    slack = timedelta(seconds=CLOCK_SLACK_S)
    return first - slack <= since <= last + slack


def parse_timestamp(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
