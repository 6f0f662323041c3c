"""Prune and gc over a real catalog directory and the real local snapshot store."""

from __future__ import annotations

import io
import json
import tempfile
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from snapctl.catalog import Catalog
from snapctl.config import Retention
from snapctl.errors import ExitCode, LockHeld
from snapctl.prune import apply, prune
from snapctl.prune_plan import plan
from snapctl.render import Renderer
from snapctl.render.retention import prune_text
from snapctl.retention import PRUNING, Run, decide
from tests.catalog.test_scale import CallCountingStore

from .conftest import CLUSTER, T0, Scene, inventory, make_scene, snapshots_of

# -- the policy, applied -----------------------------------------------------------------------------


@st.composite
def sixty_days(draw) -> list[tuple[str, datetime, str]]:
    runs = []
    for day in range(60):
        for hour in sorted(draw(st.lists(st.integers(0, 23), max_size=2, unique=True))):
            at = T0 + timedelta(days=day, hours=hour, minutes=draw(st.integers(0, 59)))
            status = draw(st.sampled_from(["succeeded"] * 5 + ["failed", "running"]))
            runs.append((f"{at:%Y%m%dT%H%M%SZ}-{len(runs):03x}", at, status))
    return runs


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sixty_days(), st.builds(Retention, keep_last=st.integers(1, 5), daily=st.integers(0, 10),
                                weekly=st.integers(0, 5), monthly=st.integers(0, 3)))
def test_prune_over_sixty_days_keeps_exactly_what_the_policy_says(runs, retention: Retention) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scene = make_scene(Path(tmp))
        for run_id, at, status in runs:
            scene.add_run(run_id, at, status, recorded=status != "running")
        expected = {d.run.run_id for d in decide([Run(*r) for r in runs], retention).keep}

        result = prune(inventory(scene, retention.model_dump()))

        assert result.ok and result.problems == []
        assert scene.run_ids() == expected == {v.run_id for v in result.kept}
        assert {v.run_id for v in result.deleted} == {r[0] for r in runs} - expected
        # Every snapshot of a deleted run is gone (recorded or only tagged); every kept run keeps all of its own.
        assert scene.snapshot_ids() == snapshots_of(scene, expected)
        assert len(scene.snapshot_ids()) == 2 * len(expected)


def test_dry_run_lists_exactly_what_then_goes(scene: Scene) -> None:
    for day in range(6):
        scene.add_run(f"r{day}", T0 + timedelta(days=day))
    scene.add_run("r2-failed", T0 + timedelta(days=2, hours=1), "failed")
    scene.add_run("r3-killed", T0 + timedelta(days=3, hours=1), "running", recorded=False)
    inv = inventory(scene, {"keep_last": 2, "daily": 0, "weekly": 0, "monthly": 0})
    before = scene.snapshot_ids()

    dry = prune(inv, dry_run=True)

    assert dry.dry_run and scene.snapshot_ids() == before and len(scene.run_ids()) == 8  # nothing touched
    assert [v.run_id for v in dry.deleted] == ["r0", "r1", "r2", "r2-failed", "r3", "r3-killed"]
    assert dry.deleted[3].reasons == ["failed, older than the oldest kept run r4"]
    assert dry.deleted[5].snapshots == ["r3-killed-n1-data", "r3-killed-n2-data"]  # found by its run tag

    done = prune(inv)

    assert [(v.run_id, v.snapshots) for v in done.deleted] == [(v.run_id, v.snapshots) for v in dry.deleted]
    assert before - scene.snapshot_ids() == {s for v in dry.deleted for s in v.snapshots}
    assert scene.run_ids() == {"r4", "r5"}
    assert prune(inv, dry_run=True).deleted == []


# -- interrupted at every step -------------------------------------------------------------------------


class Killed(BaseException):
    """The process dying: nothing in snapctl catches it."""


class Fuse:
    def __init__(self, after: int) -> None:
        self.left = after

    def tick(self) -> None:
        if self.left == 0:
            raise Killed
        self.left -= 1


class FusedStore:
    """The real store; every change first burns the fuse (a kill between two writes)."""

    def __init__(self, store, fuse: Fuse) -> None:
        self._store, self._fuse = store, fuse

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if name in ("write", "create", "replace", "delete"):
            def fused(*args, **kwargs):
                self._fuse.tick()
                return attr(*args, **kwargs)
            return fused
        return attr


