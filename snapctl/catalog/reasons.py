"""What the catalog says of runs it cannot use: a manifest a newer snapctl wrote, and the newer
runs `latest` passed over because their manifests cannot be read or they started in the future."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime

from snapctl import __version__
from snapctl.manifest import IndexEntry
from snapctl.timestamps import ahead_span, as_utc, started_ahead_text


def newer_snapctl(data: bytes, errors: list) -> str | None:
    """Why a manifest whose only fault is fields this snapctl does not know cannot be used, when a
    newer snapctl wrote it (a standby or CI host not upgraded yet): not damage, and not to be
    guessed at, for a restore must not leave out what a newer version recorded for it. None when
    the version it names is not newer: then it is damage (a hand edit), said as such."""
    written = version_of(json.loads(data).get("snapctl_version"))
    if written is None or written <= (version_of(__version__) or ()):
        return None
    fields = sorted({".".join(str(part) for part in e["loc"]) for e in errors})
    shown = ", ".join(fields[:3]) + (f" and {len(fields) - 3} more" if len(fields) > 3 else "")
    return (f"written by snapctl {'.'.join(map(str, written))}, with fields this snapctl ({__version__}) does not "
            f"know ({shown}): upgrade snapctl on this host to read it")


def version_of(text: object) -> tuple[int, ...] | None:
    """``1.2.3`` (any suffix after the numbers ignored) as numbers to compare; None if it is none."""
    match = re.match(r"(\d+(?:\.\d+)*)", text) if isinstance(text, str) else None
    return tuple(int(part) for part in match[1].split(".")) if match else None


def skipped_newer(chosen: IndexEntry, problems: dict[str, str], indexed: dict[str, IndexEntry],
                   where: Callable[[str], str]) -> list[str]:
    """A warning for each run with a problem that the index does not show older than ``chosen``."""
    warnings = []
    for run_id, why in sorted(problems.items()):
        line = indexed.get(run_id)
        # A line the index lost (it drops an unreadable manifest's): a run id is its start, as snapctl makes them.
        started = as_utc(line.started_at) if line is not None else stamped(run_id)
        if line is not None and (started, run_id) <= (as_utc(chosen.started_at), chosen.run_id):
            continue  # older: never what latest names
        if line is None and started is not None and started < as_utc(chosen.started_at).replace(microsecond=0):
            continue  # older by its id, to the second
        age = f"started {started:%Y-%m-%d %H:%M:%S}Z" if started is not None else "of unknown age"
        listed = f"listed as {line.status}" if line is not None else "not in the index"
        why = why if why.startswith("its manifest") else f"its manifest {where(run_id)} cannot be read: {why}"
        warnings.append(f"latest is run {chosen.run_id}, not run {run_id} ({age}, {listed}): {why}")
    return warnings


def ahead_warning(chosen: IndexEntry, passed: IndexEntry, now: datetime) -> str:
    """Why ``latest`` is ``chosen``: ``passed`` started in the future by this host's clock (or
    ``chosen`` did, as every succeeded run did)."""
    when = started_ahead_text(passed.started_at, now)
    said = (f"latest is run {chosen.run_id}, which {when}, as every succeeded run did" if passed is chosen else
            f"latest is run {chosen.run_id}, not run {passed.run_id}, which {when}: its real age is unknown")
    return f"{said}; hint: check the clocks of the hosts that run snapctl (NTP), or name the run to use"


def behind_warning(chosen: IndexEntry, written: datetime, now: datetime) -> str:
    """Why ``latest`` is ``chosen`` though it started in the future by this host's clock: the
    store wrote its manifest after its start, by the store's clock, so this host's clock is behind."""
    started = as_utc(chosen.started_at)
    return (f"latest is run {chosen.run_id}, which started {started:%Y-%m-%d %H:%M:%S}Z, {ahead_span(started, now)} "
            f"ahead of this host's clock, but the catalog's store wrote its manifest at "
            f"{as_utc(written):%Y-%m-%d %H:%M:%S}Z: this host's clock is behind the catalog's; "
            "hint: check this host's clock (NTP)")


def stamped(run_id: str) -> datetime | None:
    try:
        return datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
