"""Prune keeps a run a drill or a restore is using: their records in the catalog say so, from
before they read the run until they finish (or their time budget runs out, for one killed outright)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

from snapctl.prune import apply, prune
from snapctl.prune_plan import plan
from snapctl.restore import RestoreRecord

from .conftest import CLUSTER, T0, Scene, inventory, snapshots_of


def _written_at(scene: Scene, key: str, when: datetime | None) -> None:
    """The record's file as written at ``when`` (the store's clock): None leaves it written now."""
    if when is not None:
        os.utime(scene.root / "catalog" / key, (when.timestamp(), when.timestamp()))


def _drill_record(scene: Scene, run_id: str, drill_id: str, started_at: datetime, *, finished: bool,
                  written_at: datetime | None = None) -> None:
    """A drill's record as snapctl drill writes it: on its start unfinished, at its end finished.
    ``written_at``: when the store wrote it (else now): a dead drill's was written long ago."""
    record = {"cluster": CLUSTER, "run_id": run_id, "drill_id": drill_id, "provider": "local",
              "started_at": started_at.isoformat(), "finished_at": (started_at + timedelta(minutes=1)).isoformat()
              if finished else None, "nodes": []}
    scene.catalog.store.write(f"{CLUSTER}/drills/{run_id}-{drill_id}.json", json.dumps(record).encode())
    _written_at(scene, f"{CLUSTER}/drills/{run_id}-{drill_id}.json", written_at)


def test_a_run_being_drilled_is_kept_until_its_drill_finishes(scene: Scene) -> None:
    for index in range(4):
        scene.add_run(f"r{index}", T0 + timedelta(days=index))
    now = datetime.now(UTC)
    _drill_record(scene, "r1", "d-live", now - timedelta(minutes=5), finished=False)
    _drill_record(scene, "r0", "d-dead", now - timedelta(hours=2), finished=False,  # killed outright, long ago
                  written_at=now - timedelta(hours=2))
    _drill_record(scene, "r2", "d-done", now - timedelta(minutes=5), finished=True)
    inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})  # drill.timeout_s: 30m

    result = prune(inv)

    assert [v.run_id for v in result.deleted] == ["r0", "r2"]
    live_since = now - timedelta(minutes=5)
    assert [(v.run_id, v.reasons) for v in result.kept] == [
        ("r3", ["newest succeeded", "last 1/1"]),
        ("r1", [f"being drilled (drill d-live, started {live_since:%Y-%m-%d %H:%M}Z)"])]
    assert scene.run_ids() == {"r1", "r3"} and snapshots_of(scene, {"r1"})

    _drill_record(scene, "r1", "d-live", now - timedelta(minutes=5), finished=True)
    assert [v.run_id for v in prune(inv).deleted] == ["r1"]


def _r0_planned_for_deletion(scene: Scene):
    """Two runs, keep_last 1: the plan deletes r0, and nothing has been applied yet."""
    scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    return inv, plan(scene.catalog, scene.provider, inv.retention, inv.drill.timeout_s)


def test_a_drill_that_begins_after_the_plan_still_spares_its_run(scene: Scene) -> None:
    inv, planned = _r0_planned_for_deletion(scene)
    assert [v.run_id for v in planned.deleted] == ["r0"]

    _drill_record(scene, "r0", "d-late", datetime.now(UTC), finished=False)
    done = apply(planned, scene.catalog, scene.provider, lambda: None, inv.drill.timeout_s)

    assert done.deleted == [] and [v.run_id for v in done.kept] == ["r1", "r0"]
    assert scene.catalog.load("r0").status == "succeeded" and snapshots_of(scene, {"r0"})


def _restore_record(scene: Scene, run_id: str, restore_id: str, started_at: datetime, *, finished: bool,
                    written_at: datetime | None = None) -> None:
    """A restore's record as snapctl restore writes it: on its start unfinished, at its end finished."""
    record = RestoreRecord(cluster=CLUSTER, run_id=run_id, restore_id=restore_id, owner="ops@host:1",
                           target="/srv/restore", started_at=started_at,
                           finished_at=started_at + timedelta(minutes=1) if finished else None,
                           outcome="restored" if finished else None)
    scene.catalog.store.write(record.key, record.model_dump_json().encode())
    _written_at(scene, record.key, written_at)


def test_a_run_being_restored_is_kept_until_its_restore_finishes(scene: Scene) -> None:
    for index in range(4):
        scene.add_run(f"r{index}", T0 + timedelta(days=index))
    now = datetime.now(UTC)
    _restore_record(scene, "r1", "x-live", now - timedelta(hours=5), finished=False)  # a long copy
    _restore_record(scene, "r0", "x-dead", now - timedelta(hours=25), finished=False,  # killed outright, long ago
                    written_at=now - timedelta(hours=25))
    _restore_record(scene, "r2", "x-done", now - timedelta(minutes=5), finished=True)
    _drill_record(scene, "r2", "d-live", now - timedelta(minutes=5), finished=False)
    inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})

    assert [v.run_id for v in prune(inv, dry_run=True).deleted] == ["r0"]
    result = prune(inv)

    assert [v.run_id for v in result.deleted] == ["r0"]
    since = now - timedelta(hours=5), now - timedelta(minutes=5)
    assert [(v.run_id, v.reasons) for v in result.kept] == [
        ("r3", ["newest succeeded", "last 1/1"]),
        ("r2", [f"being drilled (drill d-live, started {since[1]:%Y-%m-%d %H:%M}Z)"]),
        ("r1", [f"being restored (restore x-live, started {since[0]:%Y-%m-%d %H:%M}Z)"])]
    assert snapshots_of(scene, {"r1", "r2"}) and not snapshots_of(scene, {"r0"})

    _restore_record(scene, "r1", "x-live", now - timedelta(hours=5), finished=True)
    assert [v.run_id for v in prune(inv).deleted] == ["r1"]


