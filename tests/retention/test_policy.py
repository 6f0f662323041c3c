"""The retention policy alone: worked examples, and properties over random histories checked
against a second, independently written statement of the rules."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapctl.config import Retention
from snapctl.retention import Run, decide

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(params=[("JST-9", 9), ("PST8PDT,M3.2.0,M11.1.0", -8)], ids=["tokyo", "los-angeles"])
def host_zone(request: pytest.FixtureRequest):
    """The process's local zone far east, then far west, of UTC: on a UTC host (CI) a period taken
    in the host's zone is the UTC one, and a test of UTC periods could not fail. POSIX TZ strings
    need no tzdata, which a slim Debian image lacks."""
    zone, hours = request.param
    saved = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        assert time.localtime(0).tm_gmtoff == hours * 3600  # the zone took: 1970-01-01 is winter in both
        yield zone
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


def daily_runs(first: datetime, days: int, hour: int = 2) -> list[Run]:
    return [Run(f"r{i:03d}", first + timedelta(days=i, hours=hour), "succeeded") for i in range(days)]


def kept_days(plan) -> list[str]:
    return sorted(f"{d.run.started_at:%m-%d}" for d in plan.keep)


def test_sixty_days_of_daily_backups_worked_by_hand() -> None:
    # 2024-01-01 .. 2024-02-29; Feb 29 2024 is the Thursday of ISO week 9.
    plan = decide(daily_runs(T0, 60), Retention(keep_last=3, daily=5, weekly=3, monthly=2))
    # last 3: 02-27..29; daily 5: 02-25..29; weekly: W09 02-29, W08 02-25, W07 02-18; monthly: 02-29, 01-31
    assert kept_days(plan) == ["01-31", "02-18", "02-25", "02-26", "02-27", "02-28", "02-29"]
    assert [f"{d.run.started_at:%m-%d}" for d in plan.delete][:3] == ["01-01", "01-02", "01-03"]  # oldest first
    reasons = {f"{d.run.started_at:%m-%d}": d.reasons for d in plan.keep}
    assert reasons["02-29"] == ("newest succeeded", "last 1/3", "daily 2024-02-29", "weekly 2024-W09", "monthly 2024-02")
    assert reasons["01-31"] == ("monthly 2024-01",)


def test_several_runs_a_day_keep_the_newest_of_each_day() -> None:
    runs = [Run(f"r{d}-{h}", T0 + timedelta(days=d, hours=h), "succeeded") for d in range(3) for h in (1, 9, 17)]
    plan = decide(runs, Retention(keep_last=1, daily=3, weekly=0, monthly=0))
    assert sorted(d.run.run_id for d in plan.keep) == ["r0-17", "r1-17", "r2-17"]


def test_days_are_utc_days(host_zone) -> None:
    plus_two = timezone(timedelta(hours=2))
    late = Run("late", datetime(2024, 3, 1, 0, 30, tzinfo=plus_two), "succeeded")  # 2024-02-29 22:30 UTC
    early = Run("early", datetime(2024, 2, 29, 8, 0, tzinfo=UTC), "succeeded")
    march = Run("march", datetime(2024, 3, 1, 8, 0, tzinfo=UTC), "succeeded")
    plan = decide([late, early, march], Retention(keep_last=1, daily=2, weekly=0, monthly=0))
    assert sorted(d.run.run_id for d in plan.keep) == ["late", "march"]


@pytest.mark.parametrize("aware", [True, False], ids=["aware", "naive"])
@pytest.mark.parametrize("period", ["daily", "weekly", "monthly"])
def test_days_weeks_and_months_are_utc_ones_in_any_host_zone(host_zone, period: str, aware: bool) -> None:
    # Sunday 2024-03-31 ends a day, an ISO week (W13) and a month at once. Half an hour either side
    # of that midnight (UTC) is the next day in Tokyo, or the day before in Los Angeles; a naive
    # time, as a hand-edited manifest has it, is UTC too.
    zone = UTC if aware else None
    times = {"sun-noon": (3, 31, 12, 0), "sun-late": (3, 31, 23, 30), "mon-early": (4, 1, 0, 30),
             "mon-noon": (4, 1, 12, 0)}
    runs = [Run(name, datetime(2024, *at, tzinfo=zone), "succeeded") for name, at in times.items()]
    plan = decide(runs, Retention(**{"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0, period: 2}))
    labels = {"daily": ("2024-03-31", "2024-04-01"), "weekly": ("2024-W13", "2024-W14"),
              "monthly": ("2024-03", "2024-04")}[period]
    assert {d.run.run_id: d.reasons[-1] for d in plan.keep} == {
        "sun-late": f"{period} {labels[0]}", "mon-noon": f"{period} {labels[1]}"}


def test_the_newest_succeeded_run_is_kept_even_by_a_policy_of_zeros() -> None:
    runs = daily_runs(T0, 10) + [Run("later-failure", T0 + timedelta(days=20), "failed")]
    plan = decide(runs, Retention.model_construct(keep_last=0, daily=0, weekly=0, monthly=0))
    assert [d.run.run_id for d in plan.keep] == ["later-failure", "r009"]


def test_failed_and_abandoned_runs_live_as_long_as_the_retained_period() -> None:
    runs = daily_runs(T0, 10) + [
        Run("failed-old", T0 + timedelta(days=3), "failed"),
        Run("running-old", T0 + timedelta(days=4), "running"),
        Run("failed-recent", T0 + timedelta(days=8, hours=5), "failed"),
        Run("running-now", T0 + timedelta(days=30), "running"),
    ]
    plan = decide(runs, Retention(keep_last=3, daily=0, weekly=0, monthly=0))  # keeps r007..r009
    assert sorted(d.run.run_id for d in plan.keep) == ["failed-recent", "r007", "r008", "r009", "running-now"]
    gone = {d.run.run_id: d.reasons for d in plan.delete}
    assert gone["failed-old"] == ("failed, older than the oldest kept run r007",)


def test_without_any_succeeded_run_nothing_goes_but_interrupted_prunes() -> None:
    runs = [Run("f1", T0, "failed"), Run("f2", T0 + timedelta(days=1), "running"),
            Run("p1", T0 + timedelta(days=2), "pruning")]
    plan = decide(runs, Retention())
    assert [d.run.run_id for d in plan.delete] == ["p1"]
    assert plan.delete[0].reasons == ("an earlier prune did not finish",)


# -- properties ------------------------------------------------------------------------------------

STATUSES = st.sampled_from(["succeeded"] * 6 + ["failed", "running", "pruning"])


@st.composite
def histories(draw) -> list[Run]:
    """Up to 60 days of runs: 0-4 a day at random minutes, mostly succeeded."""
    start = draw(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)))
    days = draw(st.integers(1, 60))
    runs = []
    for day in range(days):
        for minute in draw(st.lists(st.integers(0, 24 * 60 - 1), max_size=4, unique=True)):
            at = start + timedelta(days=day, minutes=minute)
            runs.append(Run(f"{at:%Y%m%dT%H%MZ}-{len(runs):03d}", at, draw(STATUSES)))
    return runs


policies = st.builds(Retention, keep_last=st.integers(1, 10), daily=st.integers(0, 14), weekly=st.integers(0, 8),
                     monthly=st.integers(0, 4))


def expected_kept(runs: list[Run], policy: Retention) -> set[str]:
    """The rules again, stated another way: per period, the maximum of the runs in it."""
    order = lambda r: (r.started_at, r.run_id)
    good = sorted((r for r in runs if r.status == "succeeded"), key=order, reverse=True)
    keep = {r.run_id for r in good[: max(policy.keep_last, 1)]}
    for count, period in ((policy.daily, lambda t: t.date()), (policy.weekly, lambda t: t.isocalendar()[:2]),
                          (policy.monthly, lambda t: (t.year, t.month))):
        periods = sorted({period(r.started_at) for r in good}, reverse=True)[:count]
        for p in periods:
            keep.add(max((r for r in good if period(r.started_at) == p), key=order).run_id)
    kept_good = [r for r in good if r.run_id in keep]
    oldest = min(kept_good, key=order) if kept_good else None
    for r in runs:
        if r.status in ("failed", "running") and (oldest is None or order(r) >= order(oldest)):
            keep.add(r.run_id)
    return keep


@settings(max_examples=300, deadline=None)
@given(histories(), policies)
def test_keeps_exactly_what_the_policy_says(runs: list[Run], policy: Retention) -> None:
    plan = decide(runs, policy)
    kept = {d.run.run_id for d in plan.keep}
    deleted = [d.run.run_id for d in plan.delete]
    assert kept == expected_kept(runs, policy)
    assert len(deleted) == len(set(deleted)) and kept.isdisjoint(deleted)
    assert kept | set(deleted) == {r.run_id for r in runs}
    good = sorted((r for r in runs if r.status == "succeeded"), key=lambda r: (r.started_at, r.run_id))
    if good:
        assert good[-1].run_id in kept  # never the newest succeeded
    assert all(d.run.status != "pruning" for d in plan.keep)
    starts = [(d.run.started_at, d.run.run_id) for d in plan.delete]
    assert starts == sorted(starts)  # oldest first


@settings(max_examples=100, deadline=None)
@given(histories(), policies, st.integers(1, 10))
def test_a_bigger_policy_never_keeps_less(runs: list[Run], policy: Retention, more: int) -> None:
    bigger = policy.model_copy(update={"keep_last": policy.keep_last + more, "daily": policy.daily + more})
    kept = {d.run.run_id for d in decide(runs, policy).keep if d.run.status == "succeeded"}
    assert kept <= {d.run.run_id for d in decide(runs, bigger).keep}
