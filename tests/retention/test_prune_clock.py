"""Retention and ``latest`` when a clock was wrong: a run stamped in the future, a backup made on a
host whose clock is behind. Over a real catalog and local snapshot store, with the real clock
(a catalog's own clock set back where a host's clock is behind)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from snapctl.catalog import Catalog, LocalBlobStore
from snapctl.config import Retention
from snapctl.events import NullReporter
from snapctl.prune import prune, prune_after_backup
from snapctl.retention import Run, decide

from .conftest import CLUSTER, Scene, inventory, snapctl_cli

KEEP_1 = {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}


def test_the_policy_neither_counts_nor_deletes_a_run_started_beyond_the_skew_and_ranks_one_within_it() -> None:
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    runs = [Run("old", now - timedelta(days=2), "succeeded"), Run("real", now - timedelta(hours=1), "succeeded"),
            Run("skewed", now + timedelta(minutes=4), "succeeded"), Run("future", now + timedelta(days=30), "succeeded")]
    plan = decide(runs, Retention(**KEEP_1), now=now)
    assert sorted(d.run.run_id for d in plan.keep) == ["future", "skewed"]
    assert [r.run_id for r in plan.ahead] == ["future"]
    assert dict((d.run.run_id, d.reasons) for d in plan.keep)["future"] == (
        "started 2024-05-31 12:00:00Z, more than 5 min ahead of this host's clock: not counted, not deleted",)


def test_the_run_a_backup_made_is_kept_whatever_its_start() -> None:
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    runs = [Run("before", now, "succeeded"), Run("made", now - timedelta(minutes=2), "succeeded")]
    plan = decide(runs, Retention(**KEEP_1), now=now, made="made")
    assert {d.run.run_id: d.reasons for d in plan.keep} == {
        "before": ("newest succeeded", "last 1/1"), "made": ("made by this backup: its own retention never deletes it",)}


def test_a_backup_on_a_host_whose_clock_is_behind_does_not_delete_itself(scene: Scene) -> None:
    # `faketime -f -1d snapctl backup` with keep_last 1 deleted the run it had just made, exit 0:
    # the earlier backup (stamped by a right clock) ranked newer.
    now = datetime.now(UTC)
    scene.add_run("earlier", now - timedelta(minutes=1))
    behind = Catalog(LocalBlobStore(scene.root / "catalog"), CLUSTER, clock=lambda: datetime.now(UTC) - timedelta(days=1))
    made = scene.add_run("made", now - timedelta(days=1))

    asyncio.run(prune_after_backup(inventory(scene, KEEP_1), behind, scene.provider, made, NullReporter(), lambda: None))

    assert scene.run_ids() == {"earlier", "made"}
    record = scene.catalog.load("made").extra["retention"]
    assert record["deleted"] == [] and len(record["warnings"]) == 1
    assert record["warnings"][0].startswith("run earlier started ")
    assert ", 24 h ahead of this host's clock (more than 5 min): " in record["warnings"][0]
    assert record["warnings"][0].endswith("retention neither counts nor deletes it; hint: check the clocks of the "
                                          "hosts that run snapctl (NTP)")


def test_a_backup_whose_clock_is_a_little_behind_keeps_its_own_run_though_an_earlier_one_ranks_newer(
        scene: Scene) -> None:
    # Within the skew the earlier run ranks by its start, and keep_last 1 keeps it: the run just made
    # (stamped two minutes earlier by a clock three minutes behind) must stay all the same.
    now = datetime.now(UTC)
    scene.add_run("older", now - timedelta(days=1))
    scene.add_run("earlier", now)
    made = scene.add_run("made", now - timedelta(minutes=2))
    behind = Catalog(LocalBlobStore(scene.root / "catalog"), CLUSTER,
                     clock=lambda: datetime.now(UTC) - timedelta(minutes=3))

    asyncio.run(prune_after_backup(inventory(scene, KEEP_1), behind, scene.provider, made, NullReporter(), lambda: None))

    assert scene.run_ids() == {"earlier", "made"}
    assert scene.catalog.load("made").extra["retention"] == {"deleted": ["older"], "kept": 2}


def test_a_run_stamped_in_the_future_takes_no_keep_slot_from_the_backups_after_it(scene: Scene) -> None:
    # After one `faketime -f +30d snapctl backup --no-prune`, every later backup with keep_last 1
    # deleted itself and the real backups, keeping only the future-stamped run.
    now = datetime.now(UTC)
    scene.add_run("real-old", now - timedelta(days=1))
    scene.add_run("future", now + timedelta(days=30))
    made = scene.add_run("made", now)
    inv = inventory(scene, KEEP_1)

    asyncio.run(prune_after_backup(inv, scene.catalog, scene.provider, made, NullReporter(), lambda: None))

    assert scene.run_ids() == {"future", "made"}
    record = scene.catalog.load("made").extra["retention"]
    assert record["deleted"] == ["real-old"]
    assert [w.split(",")[0] for w in record["warnings"]] == [f"run future started {now + timedelta(days=30):%Y-%m-%d %H:%M:%S}Z"]
    assert ", 30 days ahead of this host's clock" in record["warnings"][0]


def test_prune_and_its_dry_run_say_the_same_of_a_run_stamped_in_the_future(scene: Scene) -> None:
    now = datetime.now(UTC)
    for day in (3, 2, 1):
        scene.add_run(f"r{day}", now - timedelta(days=day))
    scene.add_run("future", now + timedelta(days=30))
    inv = inventory(scene, KEEP_1)

    dry = prune(inv, dry_run=True)
    done = prune(inv)

    for result in (dry, done):
        assert [v.run_id for v in result.deleted] == ["r3", "r2"]
        assert {v.run_id: v.reasons for v in result.kept}["future"][0].endswith("not counted, not deleted")
        assert [w.split(" started ")[0] for w in result.warnings] == ["run future"]
    assert scene.run_ids() == {"future", "r1"}


def test_prune_says_the_future_run_on_stderr(scene: Scene) -> None:
    now = datetime.now(UTC)
    scene.add_run("real", now - timedelta(hours=1))
    scene.add_run("future", now + timedelta(days=2))
    snapctl = snapctl_cli(scene)

    said = snapctl("prune", "--dry-run")

    assert said.returncode == 0, said.stderr
    warned = [line for line in said.stderr.splitlines() if line.startswith("warning: run future started ")]
    assert len(warned) == 1 and warned[0].endswith("hint: check the clocks of the hosts that run snapctl (NTP)")


def test_latest_passes_over_a_run_stamped_in_the_future_and_says_so(scene: Scene) -> None:
    # restore latest / drill latest picked the future-stamped run, with no warning.
    now = datetime.now(UTC)
    scene.add_run("real", now - timedelta(hours=1))
    scene.add_run("future", now + timedelta(days=30))
    skipped: list[str] = []

    assert scene.catalog.resolve("latest", skipped) == "real"
    assert len(skipped) == 1 and skipped[0].startswith("latest is run real, not run future, which started ")
    assert "check the clocks" in skipped[0]

    shown = snapctl_cli(scene)("show", "latest", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert '"run_id":"real"' in shown.stdout.replace(" ", "")
    assert "warning: latest is run real, not run future" in shown.stderr


def test_latest_is_the_newest_future_run_when_every_run_is_one_and_says_so(scene: Scene) -> None:
    now = datetime.now(UTC)
    scene.add_run("soon", now + timedelta(days=1))
    scene.add_run("later", now + timedelta(days=2))
    skipped: list[str] = []

    assert scene.catalog.resolve("latest", skipped) == "later"
    assert len(skipped) == 1 and skipped[0].startswith("latest is run later, which started ")
    assert "as every succeeded run did" in skipped[0]