class FusedProvider(FusedStore):
    def __getattr__(self, name):
        if name == "delete":
            def fused(ref):
                self._fuse.tick()
                return self._store.delete(ref)
            return fused
        return getattr(self._store, name)


def _history(scene: Scene) -> None:
    for day in range(5):
        scene.add_run(f"r{day}", T0 + timedelta(days=day))
    scene.add_run("r1-failed", T0 + timedelta(days=1, hours=3), "failed")


def test_a_prune_killed_at_any_step_resumes_and_finishes(tmp_path: Path) -> None:
    retention = {"keep_last": 2, "daily": 0, "weekly": 0, "monthly": 0}
    reference = make_scene(tmp_path / "reference")
    _history(reference)
    prune(inventory(reference, retention))
    kept_runs, kept_snapshots = reference.run_ids(), reference.snapshot_ids()
    assert kept_runs == {"r3", "r4"}

    step = 0
    while True:
        scene = make_scene(tmp_path / f"kill-{step}")
        _history(scene)
        inv = inventory(scene, retention)
        fuse = Fuse(step)
        catalog = Catalog(FusedStore(scene.catalog.store, fuse), CLUSTER)
        try:
            apply(plan(catalog, scene.provider, inv.retention, inv.drill.timeout_s), catalog,
                  FusedProvider(scene.provider, fuse), lambda: None, inv.drill.timeout_s)
        except Killed:
            pass
        else:
            break  # the fuse outlasted the prune: every step has been a kill point
        # Whatever was done so far: the kept runs are whole and restorable, the rest are marked.
        entries, problems = scene.catalog.list()
        assert problems == []
        assert kept_snapshots <= scene.snapshot_ids()
        assert {e.run_id for e in entries if e.status != "pruning"} >= kept_runs
        assert scene.catalog.resolve("latest") == "r4"
        for run_id in {e.run_id for e in entries} - kept_runs:
            if snapshots_of(scene, {run_id}) != {f"{run_id}-n1-data", f"{run_id}-n2-data"}:
                assert scene.catalog.load(run_id).status == "pruning", (step, run_id)  # never a silent half-run

        resumed = prune(inv)

        assert resumed.ok
        assert scene.run_ids() == kept_runs and scene.snapshot_ids() == kept_snapshots, step
        step += 1
    assert step > 10  # marks, snapshot deletions, manifest and index writes: each was a kill point


# -- refusals ----------------------------------------------------------------------------------------


def test_a_snapshot_without_this_clusters_tag_is_never_deleted(scene: Scene) -> None:
    old = scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    scene.add_run("r2", T0 + timedelta(days=2))
    untagged = scene.snapshot("r0-extra", "n1", cluster=None)[0]  # made by hand, no snapctl tags
    old.nodes["n1"].snapshots.append(untagged)
    foreign = scene.catalog.load("r2").nodes["n2"].snapshots[0].model_copy(
        update={"tags": {"snapctl-cluster": "staging"}})  # a damaged manifest naming a kept run's snapshot
    old.nodes["n2"].snapshots.append(foreign)
    scene.catalog.save(old)

    result = prune(inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}))

    assert not result.ok and [v.run_id for v in result.deleted] == ["r1"]
    [unfinished] = result.unfinished
    assert unfinished.run_id == "r0"
    assert f"refusing to delete snapshot {untagged.snapshot_id}" in unfinished.error
    assert "'staging', not 'prod'" in unfinished.error
    assert {untagged.snapshot_id, foreign.snapshot_id} <= scene.snapshot_ids()
    assert scene.catalog.load("r0").status == "pruning"  # stays marked: the next prune retries it


def test_a_snapshot_with_a_damaged_snapshot_json_is_named_as_damaged_and_kept(scene: Scene) -> None:
    old = scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    damaged = old.nodes["n1"].snapshots[0]
    metadata = Path(damaged.extra["path"]) / "snapshot.json"
    metadata.write_bytes(b'{"x')

    result = prune(inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}))

    [unfinished] = result.unfinished
    assert unfinished.run_id == "r0"
    assert unfinished.error == (f"snapshot {damaged.snapshot_id}: node n1: refusing to delete snapshot "
                                f"{damaged.snapshot_id}: {metadata} is not valid JSON")
    assert metadata.parent.is_dir() and scene.catalog.load("r0").status == "pruning"


