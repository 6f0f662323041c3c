"""`verify latest` and `backup --dry-run` list the catalog's runs once: each listed them twice,
one index read and one listing of every manifest each time (2.4 MB and a LIST per 1,000 keys on
S3 at 10,000 runs), what they found the second time being what the first had."""

from __future__ import annotations

import asyncio

import pytest

import snapctl.orchestrator
import snapctl.verify
from snapctl.catalog import Catalog
from snapctl.orchestrator import BackupOptions, backup
from snapctl.verify import verify_run
from tests.catalog.test_scale import CallCountingStore
from tests.restore.test_dead_runs import _left_running
from tests.restore.test_no_wait_link_source import Steps


@pytest.fixture
def counted(sqlite_cluster, monkeypatch) -> CallCountingStore:
    """The store of every catalog the backup and verify commands open, counting its calls."""
    store = CallCountingStore(sqlite_cluster.directory / "catalog")
    for module in (snapctl.orchestrator, snapctl.verify):
        monkeypatch.setattr(module, "open_catalog", lambda inventory: Catalog(store, inventory.cluster))
    return store


def scans(store: CallCountingStore, cluster: str) -> list[tuple[str, str]]:
    return [(method, key) for method, key in store.calls
            if (method, key) in (("read", f"{cluster}/index.json"), ("list", f"{cluster}/manifests/"))]


def test_verify_latest_lists_the_runs_once_and_still_names_a_newer_run_killed_in_its_wait(sqlite_cluster, counted):
    older = sqlite_cluster.backup()
    dead = _left_running(sqlite_cluster)  # newer, every snapshot taken: `latest` must say it passed it over
    counted.calls.clear()

    verified = verify_run(sqlite_cluster.inventory, "latest")

    assert verified.ok and verified.run_id == older
    assert [w for w in verified.warnings if w.startswith(f"latest is run {older}, not run {dead} (started ")]
    cluster = sqlite_cluster.inventory.cluster
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
