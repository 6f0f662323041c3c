"""Runs made with `backup --no-wait`: counted by retention only once the provider says their
snapshots completed. One whose snapshots failed after it (a cloud snapshot in error, a local one
its host restarted before syncing) once counted, and cost the last good backup its place. Local
snapshots, which nothing else completes, are completed by the prune itself."""

from __future__ import annotations

import errno
import json
from datetime import timedelta
from pathlib import Path

import pytest

from snapctl.errors import ProviderError, SnapctlError
from snapctl.prune import apply, prune
from snapctl.prune_plan import plan
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


def _pending(scene: Scene, run_id: str) -> bool:
    return {r.state for r in scene.provider.describe(scene.catalog.load(run_id).snapshot_refs())} == {"pending"}


def test_a_local_no_wait_run_is_completed_by_the_prune_then_counted(scene: Scene) -> None:
    # Nothing but a restore ever completed a local --no-wait snapshot: the prune found it pending,
    # never counted its run, and a cron of `backup --no-wait` never had a backup the policy counted.
    scene.add_run("r1", T0)
    scene.add_run("r2", T0 + timedelta(days=1), waited=False)
    inv = inventory(scene, KEEP_ONE)

    planned = prune(inv, dry_run=True)
    assert planned.completed == planned.confirmed == ["r2"] and [v.run_id for v in planned.deleted] == ["r1"]
    assert _reasons(planned)["r2"] == ["newest succeeded", "last 1/1",
                                       "its snapshots are pending (backup --no-wait): the prune completes them first"]
    assert _pending(scene, "r2") and not scene.catalog.load("r2").snapshots_completed, "a dry run changes nothing"
    assert scene.run_ids() == {"r1", "r2"}

    done = prune(inv)

    assert done.ok and done.completed == done.confirmed == ["r2"] and scene.run_ids() == {"r2"}
    assert _reasons(done)["r2"] == ["newest succeeded", "last 1/1",
                                    "its snapshots completed by this prune (backup --no-wait)"]
    refs = scene.catalog.load("r2").snapshot_refs()
    assert scene.catalog.load("r2").snapshots_completed
    assert {r.state for r in scene.provider.describe(refs)} == {"completed"}
    assert all((Path(r.extra["path"]) / "completed.json").is_file() for r in refs)
    assert prune_document(done)["completed"] == ["r2"]


