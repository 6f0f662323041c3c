"""Retention policy, pure: which runs to keep given their start times, statuses and the inventory's
``retention`` block. No I/O here, so the rules can be property-tested; `snapctl.prune` applies them.

The rules (docs/retention.md), over *succeeded* runs, newest first, days in UTC:

- ``keep_last: N``  the N newest runs;
- ``daily: D``      the newest run of each of the D most recent days that have a run;
- ``weekly: W``     the same per ISO week (Monday to Sunday);
- ``monthly: M``    the same per calendar month;
- the newest succeeded (counted) run is always kept, whatever the numbers say.

A run kept by any rule is kept. Only a succeeded run whose snapshots are known to be complete is
counted: one with a ``doubt`` (made with `backup --no-wait`, and its snapshots since found failed,
missing or still pending) is treated like a failed run, and one that must be ``held`` (nobody
could tell: the cloud did not answer) is kept without being counted. Runs that did not succeed
hold no usable backup but are the record of what went wrong: a ``failed`` or ``running`` run is
kept while it is newer than the oldest kept succeeded run, and deleted once older (a later run
took the cluster lock after it, so it is over or abandoned). With no succeeded run at all, nothing
is deleted. A ``pruning`` run was chosen by an earlier prune that did not finish: it goes.

Given ``now`` (the deciding process's clock), a succeeded run that started more than
``FUTURE_SKEW`` after it is kept without being counted: a clock was wrong when it was stamped or
is wrong now, and ranked by its start it would take the newest place for as long as the error
lasts, so that every later backup went in its own retention. Given ``made`` (a backup's own run),
that run is kept whatever its start and the numbers say.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime

from snapctl.config import Retention
from snapctl.timestamps import FUTURE_SKEW, as_utc, started_ahead

SUCCEEDED = "succeeded"
PRUNING = "pruning"
MADE = "made by this backup: its own retention never deletes it"


@dataclass(frozen=True)
class Run:
    """What the policy needs to know about one run."""

    run_id: str
    started_at: datetime
    status: str
    # Why a succeeded run is no backup to count: its snapshots are not known to be complete.
    doubt: str | None = None
    held: bool = False  # with a doubt: whether they are complete could not be told; never deleted


@dataclass(frozen=True)
class Decision:
    run: Run
    keep: bool
    reasons: tuple[str, ...]  # why it is kept, or why it goes


@dataclass(frozen=True)
class RetentionPlan:
    decisions: tuple[Decision, ...]  # newest first
    ahead: tuple[Run, ...] = ()  # succeeded runs kept uncounted: they started after now + FUTURE_SKEW

    @property
    def keep(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    @property
    def delete(self) -> list[Decision]:
        """Runs to delete, oldest first: an interrupted prune has removed the oldest ones."""
        return [d for d in reversed(self.decisions) if not d.keep]


def newest_first(runs: Iterable[Run]) -> list[Run]:
    # The same order as the catalog's index: start time, then run id, both descending.
    return sorted(runs, key=lambda r: (as_utc(r.started_at), r.run_id), reverse=True)


def day_of(moment: datetime) -> str:
    return f"{as_utc(moment):%Y-%m-%d}"


def week_of(moment: datetime) -> str:
    year, week, _ = as_utc(moment).isocalendar()
    return f"{year}-W{week:02d}"


def month_of(moment: datetime) -> str:
    return f"{as_utc(moment):%Y-%m}"


def decide(runs: Iterable[Run], policy: Retention, *, now: datetime | None = None,
           made: str | None = None) -> RetentionPlan:
    """The policy over ``runs``; ``now``: runs that started after it (beyond ``FUTURE_SKEW``) are
    kept and not counted; ``made``: the run a backup just made, never deleted by its retention."""
    ordered = newest_first(runs)
    ahead = [r for r in ordered if now is not None and r.run_id != made and r.status == SUCCEEDED
             and r.doubt is None and started_ahead(r.started_at, now)]
    ahead_ids = {r.run_id for r in ahead}
    succeeded = [r for r in ordered if r.status == SUCCEEDED and r.doubt is None and r.run_id not in ahead_ids]
    reasons: dict[str, list[str]] = {r.run_id: [] for r in succeeded}

    if succeeded:
        reasons[succeeded[0].run_id].append("newest succeeded")
    for rank, run in enumerate(succeeded[: policy.keep_last], start=1):
        reasons[run.run_id].append(f"last {rank}/{policy.keep_last}")
    for label, count, bucket in (("daily", policy.daily, day_of), ("weekly", policy.weekly, week_of),
                                 ("monthly", policy.monthly, month_of)):
        for run, period in _newest_per_period(succeeded, count, bucket):
            reasons[run.run_id].append(f"{label} {period}")

    if made in reasons and not reasons[made]:  # ranked out by a start older than the others' (a clock behind)
        reasons[made].append(MADE)
    kept = [r for r in succeeded if reasons[r.run_id]]
    oldest_kept = kept[-1] if kept else None
    decisions = []
    for run in ordered:
        if run.run_id in ahead_ids:
            decisions.append(Decision(run, True, (f"started {as_utc(run.started_at):%Y-%m-%d %H:%M:%S}Z, more than "
                                                   f"{FUTURE_SKEW.seconds // 60} min ahead of this host's clock: not "
                                                   "counted, not deleted",)))
        elif run.status == SUCCEEDED and run.doubt is not None and run.held:
            decisions.append(Decision(run, True, (f"{run.doubt}: not counted, not deleted",)))
        elif run.status == SUCCEEDED and run.doubt is not None:  # no backup: the record of one that failed
            if oldest_kept is not None and _older(run, oldest_kept):
                why = f"{run.doubt}, older than the oldest kept run {oldest_kept.run_id}"
                decisions.append(Decision(run, False, (why,)))
            else:
                decisions.append(Decision(run, True, (f"{run.doubt}: not counted",)))
        elif run.status == SUCCEEDED:
            kept_for = reasons[run.run_id]
            decisions.append(Decision(run, bool(kept_for), tuple(kept_for) or ("outside the retention policy",)))
        elif run.status == PRUNING:
            decisions.append(Decision(run, False, ("an earlier prune did not finish",)))
        elif oldest_kept is not None and _older(run, oldest_kept):
            decisions.append(Decision(run, False, (f"{run.status}, older than the oldest kept run {oldest_kept.run_id}",)))
        else:
            decisions.append(Decision(run, True, (f"{run.status}, within the retained period",)))
    decisions = [Decision(d.run, True, (*d.reasons, MADE)) if d.run.run_id == made and not d.keep else d
                 for d in decisions]
    return RetentionPlan(tuple(decisions), tuple(ahead))


def _newest_per_period(
    newest_first_runs: list[Run], count: int, bucket: Callable[[datetime], Hashable]
) -> list[tuple[Run, Hashable]]:
    """The first (newest) run of each of the ``count`` most recent periods that have a run."""
    chosen: list[tuple[Run, Hashable]] = []
    seen: set[Hashable] = set()
    for run in newest_first_runs:
        if len(chosen) >= count:
            break
        period = bucket(run.started_at)
        if period not in seen:
            seen.add(period)
            chosen.append((run, period))
    return chosen


def _older(run: Run, than: Run) -> bool:
    return (as_utc(run.started_at), run.run_id) < (as_utc(than.started_at), than.run_id)
