"""Runs made with `backup --no-wait`: counted by retention only once the provider says their
snapshots completed. One whose snapshots failed after it (a cloud snapshot in error, a local one
its host restarted before syncing) once counted, and cost the last good backup its place."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from snapctl.errors import ProviderError
from snapctl.prune import prune
from snapctl.render.retention import prune_document

from .conftest import T0, Scene, inventory

KEEP_ONE = {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}


def _restarted_before_sync(scene: Scene, run_id: str) -> None:
    """The host restarted after the --no-wait run, before its snapshots were synced: in error for good."""
    for ref in scene.catalog.load(run_id).snapshot_refs():
        meta_path = Path(ref.extra["path"]) / "snapshot.json"
        meta = json.loads(meta_path.read_text())
        meta["boot_id"] = "an-earlier-boot"
        meta_path.write_text(json.dumps(meta))


def _reasons(result) -> dict[str, list[str]]:
    return {v.run_id: v.reasons for v in [*result.kept, *result.deleted]}


def test_a_no_wait_run_whose_snapshots_failed_never_costs_the_last_good_backup_its_place(scene: Scene) -> None:
    scene.add_run("r1-good", T0)
    scene.add_run("r2-nowait", T0 + timedelta(days=1), waited=False)
    _restarted_before_sync(scene, "r2-nowait")
    inv = inventory(scene, KEEP_ONE)

    planned = prune(inv, dry_run=True)
    done = prune(inv)

    assert scene.run_ids() == {"r1-good", "r2-nowait"} and not done.deleted
    why = ("its snapshots did not complete (backup --no-wait): snapshot r2-nowait-n1-data is in error: was not yet "
           "on disk when the host restarted; it may be incomplete (and 1 more): not counted")
    assert _reasons(planned) == _reasons(done) == {"r1-good": ["newest succeeded", "last 1/1"], "r2-nowait": [why]}
    assert prune_document(planned)["kept"][0]["reasons"] == [why], "-o json says why it was not counted"

    # A later good backup takes the place of both: the failed one is only the record of a failure.
    scene.add_run("r3-good", T0 + timedelta(days=2))
    assert prune(inv).ok and scene.run_ids() == {"r3-good"}


def test_a_no_wait_run_found_complete_counts_and_is_recorded_so_the_provider_is_asked_once(
        scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    scene.add_run("r1", T0)
    late = scene.add_run("r2", T0 + timedelta(days=1), waited=False)
    scene.provider.wait(late.snapshot_refs(), deadline=float("inf"))  # completed since, as a cloud's do
    inv = inventory(scene, KEEP_ONE)

    planned = prune(inv, dry_run=True)
    assert planned.confirmed == ["r2"] and [v.run_id for v in planned.deleted] == ["r1"]
    assert not scene.catalog.load("r2").snapshots_completed, "a dry run writes nothing"

    done = prune(inv)

    assert scene.run_ids() == {"r2"} and done.confirmed == ["r2"]
    assert scene.catalog.load("r2").snapshots_completed
    asked = []
    monkeypatch.setattr(type(scene.provider), "describe", lambda self, refs: asked.append(refs) or [])
    assert prune(inv).ok and not asked and scene.run_ids() == {"r2"}


def test_a_no_wait_run_the_provider_cannot_answer_for_is_neither_counted_nor_deleted(
        scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    scene.add_run("r1", T0)
    scene.add_run("r2", T0 + timedelta(days=1), waited=False)
    scene.add_run("r3", T0 + timedelta(days=2), waited=False)

    def unreachable(self, refs):
        raise ProviderError("cannot reach the cloud: connection refused")

    monkeypatch.setattr(type(scene.provider), "describe", unreachable)
    done = prune(inventory(scene, KEEP_ONE))

    assert scene.run_ids() == {"r1", "r2", "r3"} and not done.deleted
    held = ("whether its snapshots completed is unknown (backup --no-wait): the provider could not say: cannot reach "
            "the cloud: connection refused: not counted, not deleted")
    assert _reasons(done) == {"r3": [held], "r2": [held], "r1": ["newest succeeded", "last 1/1"]}


def test_a_no_wait_run_still_pending_is_not_counted_and_goes_once_a_newer_backup_is_kept(scene: Scene) -> None:
    scene.add_run("r1", T0)
    scene.add_run("r2", T0 + timedelta(days=1), waited=False)  # local: pending until a restore syncs it
    inv = inventory(scene, KEEP_ONE)

    assert prune(inv).ok and scene.run_ids() == {"r1", "r2"}
    assert _reasons(prune(inv, dry_run=True))["r2"] == [
        ("its snapshots are not complete yet (backup --no-wait): snapshot r2-n1-data is pending (and 1 more): "
         "not counted")]

    scene.add_run("r3", T0 + timedelta(days=2))
    assert prune(inv).ok and scene.run_ids() == {"r3"}