def test_a_local_no_wait_run_whose_snapshots_fail_to_complete_is_treated_like_a_failed_run(
        scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    from snapctl_local import copy as copy_module

    scene.add_run("r1", T0)
    scene.add_run("r2", T0 + timedelta(days=1), waited=False)
    real = copy_module.fsync_path

    def failing(path):
        if "r2-n1-data" in str(path):
            raise OSError(errno.EIO, "Input/output error")
        real(path)

    monkeypatch.setattr(copy_module, "fsync_path", failing)
    inv = inventory(scene, KEEP_ONE)

    done = prune(inv)

    assert done.ok and scene.run_ids() == {"r1", "r2"}, "the good backup stays: the failed one does not replace it"
    assert done.completed == done.confirmed == []
    (why,) = _reasons(done)["r2"]
    assert why.startswith("its snapshots did not complete (backup --no-wait): node n1: snapshot r2-n1-data of "
                          "volume data could not be written to disk (") and why.endswith(": not counted"), why
    assert "input/output error" in why.lower()
    assert not scene.catalog.load("r2").snapshots_completed
    # Failed for good (an fsync error may have lost pages the kernel now calls clean): never completed later.
    monkeypatch.setattr(copy_module, "fsync_path", real)
    states = {r.snapshot_id: r.state for r in scene.provider.describe(scene.catalog.load("r2").snapshot_refs())}
    assert states["r2-n1-data"] == "error"
    assert prune(inv).completed == [] and scene.run_ids() == {"r1", "r2"}

    scene.add_run("r3", T0 + timedelta(days=2))
    assert prune(inv).ok and scene.run_ids() == {"r3"}


def test_a_local_no_wait_run_not_completed_by_the_deadline_stays_pending_and_is_not_counted(scene: Scene) -> None:
    scene.add_run("r1", T0)
    scene.add_run("r2", T0 + timedelta(days=1), waited=False)
    inv = inventory(scene, KEEP_ONE)

    planned = plan(scene.catalog, scene.provider, inv.retention, 600.0, complete_within=-1.0)  # already past
    done = apply(planned, scene.catalog, scene.provider, lambda: None, 600.0)

    assert done.ok and scene.run_ids() == {"r1", "r2"} and done.completed == []
    assert _reasons(done)["r2"] == [
        "its snapshots are not completed yet (backup --no-wait): node n1: snapshot r2-n1-data of volume data was "
        "not on disk by the deadline; a later prune tries again: not counted, not deleted"]
    assert _pending(scene, "r2"), "still pending, not failed: the next prune completes it"
    assert prune(inv).completed == ["r2"] and scene.run_ids() == {"r2"}


def test_a_dry_runs_plan_that_counts_uncompleted_runs_is_never_applied(scene: Scene) -> None:
    scene.add_run("r1", T0)
    scene.add_run("r2", T0 + timedelta(days=1), waited=False)
    inv = inventory(scene, KEEP_ONE)

    with pytest.raises(SnapctlError, match=r"refusing to apply a dry run's plan: .*\(r2\)"):
        apply(plan(scene.catalog, scene.provider, inv.retention, 600.0), scene.catalog, scene.provider,
              lambda: None, 600.0)
    assert scene.run_ids() == {"r1", "r2"} and _pending(scene, "r2")


def test_a_cloud_no_wait_run_still_pending_is_not_counted_yet_and_nothing_completes_it(tmp_path: Path) -> None:
    # Only a provider that completes snapshots when asked (local) is asked to: a cloud's complete
    # on their own, and the prune's real pass (not a dry run) still just does not count them yet.
    from snapctl_gcp import GcpProvider, GcpSettings

    from snapctl.catalog import Catalog, LocalBlobStore
    from snapctl.completion import can_complete
    from snapctl.config import Retention
    from snapctl.manifest import Manifest, NodeRecord
    from snapctl.providers import snapshot_tags
    from tests.fakes.gcp_compute import FakeGcpCompute

    with FakeGcpCompute(creating_polls=1, uploading_polls=10_000) as gcp:  # captured, still uploading
        gcp.add_disk("europe-west1-b", "data-disk")
        provider = GcpProvider(GcpSettings.model_validate(
            {"type": "gcp", "project": gcp.project, "api_endpoint": gcp.url, "anonymous": True,
             "poll_interval_s": 0.01}), cluster="prod", base_dir=tmp_path)
        volumes = provider.validate_volumes("n1", [{"disk": "data-disk", "zone": "europe-west1-b", "name": "data"}],
                                            base_dir=tmp_path)
        catalog = Catalog(LocalBlobStore(tmp_path / "catalog"), "prod")
        for day, run_id in enumerate(("r1", "r2")):
            refs = provider.snapshot(volumes, snapshot_tags("prod", run_id, "n1"))
            catalog.save(Manifest(cluster="prod", run_id=run_id, status="succeeded", provider="gcp",
                                  snapctl_version="0.1.0", owner="ops@host:1", started_at=T0 + timedelta(days=day),
                                  nodes={"n1": NodeRecord(name="n1", engine="sqlite", snapshots=refs)},
                                  snapshots_completed=run_id == "r1"))

        planned = plan(catalog, provider, Retention(**KEEP_ONE), 600.0, complete_within=60.0)

    assert not can_complete(provider)
    assert planned.completed == planned.confirmed == [] and planned.deleted == []
    (why,) = _reasons(planned)["r2"]
    assert why.startswith("its snapshots are not complete yet (backup --no-wait): snapshot ") and why.endswith(
        " is pending: not counted"), why
    assert _reasons(planned)["r1"] == ["newest succeeded", "last 1/1"]


def test_a_local_no_wait_run_whose_completion_ran_out_of_time_is_neither_counted_nor_deleted(
        scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    # The prune's one deadline covers every run it completes: a slow disk lets it complete r2 and
    # leaves none for r1, which is good, only not fsynced yet. Treated like a failed fsync, r1 was
    # "like a failed run", older than the oldest kept (r2), and deleted.
    import time

    from snapctl_local import provider as provider_module

    scene.add_run("r1", T0, waited=False)
    scene.add_run("r2", T0 + timedelta(days=1), waited=False)
    real = provider_module.fsync_path

    def slow_disk(path):
        if "r2-n2" in str(path):
            time.sleep(0.3)  # r2's last sync outlasts the whole budget below; r2 still completes
        real(path)

    monkeypatch.setattr(provider_module, "fsync_path", slow_disk)
    inv = inventory(scene, {"keep_last": 2, "daily": 0, "weekly": 0, "monthly": 0})

    planned = plan(scene.catalog, scene.provider, inv.retention, 600.0, complete_within=0.2)
    done = apply(planned, scene.catalog, scene.provider, lambda: None, 600.0)

    assert done.completed == ["r2"]
    assert scene.run_ids() == {"r1", "r2"}, _reasons(done)
    assert _pending(scene, "r1"), "r1 is still pending, not failed: nothing is wrong with it"


def test_a_kept_no_wait_run_whose_snapshots_are_in_the_store_the_inventory_named_before_is_said_to_be_there(
        scene: Scene) -> None:
    # provider.store changed since the run: its snapshots were reported as "no longer exists" and
    # the run as one whose snapshots did not complete, though they are whole where it recorded them.
    scene.add_run("r1", T0)
    scene.add_run("r2", T0 + timedelta(days=1), waited=False)

    done = prune(inventory(scene, KEEP_ONE, store="snapshots-moved"))

    assert done.deleted == [] and scene.run_ids() == {"r1", "r2"}, _reasons(done)
    (why,) = _reasons(done)["r2"]
    assert why.startswith("whether its snapshots completed is unknown (backup --no-wait): snapshot r2-n1-data: "
                          f"it is not in the store {scene.root / 'snapshots-moved'} but in "
                          f"{scene.root / 'snapshots'}"), why
    assert why.endswith(": not counted, not deleted"), why


def test_a_failed_fsync_whose_failed_marker_could_not_be_written_never_lets_a_later_prune_count_the_run(
        scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fsync failed and writing failed.json failed too (the same disk full): describe() still
    # said "pending", the run was held, and the next prune's fsync, on pages the kernel had since
    # marked clean, succeeded: the run was counted and the good backup deleted.
    from snapctl_local import copy as copy_module
    from snapctl_local import provider as provider_module

    scene.add_run("r1", T0)
    scene.add_run("r2", T0 + timedelta(days=1), waited=False)
    real_fsync, real_mark = copy_module.fsync_path, provider_module.mark_failed

    def failing(path):
        if "r2-n1-data" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(path)

    def unwritable(snap_dir, why):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(copy_module, "fsync_path", failing)
    monkeypatch.setattr(provider_module, "mark_failed", unwritable)
    inv = inventory(scene, KEEP_ONE)

    first = prune(inv)
    assert scene.run_ids() == {"r1", "r2"} and first.completed == [], _reasons(first)

    # Room again: the fsync now succeeds, though what it failed to write may be lost.
    monkeypatch.setattr(copy_module, "fsync_path", real_fsync)
    monkeypatch.setattr(provider_module, "mark_failed", real_mark)
    second = prune(inv)

    assert "r2" not in second.completed, "a snapshot whose fsync failed is never counted"
    states = {r.snapshot_id: (r.state, r.error) for r in scene.provider.describe(scene.catalog.load("r2").snapshot_refs())}
    assert states["r2-n1-data"][0] == "error" and "nor its failed.json" in states["r2-n1-data"][1]
    assert scene.run_ids() == {"r1", "r2"}, "the good backup stays: " + repr(_reasons(second))