def test_a_prune_whose_every_delete_was_refused_does_not_say_the_policy_keeps_every_run(scene: Scene) -> None:
    old = scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    (Path(old.nodes["n1"].snapshots[0].extra["path"]) / "snapshot.json").write_bytes(b'{"x')
    result = prune(inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}))
    shown = Renderer()
    shown.out = Console(file=io.StringIO(), width=400)
    shown.err = Console(file=io.StringIO(), width=400)

    assert prune_text(shown, result) == ExitCode.RUN_FAILED
    out, err = shown.out.file.getvalue(), shown.err.file.getvalue()
    assert "the policy keeps every run" not in out
    assert "deleted no run: the 1 the policy lets go could not be deleted" in out
    assert "not deleted: run r0: snapshot" in err


def test_unreadable_manifests_are_reported_and_left_alone(scene: Scene) -> None:
    scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    scene.catalog.store.write(f"{CLUSTER}/manifests/r-broken.json", b"{ not json")
    result = prune(inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}))
    assert [v.run_id for v in result.deleted] == ["r0"]
    assert result.problems == ["run r-broken: not valid JSON"]
    assert scene.catalog.store.read(f"{CLUSTER}/manifests/r-broken.json") == b"{ not json"


def _damage(scene: Scene, run_id: str) -> bytes:
    """Bit rot, a bad edit, a partial copy: the manifest's first bytes only, its index line intact."""
    key = f"{CLUSTER}/manifests/{run_id}.json"
    damaged = scene.catalog.store.read(key)[:300]
    scene.catalog.store.write(key, damaged)
    return damaged


def test_a_damaged_newest_manifest_behind_an_intact_index_line_never_stands_for_the_newest_backup(scene: Scene) -> None:
    for day in range(4):
        scene.add_run(f"r{day}", T0 + timedelta(days=day))
    damaged = _damage(scene, "r3")
    inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})

    dry = prune(inv, dry_run=True)
    done = prune(inv)

    for result in (dry, done):
        assert [(v.run_id, v.reasons) for v in result.kept] == [("r2", ["newest succeeded", "last 1/1"])]
        assert [v.run_id for v in result.deleted] == ["r0", "r1"]
        assert result.problems == ["run r3: not valid JSON"]
    assert scene.run_ids() == {"r2"} and snapshots_of(scene, {"r2"})  # the newest backup that can be restored
    assert scene.catalog.store.read(f"{CLUSTER}/manifests/r3.json") == damaged and snapshots_of(scene, {"r3"})


def test_a_damaged_run_among_the_kept_ones_gives_its_place_to_the_next_readable_run(scene: Scene) -> None:
    for day in range(5):
        scene.add_run(f"r{day}", T0 + timedelta(days=day))
    _damage(scene, "r3")

    result = prune(inventory(scene, {"keep_last": 2, "daily": 0, "weekly": 0, "monthly": 0}))

    assert [(v.run_id, v.reasons) for v in result.kept] == [("r4", ["newest succeeded", "last 1/2"]),
                                                            ("r2", ["last 2/2"])]
    assert [v.run_id for v in result.deleted] == ["r0", "r1"] and result.problems == ["run r3: not valid JSON"]
    assert snapshots_of(scene, {"r2", "r3", "r4"}) == scene.snapshot_ids()


def test_a_succeeded_manifest_that_names_no_node_is_damaged_not_the_newest_backup(scene: Scene) -> None:
    # Valid JSON with its nodes emptied: it was the newest good backup, prune kept it and deleted a
    # readable one, and restore, verify and drill of it all "passed" with nothing restored.
    for day in range(3):
        scene.add_run(f"r{day}", T0 + timedelta(days=day))
    key = f"{CLUSTER}/manifests/r2.json"
    emptied = json.loads(scene.catalog.store.read(key))
    emptied["nodes"] = {}
    scene.catalog.store.write(key, json.dumps(emptied).encode())

    result = prune(inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}))

    assert [v.run_id for v in result.kept] == ["r1"] and [v.run_id for v in result.deleted] == ["r0"]
    assert result.problems == ["run r2: a succeeded run that names no node: nothing in it can be restored"]
    assert scene.catalog.resolve("latest") == "r1"


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), st.builds(Retention, keep_last=st.integers(1, 4), daily=st.integers(0, 6),
                            weekly=st.integers(0, 3), monthly=st.integers(0, 2)))
