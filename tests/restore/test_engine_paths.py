"""An engine block whose data paths lie partly off the restored volumes. remap_paths moved the
paths on a restored volume and kept the others, which then named this host's live files: a
restore's restore-prepare deleted Tarantool's *.inprogress files in the live memtx directory, and
a drill's scratch etcd was rebuilt from the live host's saved snapshot, passing without the backup."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapctl.config import parse_inventory
from snapctl.drill import run_drill
from snapctl.errors import BadInputError, ExitCode
from snapctl.restore import remap_paths, restore_run
from tests.restore.conftest import node_without_engine_block


@pytest.fixture
def run_of_n2_elsewhere(sqlite_cluster):
    """A run with n2 served by its own agent process: the inventory's engine block for n2 is the
    operator's, read only by restores and drills."""
    with node_without_engine_block(sqlite_cluster, "n2"):
        yield sqlite_cluster.backup()


def test_a_restore_refuses_a_tarantool_data_path_off_the_volumes_and_leaves_its_live_files_alone(
        sqlite_cluster, run_of_n2_elsewhere, tmp_path):
    live = tmp_path / "live-memtx"
    live.mkdir()
    (live / "00000000000000000042.snap").write_bytes(b"live")
    in_progress = live / "00000000000000000043.snap.inprogress"
    in_progress.write_bytes(b"live checkpoint being written")
    sqlite_cluster.edit(node_n2={"engine": {"type": "tarantool", "data_paths": [str(live), "n2/data"]}})

    with pytest.raises(BadInputError) as refused:
        restore_run(sqlite_cluster.inventory, run_of_n2_elsewhere, tmp_path / "restored")

    assert refused.value.exit_code == ExitCode.BAD_INPUT
    assert refused.value.message == (
        f"node n2: the engine's data_paths {live} lies on none of the restored volumes "
        f"(data ({sqlite_cluster.directory / 'n2' / 'data'})): the restore would use this host's live files there "
        "instead of the backup's")
    assert refused.value.hint.startswith("point data_paths at its place on one of the node's volumes")
    assert in_progress.exists(), "restore-prepare ran on the live memtx directory"
    assert not (tmp_path / "restored").exists(), "refused before anything was restored"


def test_a_drill_refuses_an_etcd_backup_dir_off_the_volumes_before_restoring_any_node(
        sqlite_cluster, run_of_n2_elsewhere, tmp_path):
    live = tmp_path / "live-backups"
    live.mkdir()
    (live / "manual-20260101T000000000000Z.db").write_bytes(b"the live host's saved snapshot")
    sqlite_cluster.edit(node_n2={"engine": {"type": "etcd", "data_dir": "n2/data/etcd", "backup_dir": str(live)}})

    with pytest.raises(BadInputError, match=f"^node n2: the engine's backup_dir {live} lies on none of the restored "
                                            r"volumes \(data \(.*\)\): the drill would use this host's live files"):
        run_drill(sqlite_cluster.inventory, run_of_n2_elsewhere, junit=tmp_path / "drill.xml")
    assert not any((sqlite_cluster.directory / "scratch").iterdir()), "no node was restored"


def test_path_settings_a_restore_does_not_use_are_dropped_not_left_on_the_live_files(tmp_path):
    inventory = parse_inventory("""
cluster: c
provider: {type: local}
nodes:
  - name: e1
    agent: embedded
    engine: {type: etcd, backup_dir: /srv/etcd-backup, data_dir: /var/lib/etcd, password_file: /etc/etcd.pw}
    volumes: [{name: backup, path: /srv/etcd-backup}]
""", base_dir=tmp_path)
    node = inventory.nodes[0]
    for drill in (False, True):  # without restore: settings, nothing reads data_dir
        moved = remap_paths(node.engine, inventory, node, {"backup": "/r/backup"}, drill=drill)
        assert moved["backup_dir"] == "/r/backup" and "data_dir" not in moved
        assert moved["password_file"] == "/etc/etcd.pw"  # this host's configuration, not data
    rebuilt = {**node.engine, "restore": {"name": "e1", "initial_cluster": "e1=http://127.0.0.1:2380",
                                          "initial_advertise_peer_urls": "http://127.0.0.1:2380"}}
    assert "data_dir" not in remap_paths(rebuilt, inventory, node, {"backup": "/r/backup"}, drill=True)  # scratch
    with pytest.raises(BadInputError, match="the engine's data_dir /var/lib/etcd lies on none of the restored volumes"):
        remap_paths(rebuilt, inventory, node, {"backup": "/r/backup"})


