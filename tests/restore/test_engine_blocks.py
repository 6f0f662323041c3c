"""A node whose agent runs elsewhere may have an `engine:` block in the inventory, which restores
and drills start its engine from (README: unknown keys are rejected with the valid ones). A
mistake in it was found only when a restore came to that node: backups, `backup --dry-run` and
`status` took it, night after night, and a restore copied the nodes before it, then stopped."""

from __future__ import annotations

import asyncio
import re

import pytest

from snapctl.drill import run_drill
from snapctl.errors import BadInputError, ExitCode
from snapctl.orchestrator import BackupOptions, backup
from snapctl.restore import restore_run
from snapctl.status import collect_status
from tests.restore.conftest import node_without_engine_block, vendordb_plugin

WRONG = "node n2: engine sqlite: unknown key 'pth' (valid keys: type, timeout_s, path)"


@pytest.fixture
def wrong_block(sqlite_cluster):
    """n2 served by its own agent process, its inventory block with a typo in a key."""
    with node_without_engine_block(sqlite_cluster, "n2"):
        run_id = sqlite_cluster.backup()
        sqlite_cluster.edit(node_n2={"engine": {"type": "sqlite", "pth": "n2/data/app.db"}})
        yield run_id


@pytest.mark.parametrize("dry_run", [False, True], ids=["backup", "dry-run"])
def test_backup_refuses_a_wrong_engine_block_of_a_node_whose_agent_runs_elsewhere(sqlite_cluster, wrong_block,
                                                                                  dry_run):
    with pytest.raises(BadInputError, match=f": {re.escape(WRONG)}$") as refused:
        asyncio.run(backup(sqlite_cluster.inventory, BackupOptions(dry_run=dry_run)))
    assert refused.value.exit_code == ExitCode.BAD_INPUT
    assert refused.value.message.startswith(f"{sqlite_cluster.inventory_path}:")  # file:line
    from snapctl.catalog import open_catalog

    assert [e.run_id for e in open_catalog(sqlite_cluster.inventory).list()[0]] == [wrong_block], "no run began"


def test_status_refuses_it_as_backup_does(sqlite_cluster, wrong_block):
    with pytest.raises(BadInputError, match=f": {re.escape(WRONG)}$"):
        asyncio.run(collect_status(sqlite_cluster.inventory))


def test_restore_and_drill_refuse_it_before_restoring_any_node(sqlite_cluster, wrong_block, tmp_path):
    with pytest.raises(BadInputError, match=f": {re.escape(WRONG)}$"):
        restore_run(sqlite_cluster.inventory, wrong_block, tmp_path / "restored")
    assert not (tmp_path / "restored" / "n1").exists(), "n1 was restored before n2's block was read"

    with pytest.raises(BadInputError, match=f": {re.escape(WRONG)}$"):
        run_drill(sqlite_cluster.inventory, wrong_block, junit=tmp_path / "drill.xml")
    assert not any((sqlite_cluster.directory / "scratch").iterdir()), "n1 was drilled before n2's block was read"


def test_an_engine_installed_on_its_agents_host_alone_is_left_to_that_agent_by_backup_and_status(sqlite_cluster,
                                                                                                  tmp_path):
    # A third-party engine plugin (README: entry points) on the database hosts only: this host
    # cannot read the block, and backup and status, which start no engine here, need not.
    with node_without_engine_block(sqlite_cluster, "n2", "vendordb", vendordb_plugin(tmp_path)):
        sqlite_cluster.edit(node_n2={"engine": {"type": "vendordb", "dsn": "vendordb://n2"}})
        manifest = asyncio.run(backup(sqlite_cluster.inventory, BackupOptions()))
        assert manifest.status == "succeeded" and manifest.nodes["n2"].snapshots
        status = asyncio.run(collect_status(sqlite_cluster.inventory))
        assert {p.node: p.status is not None for p in status.probes} == {"n1": True, "n2": True}
        # A restore starts engines from the blocks: there it is bad input, before any node is restored.
        with pytest.raises(BadInputError, match=r"unknown engine type 'vendordb'"):
            restore_run(sqlite_cluster.inventory, manifest.run_id, tmp_path / "restored")
        assert not (tmp_path / "restored" / "n1").exists()


def test_restore_and_drill_refuse_a_mistyped_volume_key_before_restoring_any_node(sqlite_cluster, tmp_path):
    # Backup refuses it; a restore took it and found none of the engine's paths on a volume:
    # the node restored neither prepared nor verified, and the restore said ok.
    run_id = sqlite_cluster.backup()
    sqlite_cluster.edit(node_n2={"volumes": [{"name": "data", "pth": "n2/data"}]})
    said = re.escape("node n2: volumes[0]: unknown key 'pth' (valid keys: name, path)")

    with pytest.raises(BadInputError, match=f"^{re.escape(str(sqlite_cluster.inventory_path))}:[0-9]+: {said}$"):
        restore_run(sqlite_cluster.inventory, run_id, tmp_path / "restored")
    assert not (tmp_path / "restored" / "n1").exists()
    with pytest.raises(BadInputError, match=said):
        run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "drill.xml")
    assert not any((sqlite_cluster.directory / "scratch").iterdir())
