"""A prune killed while marking, then the next one killed as it deletes: the index must not be left
listing a deleted run as a good backup whose manifest was lost."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import yaml

from snapctl.providers import create_provider
from snapctl.prune_marks import mark_pruning

from .conftest import CLUSTER, NODES, T0, Scene, gc_cli, snapctl_cli, snapshots_of

# `snapctl prune`, SIGKILLed right after its first manifest delete (no handler runs, as for the OOM killer).
_KILLED_AFTER_A_DELETE = textwrap.dedent("""
    import os, signal, sys
    import snapctl.catalog.catalog as catalog

    delete = catalog.Catalog.delete

    def delete_then_die(self, run_id):
        delete(self, run_id)
        os.kill(os.getpid(), signal.SIGKILL)

    catalog.Catalog.delete = delete_then_die
    from snapctl.entry import snapctl
    sys.argv = ["snapctl", "prune", "-i", "inv.yaml"]
    snapctl()
""")


def _inventory_keeping_one(scene: Scene) -> None:
    (scene.root / "inv.yaml").write_text(yaml.safe_dump({
        "cluster": CLUSTER, "provider": {"type": "local", "store": "snapshots"}, "catalog": {"path": "catalog"},
        "retention": {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0},
        "nodes": [{"name": n, "agent": "http://127.0.0.1:1"} for n in NODES]}))


def _marked_by_a_killed_prune(scene: Scene, run_id: str) -> None:
    """The manifest marked ``pruning``, its index line not: a prune killed before it wrote the held lines."""
    manifest = scene.catalog.load(run_id)
    mark_pruning(manifest, since=(datetime.now(UTC) - timedelta(minutes=1)).isoformat())
    scene.catalog.store.write(f"{CLUSTER}/manifests/{run_id}.json", manifest.model_dump_json(indent=2).encode())


def test_a_prune_killed_after_deleting_a_run_an_earlier_killed_prune_marked_leaves_no_lost_manifest(
        scene: Scene) -> None:
    for index in range(3):
        scene.add_run(f"r{index}", T0 + timedelta(days=index))
    _marked_by_a_killed_prune(scene, "r0")
    _marked_by_a_killed_prune(scene, "r1")
    _inventory_keeping_one(scene)

    killed = subprocess.run([sys.executable, "-c", _KILLED_AFTER_A_DELETE], cwd=scene.root, capture_output=True,
                            text=True, check=False, timeout=60)

    assert killed.returncode == -9, killed.stderr
    assert scene.catalog.store.read(f"{CLUSTER}/manifests/r0.json") is None, "it got as far as deleting r0"
    assert not snapshots_of(scene, {"r0"})
    entries, problems = scene.catalog.list()
    assert problems == [], "r0 was pruned, not lost: its line said pruning before anything of it was deleted"
    assert [e.run_id for e in entries] == ["r2", "r1"]
    assert scene.catalog.runs_without_manifest() == []


def _stuck_as_an_older_snapctl_left_it(scene: Scene, run_id: str) -> None:
    """What the two kills left before the fix: the run's snapshots and manifest deleted, its index
    line still "succeeded"."""
    for ref in [r for r in scene.provider.find({}) if r.tags.get("snapctl-run") == run_id]:
        scene.provider.delete(ref)
    scene.catalog.store.delete(f"{CLUSTER}/manifests/{run_id}.json")


def _lost_with_no_snapshot_recorded(scene: Scene, run_id: str, started_at: datetime) -> None:
    """A run killed before its manifest named any snapshot (its line records none), whose
    snapshots and manifest are gone since."""
    scene.add_run(run_id, started_at, "failed", recorded=False)
    _stuck_as_an_older_snapctl_left_it(scene, run_id)


def test_prune_forgets_a_line_whose_manifest_and_every_snapshot_are_gone_and_keeps_one_with_snapshots_left(
        scene: Scene) -> None:
    _lost_with_no_snapshot_recorded(scene, "r0", T0)
    for index in range(1, 3):
        scene.add_run(f"r{index}", T0 + timedelta(days=index))
    scene.catalog.store.delete(f"{CLUSTER}/manifests/r1.json")  # lost, its snapshots all there: a backup still
    snapctl = snapctl_cli(scene)
    _inventory_keeping_one(scene)
    lost = snapctl("show", "r0")
    assert lost.returncode == 1 and "next `snapctl prune` or `snapctl gc --delete` forgets the run" in lost.stderr

    pruned = snapctl("prune", "-o", "json")

    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["data"]["forgotten"] == ["r0"]
    assert "run r0: its manifest" not in pruned.stderr and "run r1: its manifest" in pruned.stderr
    entries, problems = scene.catalog.list()
    assert [e.run_id for e in entries] == ["r2"]
    assert [p.split(":")[0] for p in problems] == ["run r1"], "a lost manifest with snapshots left stays reported"
    assert scene.catalog.runs_without_manifest() == ["r1"] and len(snapshots_of(scene, {"r1"})) == len(NODES)


def test_gc_lists_then_forgets_a_line_whose_manifest_and_every_snapshot_are_gone(scene: Scene) -> None:
    _lost_with_no_snapshot_recorded(scene, "r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    gc = gc_cli(scene)

    listed = gc()
    assert listed.returncode == 0, listed.stderr
    assert "run r0: its manifest is missing, though the index lists the run, and none of its snapshots is left: " \
           "`snapctl gc --delete` (or the next prune) forgets it" in listed.stdout
    assert scene.catalog.runs_without_manifest() == ["r0"], "a listing changes nothing"

    deleted = gc("--delete")

    assert deleted.returncode == 0, deleted.stderr
    assert "forgot 1 run(s) the index listed whose manifest and every snapshot were gone: r0" in deleted.stdout
    assert "run r0:" not in deleted.stdout, "no longer passed over"
    entries, problems = scene.catalog.list()
    assert [e.run_id for e in entries] == ["r1"] and problems == []


def test_a_lost_manifest_whose_line_records_snapshots_is_never_forgotten_for_the_current_listing_lacking_them(
        scene: Scene) -> None:
    # "No snapshot left" is judged against the current provider's listing: a run made under an
    # earlier provider.store, whose manifest is lost, has its snapshots there, and was forgotten.
    current = scene.provider
    scene.provider = create_provider({"type": "local", "store": str(scene.root / "old-store")}, cluster=CLUSTER,
                                     base_dir=scene.root)
    scene.add_run("r0", T0)
    old_ids = {r.snapshot_id for r in scene.provider.find({})}
    scene.provider = current
    scene.add_run("r1", T0 + timedelta(days=1))
    scene.catalog.store.delete(f"{CLUSTER}/manifests/r0.json")
    _inventory_keeping_one(scene)

    pruned = snapctl_cli(scene)("prune", "-o", "json")
    deleted = gc_cli(scene)("--delete")

    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["data"]["forgotten"] == []
    assert "run r0: its manifest" in pruned.stderr, "still warned of"
    assert deleted.returncode == 0, deleted.stderr
    assert "forgot" not in deleted.stdout and "run r0: its manifest is missing" in deleted.stdout
    assert scene.catalog.runs_without_manifest() == ["r0"]
    assert len(old_ids) == len(NODES), "the run's snapshots, on the store it was made with"
