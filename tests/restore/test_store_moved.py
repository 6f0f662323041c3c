"""The inventory's `provider.store` changed after some runs (the local store moved to a larger
disk, say): the older runs' snapshots are where those runs recorded them, not gone."""

from __future__ import annotations

import pytest

from snapctl.catalog import open_catalog
from snapctl.errors import ProviderError
from snapctl.prune import prune
from snapctl.restore import restore_run
from snapctl.verify import verify_run

MOVED = "provider.store has changed since the run"


def test_runs_made_before_the_store_moved_are_named_where_they_are_and_never_pruned_as_gone(sqlite_cluster, tmp_path):
    old_run = sqlite_cluster.backup()
    old_snapshot = sqlite_cluster.snapshot_data("n1", old_run).parent
    sqlite_cluster.edit(provider={"type": "local", "store": "store-moved"})
    sqlite_cluster.backup()

    checks = verify_run(sqlite_cluster.inventory, old_run).snapshots
    assert [c.state for c in checks] == ["missing", "missing"]
    assert all(MOVED in c.problems[0] and str(tmp_path / "store") in c.problems[0] for c in checks), checks

    with pytest.raises(ProviderError, match=MOVED) as refused:
        restore_run(sqlite_cluster.inventory, old_run, tmp_path / "restored", record_it=False)
    assert "set provider.store back to" in (refused.value.hint or "")

    # Retention that drops the old run must not count its snapshots as deleted and forget them:
    # they would stay on the old store's disk with no manifest naming them, for good.
    sqlite_cluster.edit(retention={"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    result = prune(sqlite_cluster.inventory)
    assert [v.run_id for v in result.unfinished] == [old_run] and MOVED in result.unfinished[0].error
    assert old_snapshot.is_dir()
    assert open_catalog(sqlite_cluster.inventory).load(old_run).status == "pruning"


def test_a_store_the_run_recorded_that_cannot_be_looked_at_is_no_proof_its_snapshots_are_gone(
        sqlite_cluster, tmp_path, monkeypatch):
    # The old store another user's, or on a root-squashed mount: is_file() raised PermissionError
    # out of the provider, and prune (or a backup's retention) failed on it.
    from pathlib import Path

    old_run = sqlite_cluster.backup()
    sqlite_cluster.edit(provider={"type": "local", "store": "store-moved"})
    real_is_file = Path.is_file

    def refused_in_the_old_store(path: Path) -> bool:
        if str(path).startswith(str(tmp_path / "store") + "/"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_file(path)

    monkeypatch.setattr(Path, "is_file", refused_in_the_old_store)
    [check, _] = verify_run(sqlite_cluster.inventory, old_run).snapshots

    assert check.state == "missing"
    assert "cannot be looked at: permission denied" in check.problems[0].lower(), check.problems
