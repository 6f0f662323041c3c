"""Prune never counts a run that cannot be restored as recorded (a snapshot of it deleted by hand)
as the backup that replaces the others, over a real catalog and the real local snapshot store."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import yaml

from snapctl.events import NullReporter
from snapctl.prune import prune, prune_after_backup
from snapctl.prune_plan import plan

from .conftest import T0, Scene, inventory, snapctl_cli

KEEP_1 = {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}


def lose_snapshot(scene: Scene, run_id: str, node: str) -> str:
    """Delete one snapshot of a run behind snapctl's back; its id."""
    ref = next(r for r in scene.catalog.load(run_id).snapshot_refs() if r.node == node)
    scene.provider.delete(ref)
    return ref.snapshot_id


def test_prune_keeps_the_intact_runs_in_place_of_one_missing_a_snapshot_and_leaves_that_one(scene: Scene) -> None:
    # `snapctl verify latest` said the newest run could not be restored, yet prune kept it as the
    # "newest succeeded" and deleted the older, intact runs.
    for day in range(3):
        scene.add_run(f"r{day}", T0 + timedelta(days=day))
    lost = lose_snapshot(scene, "r2", "n2")
    inv = inventory(scene, KEEP_1)

    dry = prune(inv, dry_run=True)
    done = prune(inv)

    for result in (dry, done):
        assert [v.run_id for v in result.deleted] == ["r0"]
        kept = {v.run_id: v.reasons for v in result.kept}
        assert kept == {"r2": [f"cannot be restored as recorded: snapshot {lost} (node n2): not among the provider's "
                               "snapshots of the cluster: not counted, not deleted"],
                        "r1": ["newest succeeded", "last 1/1"]}
        assert result.warnings == [
            f"run r2 cannot be restored as recorded: snapshot {lost} (node n2): not among the provider's snapshots of "
            "the cluster; retention neither counts nor deletes it; hint: `snapctl verify r2` names what is missing, "
            "and the run is left for you to repair or remove"]
    assert scene.run_ids() == {"r1", "r2"}
    assert {r.snapshot_id for r in scene.provider.find({"snapctl-run": "r2"})} == {"r2-n1-data"}, "left as it was"


def test_checking_the_kept_runs_snapshots_costs_one_listing_however_many_runs(scene: Scene) -> None:
    for day in range(8):
        scene.add_run(f"r{day}", T0 + timedelta(days=day))
    lose_snapshot(scene, "r7", "n1")
    lose_snapshot(scene, "r5", "n2")
    calls: Counter[str] = Counter()
    provider = scene.provider
    for name in ("find", "describe"):
        real = getattr(provider, name)
        setattr(provider, name, lambda *a, _real=real, _name=name, **k: (calls.update([_name]), _real(*a, **k))[1])

    planned = plan(scene.catalog, provider, inventory(scene, {**KEEP_1, "keep_last": 3}).retention, 600.0)

    assert calls == Counter(find=1)
    assert [v.run_id for v in planned.kept] == ["r7", "r6", "r5", "r4", "r3"]
    assert [v.run_id for v in planned.deleted] == ["r0", "r1", "r2"]
    assert [w.split(" cannot ")[0] for w in planned.warnings] == ["run r7", "run r5"]


def test_prune_names_the_run_missing_a_snapshot_on_stderr(scene: Scene) -> None:
    scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    lose_snapshot(scene, "r1", "n1")
    snapctl = snapctl_cli(scene)
    written = scene.root / "inv.yaml"
    written.write_text(yaml.safe_dump({**yaml.safe_load(written.read_text()), "retention": KEEP_1}))

    said = snapctl("prune")

    assert said.returncode == 0, said.stderr
    assert "warning: run r1 cannot be restored as recorded: snapshot r1-n1-data (node n1)" in said.stderr
    assert scene.run_ids() == {"r0", "r1"}


def test_a_backups_own_retention_does_not_hold_its_fresh_run_missing_from_a_listing_not_caught_up(
        scene: Scene) -> None:
    # An eventually consistent listing (aws DescribeSnapshots by tag) may not show the snapshots made
    # a moment ago: the run the backup just made was held as "cannot be restored as recorded".
    scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    made = scene.add_run("made", T0 + timedelta(days=2))
    provider = scene.provider
    real_find = provider.find
    provider.find = lambda tags: [r for r in real_find(tags) if r.tags.get("snapctl-run") != "made"]

    asyncio.run(prune_after_backup(inventory(scene, KEEP_1), scene.catalog, provider, made, NullReporter(),
                                   lambda: None))

    assert scene.run_ids() == {"made"}
    assert scene.catalog.load("made").extra["retention"] == {"deleted": ["r0", "r1"], "kept": 1}