def test_an_engine_path_wholly_off_the_volumes_is_refused_before_restoring_not_left_unprepared(
        sqlite_cluster, run_of_n2_elsewhere, tmp_path):
    # n2's database pointed at n1's: nothing of n2's engine lies on its own volumes, so nothing
    # moved, and the restore went on, leaving n2 neither prepared nor verified, with exit 0.
    other = sqlite_cluster.directory / "n1" / "data" / "app.db"
    sqlite_cluster.edit(node_n2={"engine": {"type": "sqlite", "path": "n1/data/app.db"}})
    said = f"^node n2: the engine's path {other} lies on none of the restored volumes \\(data \\(.*\\)\\): the"

    with pytest.raises(BadInputError, match=f"{said} restore would use this host's live files"):
        restore_run(sqlite_cluster.inventory, run_of_n2_elsewhere, tmp_path / "restored")
    assert not (tmp_path / "restored").exists(), "refused before anything was restored"
    with pytest.raises(BadInputError, match=f"{said} drill would use"):
        run_drill(sqlite_cluster.inventory, run_of_n2_elsewhere, junit=tmp_path / "drill.xml")
    assert not any((sqlite_cluster.directory / "scratch").iterdir()), "no node was restored"



@pytest.mark.parametrize("drill", [False, True])
def test_a_restored_database_that_is_a_link_off_the_volumes_is_refused(tmp_path, drill):
    # The preflight refuses to back up a database that is a link off the volumes; but restored data
    # is whatever the snapshot holds (a link planted after the preflight, a store that was written
    # to). On this host the link names a live file: restore-prepare deleted its -shm, and verify
    # counted its rows as the backup's. Real files: the restored volume holds the link.
    inventory = parse_inventory("""
cluster: c
provider: {type: local}
nodes:
  - name: n1
    agent: embedded
    engine: {type: sqlite, path: /srv/n1/data/app.db}
    volumes: [{name: data, path: /srv/n1/data}]
""", base_dir=tmp_path)
    node = inventory.nodes[0]
    live = tmp_path / "other-disk" / "app.db"
    live.parent.mkdir()
    live.write_bytes(b"a live database")
    restored = tmp_path / "restored" / "n1" / "data"
    restored.mkdir(parents=True)
    (restored / "app.db").symlink_to(live)

    with pytest.raises(BadInputError) as refused:
        remap_paths(node.engine, inventory, node, {"data": str(restored)}, drill=drill)

    assert refused.value.message == (
        f"node n1: the engine's path {restored / 'app.db'} leads off the restored volumes through a symbolic link "
        f"in the backup's data, to {live}: the {'drill' if drill else 'restore'} would use the files there instead "
        "of the backup's")
    assert refused.value.hint.startswith("the backup holds a link, not the data: list the directory it points to")
    # A link that stays on the restored volume is the source's own layout, and is followed.
    (restored / "app.db").unlink()
    (restored / "app-v2.db").write_bytes(b"the restored database")
    (restored / "app.db").symlink_to("app-v2.db")
    assert remap_paths(node.engine, inventory, node, {"data": str(restored)}, drill=drill) == {
        "type": "sqlite", "path": str(restored / "app.db")}


def test_an_absolute_link_within_the_nodes_own_volume_is_refused_with_the_fix_that_keeps_it_there(tmp_path):
    # On another host (a CI drill) an absolute link the source kept inside its volume points at the
    # source's path: the refusal's hint said to list that directory among the node's volumes, which
    # it already was. Relative, the same link is followed into the restored copy.
    source = tmp_path / "srv" / "n1"
    inventory = parse_inventory(f"""
cluster: c
provider: {{type: local}}
nodes:
  - name: n1
    agent: embedded
    engine: {{type: sqlite, path: {source / 'app.db'}}}
    volumes: [{{name: data, path: {source}}}]
""", base_dir=tmp_path)
    node = inventory.nodes[0]
    restored = tmp_path / "restored" / "n1" / "data"
    (restored / "real").mkdir(parents=True)
    (restored / "real" / "app.db").write_bytes(b"the restored database")
    (restored / "app.db").symlink_to(source / "real" / "app.db")  # as the backup holds it

    with pytest.raises(BadInputError) as refused:
        remap_paths(node.engine, inventory, node, {"data": str(restored)}, drill=True)

    assert "leads off the restored volumes through a symbolic link" in refused.value.message
    assert refused.value.hint == ("the link is absolute, into volume data at its place on the source: make it "
                                  "relative (ln -sfr TARGET LINK) so that it stays within the volume restored")
    (restored / "app.db").unlink()
    (restored / "app.db").symlink_to(Path("real") / "app.db")
    assert remap_paths(node.engine, inventory, node, {"data": str(restored)}, drill=True)["path"] == str(
        restored / "app.db")