def test_a_restore_that_read_its_run_just_before_prune_marked_it_still_keeps_it(scene: Scene) -> None:
    inv, planned = _r0_planned_for_deletion(scene)

    def restore_begins_as_the_run_is_marked() -> None:
        # A restore on record by now, which read r0's status just before the mark: still succeeded.
        if scene.catalog.load("r0").status == "pruning":
            _restore_record(scene, "r0", "x-racing", datetime.now(UTC), finished=False)

    done = apply(planned, scene.catalog, scene.provider, restore_begins_as_the_run_is_marked, inv.drill.timeout_s)

    assert done.deleted == [] and [v.run_id for v in done.kept] == ["r1", "r0"]
    assert done.kept[1].reasons[0].startswith("being restored (restore x-racing, started ")
    restored = scene.catalog.load("r0")
    assert restored.status == "succeeded" and "pruning" not in restored.extra, "unmarked: restorable again"
    assert snapshots_of(scene, {"r0"})


def test_a_record_whose_start_has_no_utc_offset_is_taken_as_utc_not_a_traceback_for_every_prune(scene: Scene) -> None:
    # A hand-edited record (or another tool's) with a naive started_at made every prune fail on
    # "can't subtract offset-naive and offset-aware datetimes".
    for index in range(3):
        scene.add_run(f"r{index}", T0 + timedelta(days=index))
    live = (datetime.now(UTC) - timedelta(minutes=5)).replace(tzinfo=None)
    scene.catalog.store.write(f"{CLUSTER}/restores/r0-x.json",
                              json.dumps({"started_at": live.isoformat(), "restore_id": "x"}).encode())
    scene.catalog.store.write(f"{CLUSTER}/drills/r1-old.json",
                              json.dumps({"started_at": "2024-03-01T00:00:00", "drill_id": "old"}).encode())
    _written_at(scene, f"{CLUSTER}/drills/r1-old.json", datetime(2024, 3, 1, tzinfo=UTC))
    inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})

    result = prune(inv)

    assert [v.run_id for v in result.deleted] == ["r1"], "a drill record two years old protects nothing"
    assert {v.run_id: v.reasons for v in result.kept}["r0"] == [
        f"being restored (restore x, started {live:%Y-%m-%d %H:%M}Z)"]
    assert scene.run_ids() == {"r0", "r2"}


def test_a_restore_whose_clock_is_behind_keeps_its_run_for_its_record_was_written_just_now(scene: Scene) -> None:
    # `LD_PRELOAD=libfaketime FAKETIME=-2d snapctl restore OLD`: its record said it began two days
    # ago, past the day a restore's record protects, so prune deleted OLD as it was being copied.
    for index in range(3):
        scene.add_run(f"r{index}", T0 + timedelta(days=index))
    behind = datetime.now(UTC) - timedelta(days=2)
    _restore_record(scene, "r0", "x-skewed", behind, finished=False)
    _drill_record(scene, "r1", "d-skewed", datetime.now(UTC) - timedelta(hours=1), finished=False)  # past 30m + 10m
    inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})

    result = prune(inv)

    assert result.deleted == [] and scene.run_ids() == {"r0", "r1", "r2"}
    assert {v.run_id: v.reasons[0].split(" (")[0] for v in result.kept} == {
        "r2": "newest succeeded", "r1": "being drilled", "r0": "being restored"}
    assert snapshots_of(scene, {"r0", "r1"})


def test_a_record_both_clocks_call_old_protects_nothing(scene: Scene) -> None:
    for index in range(2):
        scene.add_run(f"r{index}", T0 + timedelta(days=index))
    long_ago = datetime.now(UTC) - timedelta(days=2)
    _restore_record(scene, "r0", "x-dead", long_ago, finished=False, written_at=long_ago)
    inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})

    assert [v.run_id for v in prune(inv).deleted] == ["r0"]


def test_on_an_s3_catalog_a_record_is_judged_by_s3s_clock_not_its_writers(scene: Scene) -> None:
    from snapctl.catalog import Catalog
    from snapctl.catalog.s3 import S3BlobStore
    from snapctl.prune_in_use import in_use
    from tests.moto_server import DEFAULT_REGION

    from .s3_helpers import BUCKET, s3_bucket

    with s3_bucket() as server:
        store = S3BlobStore(f"s3://{BUCKET}/shared", endpoint_url=server.endpoint_url, region=DEFAULT_REGION)
        scene.catalog = Catalog(store, CLUSTER)
        for index in range(2):
            scene.add_run(f"r{index}", T0 + timedelta(days=index))
        _restore_record(scene, "r0", "x-skewed", datetime.now(UTC) - timedelta(days=2), finished=False)
        inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})

        assert store.age_s(f"{CLUSTER}/restores/r0-x-skewed.json") < 600, "just written, by S3's clock"
        assert store.age_s(f"{CLUSTER}/restores/r0-gone.json") is None
        assert (in_use(scene.catalog, "r0", inv.drill.timeout_s) or "").startswith("being restored (restore x-skewed")
        planned = plan(scene.catalog, scene.provider, inv.retention, inv.drill.timeout_s)
        done = apply(planned, scene.catalog, scene.provider, lambda: None, inv.drill.timeout_s)
        assert done.deleted == [] and scene.run_ids() == {"r0", "r1"} and snapshots_of(scene, {"r0"})
