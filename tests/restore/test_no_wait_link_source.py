"""A backup after a local `backup --no-wait`: it completes that run's pending snapshots before it
holds any node, and links unchanged files from them. It copied everything again instead: a
snapshot links only from a completed one (a linked file is never fsynced again), and nothing
completed a `--no-wait` run's snapshots but a restore."""

from __future__ import annotations

import asyncio
import errno
import json

import pytest

from snapctl.events import NullReporter
from snapctl.orchestrator import BackupOptions, backup
from snapctl.prune import prune


class Steps(NullReporter):
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def step(self, name: str, message: str) -> None:
        self.lines.append((name, message))


def _backup(cluster, *, no_wait: bool = False, prune: bool = True, reporter=None):
    manifest = asyncio.run(backup(cluster.inventory, BackupOptions(no_wait=no_wait, prune=prune), reporter))
    assert manifest.status == "succeeded", manifest.error
    return manifest


def _metadata(cluster, node: str, run_id: str) -> dict:
    return json.loads((cluster.snapshot_data(node, run_id).parent / "snapshot.json").read_text())


def _completed(cluster, node: str, run_id: str) -> bool:
    return (cluster.snapshot_data(node, run_id).parent / "completed.json").is_file()


def test_the_next_backup_completes_a_no_wait_runs_snapshots_before_the_hold_and_links_from_them(sqlite_cluster):
    first = _backup(sqlite_cluster, no_wait=True)
    assert not _completed(sqlite_cluster, "n1", first.run_id)
    steps = Steps()

    second = _backup(sqlite_cluster, reporter=steps)

    for node in ("n1", "n2"):
        assert _completed(sqlite_cluster, node, first.run_id)
        assert _metadata(sqlite_cluster, node, second.run_id)["linked_from"] == f"{first.run_id}-{node}-data"
    assert _catalog(sqlite_cluster).load(first.run_id).snapshots_completed, "and retention counts it"
    names = [name for name, _ in steps.lines]
    assert names.index("complete") < names.index("preflight") < names.index("prepare"), steps.lines
    assert ("complete", f"completing the 2 pending snapshots of run {first.run_id} (backup --no-wait) before any "
                        "node is held") in steps.lines


def test_a_no_wait_backup_too_links_from_the_previous_no_wait_run_and_leaves_its_own_pending(sqlite_cluster):
    first = _backup(sqlite_cluster, no_wait=True)
    second = _backup(sqlite_cluster, no_wait=True)

    assert _metadata(sqlite_cluster, "n1", second.run_id)["linked_from"] == f"{first.run_id}-n1-data"
    assert _completed(sqlite_cluster, "n1", first.run_id) and not _completed(sqlite_cluster, "n1", second.run_id)


def test_a_no_wait_run_whose_snapshots_fail_to_complete_is_failed_and_the_backup_copies_again(
        sqlite_cluster, monkeypatch: pytest.MonkeyPatch):
    from snapctl_local import copy as copy_module

    first = _backup(sqlite_cluster, no_wait=True)
    broken = f"{first.run_id}-n1-data"
    real = copy_module.fsync_path

    def failing(path):
        if broken in str(path):
            raise OSError(errno.EIO, "Input/output error")
        real(path)

    monkeypatch.setattr(copy_module, "fsync_path", failing)
    steps = Steps()

    second = _backup(sqlite_cluster, prune=False, reporter=steps)

    assert _metadata(sqlite_cluster, "n1", second.run_id)["linked_from"] is None, "nothing linked from a failed copy"
    failed = sqlite_cluster.snapshot_data("n1", first.run_id).parent / "failed.json"
    assert "input/output error" in json.loads(failed.read_text())["error"]
    [line] = [message for name, message in steps.lines if name == "complete" and "could not" in message]
    assert line.startswith(f"could not complete the snapshots of run {first.run_id}: node n1: snapshot {broken} of "
                           "volume data could not be written to disk (")
    assert not _catalog(sqlite_cluster).load(first.run_id).snapshots_completed

    # Treated like a failed run: a good backup newer than it, and it goes.
    monkeypatch.setattr(copy_module, "fsync_path", real)
    done = prune(sqlite_cluster.inventory)
    assert [v.run_id for v in done.deleted] == [first.run_id]
    assert done.deleted[0].reasons[0].startswith("its snapshots did not complete (backup --no-wait): snapshot "
                                                 f"{broken} is in error: could not be written to disk")


def _catalog(cluster):
    from snapctl.catalog import open_catalog

    return open_catalog(cluster.inventory)


def test_nothing_is_completed_without_an_earlier_no_wait_run(sqlite_cluster):
    steps = Steps()
    _backup(sqlite_cluster, reporter=steps)
    _backup(sqlite_cluster, reporter=steps)
    assert "complete" not in [name for name, _ in steps.lines]


def test_a_dry_run_after_a_no_wait_run_says_the_backup_would_complete_it_first_and_completes_nothing(sqlite_cluster):
    first = _backup(sqlite_cluster, no_wait=True)
    steps = Steps()

    asyncio.run(backup(sqlite_cluster.inventory, BackupOptions(dry_run=True), steps))

    assert ("complete", f"the run would first complete the 2 pending snapshots of run {first.run_id} "
                        "(backup --no-wait), before any node is held") in steps.lines
    assert not _completed(sqlite_cluster, "n1", first.run_id) and not _completed(sqlite_cluster, "n2", first.run_id)
    assert not _catalog(sqlite_cluster).load(first.run_id).snapshots_completed
