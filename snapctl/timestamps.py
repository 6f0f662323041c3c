"""The one form of every time snapctl and its agents write for scripts and files (JSON output,
manifests, the catalog, agent answers, snapshot records): RFC 3339 in UTC, to the microsecond,
with a ``Z``: ``2026-12-06T02:15:03.000000Z``. Fixed width, so such times also sort as text.

Readers take any ISO 8601 time with a zone, ``+00:00`` included: manifests and catalogs written
by earlier versions (which wrote both forms) keep loading.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator, PlainSerializer, WithJsonSchema


@functools.lru_cache(maxsize=16384)
def utc_text(moment: datetime) -> str:
    """``moment`` as snapctl writes every time.

    Cached: a 1000-node run writes its manifest three times, ~4,300 times each, nearly all the
    same ones again, and one prepare's ``hold_at`` is every node's (14,000 calls a run, ~14 ms
    uncached). Equal instants in other zones are the same UTC text, so the cache cannot mix them up."""
    # Without a zone (utcoffset None) it is taken as UTC: every clock snapctl and its agents read
    # is, and so are the engines' answers (QuestDB's checkpoint time).
    if offset := moment.utcoffset():
        moment -= offset
    # By hand, not isoformat: it drops the fraction on a whole second (snapctl always writes six
    # digits, so the times sort as text), and strftime's %Y does not pad years before 1000 on
    # every libc. As quick as isoformat (~2 µs).
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (moment.year, moment.month, moment.day, moment.hour,
                                                    moment.minute, moment.second, moment.microsecond)


def as_utc(moment: datetime) -> datetime:
    """Aware UTC; a naive time (hand-edited, another tool's) is taken to be UTC already, as every
    time snapctl writes is: comparing it with an aware one would raise TypeError."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# How far a run's start may be ahead of the clock judging it (retention's, `latest`'s) and still
# rank as its start says: hosts whose clocks NTP keeps agree to well within it.
FUTURE_SKEW = timedelta(minutes=5)


def started_ahead(started_at: datetime, now: datetime) -> bool:
    """Whether a run started further ahead of ``now`` than clocks disagree: a clock was wrong."""
    return as_utc(started_at) > as_utc(now) + FUTURE_SKEW


def ahead_span(started_at: datetime, now: datetime) -> str:
    """How far ``started_at`` is ahead of ``now``, for a warning: "12 min", "5 h", "30 days"."""
    minutes = round((as_utc(started_at) - as_utc(now)).total_seconds() / 60)
    return f"{minutes} min" if minutes < 120 else f"{round(minutes / 60)} h" if minutes < 2880 else f"{round(minutes / 1440)} days"


def started_ahead_text(started_at: datetime, now: datetime) -> str:
    """What a warning says of a run stamped ahead: "started 2026-12-09 01:00:00Z, 3 days ahead of
    this host's clock (more than 5 min)"."""
    started = as_utc(started_at)
    return (f"started {started:%Y-%m-%d %H:%M:%S}Z, {ahead_span(started, now)} ahead of this host's clock "
            f"(more than {FUTURE_SKEW.seconds // 60} min)")


def parse_utc(text: str) -> datetime:
    """A time written with its zone (``Z`` or any offset) as an aware UTC time; ValueError if it
    is not one (a time without a zone says nothing certain)."""
    moment = datetime.fromisoformat(text)  # 3.11+: takes "Z"
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment.astimezone(UTC)


def utc_text_of(value: Any) -> Any:
    """A time kept as text (a snapshot's creation time, as a cloud or an older manifest wrote it)
    in snapctl's form; anything that is not a time with its zone is kept as it is, never refused:
    a manifest must not become unreadable over the spelling of a cloud's timestamp."""
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, str):
        try:
            return utc_text(parse_utc(value))
        except ValueError:
            return value
    return value


_WRITTEN = PlainSerializer(utc_text, return_type=str, when_used="json")
_SCHEMA = WithJsonSchema({"type": "string", "format": "date-time"})  # as a datetime's: OpenAPI unchanged

# A pydantic field of a time: parsed as any datetime, written by ``utc_text``.
UtcTime = Annotated[datetime, _WRITTEN, _SCHEMA]
AwareUtcTime = Annotated[AwareDatetime, _WRITTEN, _SCHEMA]
# A time kept as text, as a cloud answered it: written in the same form when it is a time.
TimeText = Annotated[str, BeforeValidator(utc_text_of)]