def test_damaged_manifests_never_cost_a_readable_backup_its_place(data, retention: Retention) -> None:
    # Whichever succeeded runs are damaged: the prune keeps exactly what the policy keeps of the
    # readable runs alone, deletes the rest of them, and leaves every damaged run as it was.
    runs = data.draw(sixty_days().map(lambda runs: runs[:25]))
    succeeded = [r[0] for r in runs if r[2] == "succeeded"]
    damaged = set(data.draw(st.lists(st.sampled_from(succeeded), max_size=6, unique=True)) if succeeded else [])
    with tempfile.TemporaryDirectory() as tmp:
        scene = make_scene(Path(tmp))
        for run_id, at, status in runs:
            scene.add_run(run_id, at, status, recorded=status != "running")
        before = {run_id: _damage(scene, run_id) for run_id in damaged}
        readable = [Run(*r) for r in runs if r[0] not in damaged]
        expected = decide(readable, retention)

        result = prune(inventory(scene, retention.model_dump()))

        assert {v.run_id for v in result.kept} == {d.run.run_id for d in expected.keep}
        assert {v.run_id for v in result.deleted} == {d.run.run_id for d in expected.delete}
        assert scene.snapshot_ids() == snapshots_of(scene, {d.run.run_id for d in expected.keep} | damaged)
        for run_id, content in before.items():
            assert scene.catalog.store.read(f"{CLUSTER}/manifests/{run_id}.json") == content


def test_a_good_backup_whose_index_line_still_says_running_is_kept_as_the_backup_it_is(scene: Scene) -> None:
    for day in range(3):
        scene.add_run(f"r{day}", T0 + timedelta(days=day))
    killed = scene.add_run("r3", T0 + timedelta(days=3), "running")
    killed.status = "succeeded"  # its manifest says so; the run died before its index line did
    scene.catalog.store.write(f"{CLUSTER}/manifests/r3.json", killed.model_dump_json().encode())
    scene.add_run("r4", T0 + timedelta(days=4))

    result = prune(inventory(scene, {"keep_last": 2, "daily": 0, "weekly": 0, "monthly": 0}))

    assert [(v.run_id, v.status, v.reasons) for v in result.kept] == [
        ("r4", "succeeded", ["newest succeeded", "last 1/2"]), ("r3", "succeeded", ["last 2/2"])]
    assert [v.run_id for v in result.deleted] == ["r0", "r1", "r2"]
    assert scene.snapshot_ids() == snapshots_of(scene, {"r3", "r4"})


def test_prune_refuses_while_another_run_holds_the_lock(scene: Scene) -> None:
    scene.add_run("r0", T0)
    scene.catalog.acquire_lock("ops@other-host:7", "20240301T000000Z-abcdef", ttl_s=300)
    with pytest.raises(LockHeld, match=r"locked by ops@other-host:7 \(run 20240301T000000Z-abcdef\)"):
        prune(inventory(scene))
    assert prune(inventory(scene), dry_run=True).kept  # a dry run takes no lock


def test_a_damaged_manifest_the_policy_would_delete_is_a_problem_left_alone_not_an_unfinished_deletion(
    scene: Scene,
) -> None:
    # It was reported as "not deleted: run r0: run r0: ..." under a hint that it stays marked
    # 'pruning', which an unreadable manifest cannot be, and was missing from the JSON's problems.
    scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    damaged = _damage(scene, "r0")
    inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    for result in (prune(inv, dry_run=True), prune(inv)):
        assert result.deleted == [] and result.unfinished == []
        [problem] = result.problems
        assert problem.startswith("run r0: ") and not problem.startswith("run r0: run r0")
    assert scene.catalog.store.read(f"{CLUSTER}/manifests/r0.json") == damaged


def test_a_dry_run_names_only_the_snapshots_a_half_done_prune_left(scene: Scene) -> None:
    run = scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    run.extra[PRUNING] = {"was": "succeeded", "since": T0.isoformat()}
    run.status = PRUNING  # type: ignore[assignment]  # a prune killed after deleting n1's snapshot
    scene.catalog.save(run)
    scene.provider.delete(run.nodes["n1"].snapshots[0])
    dry = prune(inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}), dry_run=True)
    [verdict] = dry.deleted
    assert verdict.snapshots == [run.nodes["n2"].snapshots[0].snapshot_id]


