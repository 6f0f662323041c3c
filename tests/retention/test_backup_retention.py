"""Retention as the last step of a backup (`prune_after_backup`): its outcome on the manifest,
an interruption, a `--no-wait` run that is not counted yet, and an earlier one that is completed."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from snapctl.errors import Interrupted
from snapctl.events import NullReporter
from snapctl.prune import prune, prune_after_backup
from snapctl.prune_plan import plan
from snapctl.retention import PRUNING

from .conftest import T0, Scene, inventory


@contextlib.contextmanager
def completions_held_at_the_first(provider) -> Iterator[tuple[threading.Event, threading.Event, list[str]]]:
    """``provider.complete`` blocks at its first call until ``go_on`` is set: yields (``completing``,
    set once the first call began; ``go_on``; the snapshot ids completed, in order)."""
    completing, go_on = threading.Event(), threading.Event()
    real_complete = provider.complete
    completed: list[str] = []

    def slow_complete(refs, deadline):
        completing.set()
        go_on.wait(10)
        done = real_complete(refs, deadline)
        completed.extend(ref.snapshot_id for ref in refs)
        return done

    provider.complete = slow_complete
    try:
        yield completing, go_on, completed
    finally:
        provider.complete = real_complete


def test_retention_after_a_backup_reports_failure_without_raising(scene: Scene) -> None:
    old = scene.add_run("r0", T0)
    old.nodes["n1"].snapshots.append(scene.snapshot("r0-extra", "n1", cluster=None)[0])
    scene.catalog.save(old)
    scene.add_run("r1", T0 + timedelta(days=1))
    newest = scene.add_run("r2", T0 + timedelta(days=2))
    newest.snapshots_completed = True  # a backup that waited for them
    inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})

    asyncio.run(prune_after_backup(inv, scene.catalog, scene.provider, newest, NullReporter(), lambda: None))

    record = scene.catalog.load("r2").extra["retention"]
    assert record["deleted"] == ["r1"] and record["kept"] == 1
    assert record["error"].startswith("run r0: snapshot ") and "node n1: refusing to delete" in record["error"]


def test_retention_after_a_backup_stopped_by_ctrl_c_deletes_nothing_more_before_the_backup_unwinds(
        scene: Scene) -> None:
    # SIGTERM during a backup's retention cancelled the task, and the lock was released at once,
    # while the prune's thread went on deleting every doomed run, unlocked, until the last.
    for day in range(4):
        scene.add_run(f"r{day}", T0 + timedelta(days=day))
    newest = scene.catalog.load("r3")
    newest.snapshots_completed = True
    deleting, go_on = threading.Event(), threading.Event()
    real_delete = scene.provider.delete
    deleted: list[str] = []

    def slow_delete(ref):
        deleting.set()
        go_on.wait(10)
        real_delete(ref)
        deleted.append(ref.snapshot_id)

    scene.provider.delete = slow_delete
    inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})

    async def backup_stopped_while_deleting() -> None:
        task = asyncio.create_task(prune_after_backup(inv, scene.catalog, scene.provider, newest, NullReporter(),
                                                      lambda: None))
        await asyncio.to_thread(deleting.wait, 10)
        task.cancel()  # what SIGTERM and Ctrl-C do to a backup
        await asyncio.sleep(0.2)
        assert not task.done(), "the backup unwinds (and releases its lock) only once the deletion under way ends"
        go_on.set()
        with pytest.raises(Interrupted, match=r"retention after backup r3 \(which succeeded\) was interrupted"):
            await task

    asyncio.run(backup_stopped_while_deleting())

    assert len(deleted) == 1, "no deletion begins after the interruption"
    assert scene.run_ids() == {"r0", "r1", "r2", "r3"}
    # The run under deletion stays marked, for the next prune to finish; those not begun are as before.
    assert scene.catalog.load("r0").status == PRUNING
    assert {scene.catalog.load(r).status for r in ("r1", "r2")} == {"succeeded"}
    record = scene.catalog.load("r3").extra["retention"]
    assert record["error"].startswith("prune was interrupted (SIG")
    assert "unmarked (r1, r2)" in record["error"] and "run r0, whose snapshots it was deleting" in record["error"]
    scene.provider.delete = real_delete
    assert prune(inv).ok and scene.run_ids() == {"r3"}


def test_retention_after_a_no_wait_backup_does_not_count_it_so_the_backups_it_replaces_stay(scene: Scene) -> None:
    # With keep_last: 1, `backup --no-wait` deleted every completed backup and kept only its own,
    # whose snapshots were still pending (not durable, or a cloud snapshot that may yet fail).
    scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1))
    pending = scene.add_run("r2", T0 + timedelta(days=2), waited=False)
    inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})

    asyncio.run(prune_after_backup(inv, scene.catalog, scene.provider, pending, NullReporter(), lambda: None))

    assert scene.run_ids() == {"r1", "r2"}, "the newest completed backup stays beside the pending one"
    assert scene.catalog.load("r2").extra["retention"] == {"deleted": ["r0"], "kept": 2}
    kept = plan(scene.catalog, scene.provider, inv.retention, 600.0, pending).kept
    assert kept[0].reasons == ["its snapshots are not complete yet (--no-wait): not counted"]
    states = {r.state for r in scene.provider.describe(scene.catalog.load("r2").snapshot_refs())}
    assert states == {"pending"}, "its own retention never makes a --no-wait backup wait for the disk after all"


def test_retention_after_a_backup_completes_an_earlier_no_wait_run_and_counts_it(scene: Scene) -> None:
    # A cron of local `backup --no-wait`: every run stayed pending for good, so retention never
    # counted one, and kept every completed backup from before the cron began besides.
    scene.add_run("r0", T0)
    earlier = scene.add_run("r1", T0 + timedelta(days=1), waited=False)
    current = scene.add_run("r2", T0 + timedelta(days=2), waited=False)
    inv = inventory(scene, {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})

    asyncio.run(prune_after_backup(inv, scene.catalog, scene.provider, current, NullReporter(), lambda: None))

    assert scene.run_ids() == {"r1", "r2"}, "r1, completed and counted, replaces r0"
    assert scene.catalog.load("r2").extra["retention"] == {"deleted": ["r0"], "kept": 2}
    assert scene.catalog.load("r1").snapshots_completed
    assert {r.state for r in scene.provider.describe(earlier.snapshot_refs())} == {"completed"}
    assert {r.state for r in scene.provider.describe(current.snapshot_refs())} == {"pending"}


def test_retention_stopped_by_ctrl_c_completes_no_further_no_wait_run(scene: Scene) -> None:
    # Ctrl-C/SIGTERM sets the stop flag; the plan's completions must look at it, or the backup goes
    # on fsyncing every earlier --no-wait run it keeps (each up to policy.wait_timeout_s) before it
    # unwinds and releases its lock.
    scene.add_run("r0", T0)
    scene.add_run("r1", T0 + timedelta(days=1), waited=False)
    scene.add_run("r2", T0 + timedelta(days=2), waited=False)
    newest = scene.add_run("r3", T0 + timedelta(days=3))
    inv = inventory(scene, {"keep_last": 3, "daily": 0, "weekly": 0, "monthly": 0})

    async def backup_stopped_while_completing(completing: threading.Event, go_on: threading.Event) -> None:
        task = asyncio.create_task(prune_after_backup(inv, scene.catalog, scene.provider, newest, NullReporter(),
                                                      lambda: None))
        await asyncio.to_thread(completing.wait, 10)
        task.cancel()  # what SIGTERM and Ctrl-C do to a backup
        await asyncio.sleep(0.2)  # the task sees its cancellation and sets the stop flag first
        go_on.set()
        with pytest.raises(Interrupted):
            await task

    with completions_held_at_the_first(scene.provider) as (completing, go_on, completed):
        asyncio.run(backup_stopped_while_completing(completing, go_on))

    assert [c.split("-")[0] for c in completed] == ["r2"], "no completion begins after the interruption"


def test_a_backup_stopped_while_completing_the_newest_no_wait_run_begins_no_further_completion(
        scene: Scene) -> None:
    # Ctrl-C while a backup completed the newest --no-wait run's snapshots (before any hold)
    # cancelled the await, but its thread went on fsyncing every snapshot left, after the lock was
    # released, and asyncio.run waited for it: up to policy.wait_timeout_s after "interrupted".
    from snapctl.completion import complete_newest_backup

    scene.add_run("r1", T0, waited=False)

    async def backup_stopped_while_completing(completing: threading.Event, go_on: threading.Event) -> None:
        task = asyncio.create_task(complete_newest_backup(scene.catalog, scene.provider, NullReporter(), 60.0))
        await asyncio.to_thread(completing.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        go_on.set()

    with completions_held_at_the_first(scene.provider) as (completing, go_on, completed):
        asyncio.run(backup_stopped_while_completing(completing, go_on))  # returns once the executor's threads do

    assert len(completed) == 1, "the snapshot under way is finished, and no other is begun"
    assert not scene.catalog.load("r1").snapshots_completed
