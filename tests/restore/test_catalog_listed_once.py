"""`verify`, `restore` (and its dry run) and `drill` of `latest`, and `backup --dry-run`, list the
catalog's runs once: each listed them twice, one index read and one listing of every manifest
each time (2.4 MB and a LIST per 1,000 keys on S3 at 10,000 runs), what they found the second
time being what the first had."""

from __future__ import annotations

import asyncio

import pytest

import snapctl.drill
import snapctl.orchestrator
import snapctl.restore
import snapctl.restore_plan
import snapctl.verify
from snapctl.catalog import Catalog
from snapctl.drill import run_drill
from snapctl.orchestrator import BackupOptions, backup
from snapctl.restore import restore_run
from snapctl.restore_plan import plan_restore
from snapctl.verify import verify_run
from tests.catalog.test_scale import CallCountingStore
from tests.restore.test_dead_runs import _left_running
from tests.restore.test_no_wait_link_source import Steps


@pytest.fixture
def counted(sqlite_cluster, monkeypatch) -> CallCountingStore:
    """The store of every catalog the commands open, counting its calls."""
    store = CallCountingStore(sqlite_cluster.directory / "catalog")
    for module in (snapctl.orchestrator, snapctl.verify, snapctl.restore, snapctl.restore_plan, snapctl.drill):
        monkeypatch.setattr(module, "open_catalog", lambda inventory: Catalog(store, inventory.cluster))
    return store


def scans(store: CallCountingStore, cluster: str) -> list[tuple[str, str]]:
    """The reads of the index and the listings of the manifests: a scan of the runs is one of each.
    A read of the index to write it (a drill's summary updates its run's line) is no scan."""
    index, calls = f"{cluster}/index.json", store.calls
    return [(method, key) for i, (method, key) in enumerate(calls)
            if (method, key) == ("list", f"{cluster}/manifests/")
            or ((method, key) == ("read", index) and calls[i + 1:i + 2] != [("replace", index)])]


@pytest.mark.parametrize("command", ["verify", "restore", "restore --dry-run", "drill"])
def test_latest_lists_the_runs_once_and_still_names_a_newer_run_killed_in_its_wait(sqlite_cluster, counted,
                                                                                   tmp_path, command):
    older = sqlite_cluster.backup()
    dead = _left_running(sqlite_cluster)  # newer, every snapshot taken: `latest` must say it passed it over
    counted.calls.clear()

    inventory, to = sqlite_cluster.inventory, tmp_path / "restored"
    done = {"verify": lambda: verify_run(inventory, "latest"),
            "restore": lambda: restore_run(inventory, "latest", to=to),
            "restore --dry-run": lambda: plan_restore(inventory, "latest", to=to),
            "drill": lambda: run_drill(inventory, "latest", junit=tmp_path / "drill.xml")}[command]()

    assert done.run_id == older and (command == "restore --dry-run" or done.ok)
    assert [w for w in done.warnings if w.startswith(f"latest is run {older}, not run {dead} (started ")], done.warnings
    cluster = inventory.cluster
    assert scans(counted, cluster) == [("read", f"{cluster}/index.json"), ("list", f"{cluster}/manifests/")]


def test_a_dry_run_lists_the_runs_once_and_still_says_it_would_complete_a_no_wait_run(sqlite_cluster, counted):
    first = asyncio.run(backup(sqlite_cluster.inventory, BackupOptions(no_wait=True)))
    counted.calls.clear()
    steps = Steps()

    plan = asyncio.run(backup(sqlite_cluster.inventory, BackupOptions(dry_run=True), steps))

    assert not plan.verdict.at_least("critical"), plan.verdict.findings
    assert ("complete", f"the run would first complete the 2 pending snapshots of run {first.run_id} "
                        "(backup --no-wait), before any node is held") in steps.lines
    names = [name for name, _ in steps.lines]
    assert names.index("complete") < names.index("preflight") < names.index("catalog"), steps.lines
    cluster = sqlite_cluster.inventory.cluster
    assert scans(counted, cluster) == [("read", f"{cluster}/index.json"), ("list", f"{cluster}/manifests/")]