def test_a_runs_own_snapshot_whose_recorded_tag_names_another_cluster_is_not_deleted(scene: Scene) -> None:
    # The provider lists the snapshot under this run too; its entry replaced the manifest's, so
    # the recorded tag was never looked at.
    old = scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    [ref] = old.nodes["n1"].snapshots
    old.nodes["n1"].snapshots = [ref.model_copy(update={"tags": {**ref.tags, "snapctl-cluster": "other"}})]
    scene.catalog.save(old)

    result = prune(inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}))

    [unfinished] = result.unfinished
    assert unfinished.run_id == "r0" and "'other', not 'prod'" in unfinished.error
    assert ref.snapshot_id in scene.snapshot_ids()


def test_a_run_made_with_another_provider_is_left_alone_not_reported_deleted_with_its_snapshots(scene: Scene) -> None:
    # An inventory switched to another provider found none of an old run's snapshots, counted that
    # as done, deleted the manifest and said "deleted with their snapshots": the snapshots stayed,
    # with nothing left that names them.
    for day in range(3):
        scene.add_run(f"r{day}", T0 + timedelta(days=day))
    old = scene.catalog.load("r0")
    old.provider = "gcp"
    scene.catalog.save(old)
    inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    before = scene.snapshot_ids()

    done = prune(inv)

    assert [v.run_id for v in done.deleted] == ["r1"]
    assert done.problems == [("run r0: made with the gcp provider, not local (the inventory's): left alone, with its "
                             "snapshots; prune it with an inventory whose provider is gcp")]
    assert scene.run_ids() == {"r0", "r2"}
    assert before - scene.snapshot_ids() == {"r1-n1-data", "r1-n2-data"}  # r0's are still there


def test_a_kept_runs_snapshot_retagged_with_a_pruned_runs_id_is_not_deleted_with_that_run(scene: Scene) -> None:
    # Prune deletes a run's snapshots and those tagged with it (a backup killed before its manifest
    # named them): a tag changed by hand or by a tagging policy took a kept run's snapshot along.
    scene.add_run("r0", T0, recorded=False)  # its snapshots unrecorded: still deleted with it, by their tag
    unrecorded = snapshots_of(scene, {"r0"})
    kept = scene.add_run("r1", T0 + timedelta(days=1))
    [ref] = kept.nodes["n1"].snapshots
    meta_path = Path(ref.extra["path"]) / "snapshot.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "tags": {**meta["tags"], "snapctl-run": "r0"}}))

    result = prune(inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}))

    [deleted] = result.deleted
    assert deleted.run_id == "r0" and ref.snapshot_id not in deleted.snapshots
    assert ref.snapshot_id in scene.snapshot_ids() and len(unrecorded) == 2 and not unrecorded & scene.snapshot_ids()


def test_a_prune_reads_a_doomed_runs_manifest_once_to_plan_and_once_to_mark_it(scene: Scene) -> None:
    # A doomed run with snapshots tagged with it that its manifest does not name (a backup killed
    # before it recorded them) makes prune look up which manifest names them: it read every
    # manifest for that in its plan, and each again in apply, the doomed ones read by then already.
    scene.add_run("r0", T0, recorded=False)
    unrecorded = snapshots_of(scene, {"r0"})
    for day in (1, 2, 3):
        scene.add_run(f"r{day}", T0 + timedelta(days=day))
    store = CallCountingStore(scene.root / "catalog")
    catalog = Catalog(store, CLUSTER)

    planned = plan(catalog, scene.provider, Retention(keep_last=1, daily=0, weekly=0, monthly=0), 60.0)
    done = apply(planned, catalog, scene.provider, lambda: None, 60.0)

    assert [v.run_id for v in done.deleted] == ["r0", "r1", "r2"] and not unrecorded & scene.snapshot_ids()
    # A doomed run's: planned, then marked (the mark's compare-and-swap reads it as it is now);
    # the kept run's: confirmed as the backup kept, then asked which snapshots it names.
    assert Counter(store.manifests_read()) == {"r0": 2, "r1": 2, "r2": 2, "r3": 2}
