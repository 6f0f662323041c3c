"""`snapctl restore` with the local provider: targets, restore-prepare, in-place verification."""

from __future__ import annotations

import sqlite3

import pytest

from snapctl.catalog import open_catalog
from snapctl.config import parse_inventory
from snapctl.errors import BadInputError, SnapctlError
from snapctl.providers import RestoreTarget
from snapctl.restore import RestoreRecord, remap_paths, restore_run, restore_target
from tests.restore.conftest import NODES, ROWS, checkpointed, node_without_engine_block, scratch_agent


def test_restore_to_a_directory_prepares_and_verifies_each_node(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    sqlite_cluster.write("n2", 5)
    target = tmp_path / "restored"
    (target / "n1" / "data").mkdir(parents=True)
    (target / "n1" / "data" / "app.db-shm").write_bytes(b"stale")  # not empty: the provider refuses

    with pytest.raises(BadInputError, match="is not an empty directory"):
        restore_run(sqlite_cluster.inventory, run_id, target)

    result = restore_run(sqlite_cluster.inventory, run_id, tmp_path / "again")
    assert result.ok
    assert [node.node for node in result.nodes] == list(NODES)
    for node in result.nodes:
        assert node.volumes == {"data": str(tmp_path / "again" / node.node / "data")}
        assert node.prepared == "in-process"
        assert node.facts.tables["items"].rows == ROWS and node.mismatches == []


def test_every_target_is_checked_before_any_node_is_restored(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    target = tmp_path / "restored"
    (target / "n2" / "data").mkdir(parents=True)
    (target / "n2" / "data" / "x").write_bytes(b"")  # only n2's target is in the way

    with pytest.raises(BadInputError, match=f"node n2: restore target {target / 'n2' / 'data'} is not an empty"):
        restore_run(sqlite_cluster.inventory, run_id, target)
    assert not (target / "n1").exists(), "n1 was not restored before n2's target was found unusable"

    (target / "n2" / "data" / "x").unlink()
    assert restore_run(sqlite_cluster.inventory, run_id, target).ok  # so the retry just works

    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(BadInputError, match=f"node n1: cannot restore to {tmp_path / 'file' / 'n1' / 'data'}: "
                                            f"{tmp_path / 'file'} is not a directory"):
        restore_run(sqlite_cluster.inventory, run_id, tmp_path / "file")

    sqlite_cluster.edit(node_n1={"restore": {"path": "same"}}, node_n2={"restore": {"path": "same"}})
    with pytest.raises(BadInputError, match=f"node n1 volume data and node n2 volume data would be restored to "
                                            f"the same place: {tmp_path / 'same' / 'data'}"):
        restore_run(sqlite_cluster.inventory, run_id)
    assert not (tmp_path / "same").exists()

    # One inside the other (n2 would land inside n1's restored volume), and the same place
    # through a symlink: refused before either is copied too.
    sqlite_cluster.edit(node_n1={"restore": {"path": "nest"}}, node_n2={"restore": {"path": "nest/data"}})
    with pytest.raises(BadInputError, match="node n1 volume data and node n2 volume data would be restored to "
                                            "one inside the other"):
        restore_run(sqlite_cluster.inventory, run_id)
    assert not (tmp_path / "nest").exists()
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    sqlite_cluster.edit(node_n1={"restore": {"path": "real"}}, node_n2={"restore": {"path": "alias"}})
    with pytest.raises(BadInputError, match="would be restored to the same place"):
        restore_run(sqlite_cluster.inventory, run_id)
    assert list((tmp_path / "real").iterdir()) == []


def test_a_restore_that_fails_after_restoring_some_volumes_names_them(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    database = sqlite_cluster.snapshot_data("n2", run_id) / "app.db"
    database.write_bytes(b"x" * database.stat().st_size)  # not a database, of its recorded size
    target = tmp_path / "restored"

    with pytest.raises(SnapctlError) as raised:
        restore_run(sqlite_cluster.inventory, run_id, target)

    assert raised.value.hint.endswith(
        f"restored before this failure: n1/data at {target / 'n1' / 'data'}, n2/data at {target / 'n2' / 'data'}; "
        "remove them, and the .snapctl-restore.json beside each, before restoring into the same place again")


def test_each_node_restores_to_its_own_restore_path_when_no_target_is_given(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    with pytest.raises(BadInputError, match="node n1: nowhere to restore to"):
        restore_run(sqlite_cluster.inventory, "latest")
    sqlite_cluster.edit(node_n1={"restore": {"path": "r/n1"}}, node_n2={"restore": {"path": "r/n2"}})
    result = restore_run(sqlite_cluster.inventory, "latest")
    assert [n.volumes["data"] for n in result.nodes] == [str(tmp_path / "r" / n / "data") for n in ("n1", "n2")]
    with sqlite3.connect(tmp_path / "r" / "n2" / "data" / "app.db") as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == ROWS


def test_a_changed_row_makes_the_restore_report_the_mismatch(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    with sqlite3.connect(sqlite_cluster.snapshot_data("n1", run_id) / "app.db") as conn:
        conn.execute("DELETE FROM items WHERE id = 1")
    checkpointed(sqlite_cluster.snapshot_data("n1", run_id) / "app.db")
    result = restore_run(sqlite_cluster.inventory, run_id, tmp_path / "restored")
    assert not result.ok
    assert result.nodes[0].mismatches == [f"table items: {ROWS - 1} rows, expected {ROWS}"]
    assert result.nodes[1].mismatches == []


def test_cloud_targets_come_from_flags_then_the_nodes_restore_block():
    inventory = parse_inventory("""
cluster: c
provider: {type: local}
nodes:
  - name: db1
    agent: http://127.0.0.1:7701
    volumes: [data]
    restore: {zone: us-east-1a, instance: i-0123456789abcdef0, devices: {data: /dev/sdf, wal: /dev/sdg},
              options: {volume_type: gp3}}
  - name: db2
    agent: http://127.0.0.1:7702
    volumes: [data]
""")
    db1, db2 = inventory.nodes
    assert restore_target(db1, "wal", root=None, zone=None, attach=True) == RestoreTarget(
        zone="us-east-1a", instance="i-0123456789abcdef0", device="/dev/sdg", extra={"volume_type": "gp3"})
    plain = restore_target(db1, "data", root=None, zone="us-east-1c", attach=False)
    assert (plain.zone, plain.instance, plain.device) == ("us-east-1c", None, None)
    with pytest.raises(BadInputError, match="node db2: --attach needs restore.instance"):
        restore_target(db2, "data", root=None, zone="us-east-1a", attach=True)


def test_engine_paths_on_a_volume_move_to_where_it_was_restored(tmp_path):
    inventory = parse_inventory("""
cluster: c
provider: {type: local}
nodes:
  - name: tt1
    agent: embedded
    engine: {type: tarantool, work_dir: /srv/tt/work, data_paths: [/srv/tt/work/memtx, /srv/wal],
              password_file: /etc/tt.password, host: 127.0.0.1}
    volumes: [{name: work, path: /srv/tt/work}, {name: wal, path: /srv/wal}]
""", base_dir=tmp_path)
    node = inventory.nodes[0]
    moved = remap_paths(node.engine, inventory, node, {"work": "/r/work", "wal": "/r/wal"})
    assert moved["work_dir"] == "/r/work"
    assert moved["data_paths"] == ["/r/work/memtx", "/r/wal"]
    assert moved["password_file"] == "/etc/tt.password" and moved["host"] == "127.0.0.1"
    assert remap_paths(node.engine, inventory, node, {}) is None


def test_a_node_with_a_scratch_agent_is_restore_prepared_by_that_agent(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    token_file = tmp_path / "agent-token"
    token_file.write_text("scratch-agent-token\n")
    target = tmp_path / "n1-scratch"
    with scratch_agent(tmp_path, token_file, target / "data" / "app.db") as url:
        sqlite_cluster.edit(auth={"token_file": str(token_file)},
                            node_n1={"restore": {"path": str(target), "agent": url}},
                            node_n2={"restore": {"path": str(tmp_path / "n2-restored")}})
        result = restore_run(sqlite_cluster.inventory, run_id)
    n1, n2 = result.nodes
    assert n1.volumes == {"data": str(target / "data")} and (target / "data" / "app.db").is_file()
    assert n1.prepared == url and "scratch agent" in n1.note
    assert n2.prepared == "in-process" and n2.facts.tables["items"].rows == ROWS


def test_a_prune_during_a_restore_keeps_the_run_being_restored(sqlite_cluster, tmp_path, monkeypatch):
    import snapctl.restore
    from snapctl.catalog import open_catalog
    from snapctl.prune import prune

    restoring = sqlite_cluster.backup()
    sqlite_cluster.backup()
    sqlite_cluster.edit(retention={"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    inventory = sqlite_cluster.inventory
    pruned = []
    prepare = snapctl.restore._prepare_and_check

    def prune_after_the_first_node(inventory_, node, *args, **kwargs):
        prepare(inventory_, node, *args, **kwargs)
        if node.name == "n1":  # n1 is restored, n2 not yet: what cron's backup did to the explorer
            pruned.append(prune(inventory))

    monkeypatch.setattr(snapctl.restore, "_prepare_and_check", prune_after_the_first_node)
    result = restore_run(inventory, restoring, tmp_path / "restored")

    assert result.ok and [n.node for n in result.nodes] == ["n1", "n2"]
    [during] = pruned
    assert during.deleted == [] and during.ok
    [kept] = [v for v in during.kept if v.run_id == restoring]
    assert kept.reasons[0].startswith("being restored (restore ")

    catalog = open_catalog(inventory)
    record = RestoreRecord.model_validate_json(catalog.store.read(result.record))
    assert (record.run_id, record.outcome, record.error) == (restoring, "restored", None)
    assert record.finished_at is not None and sorted(record.volumes) == ["n1/data", "n2/data"]
    monkeypatch.undo()
    assert [v.run_id for v in prune(inventory).deleted] == [restoring]  # finished: it protects no more


def test_a_failed_restore_finishes_its_record(sqlite_cluster, tmp_path):
    from snapctl.catalog import open_catalog

    run_id = sqlite_cluster.backup()
    (tmp_path / "restored" / "n1" / "data").mkdir(parents=True)
    (tmp_path / "restored" / "n1" / "data" / "x").write_bytes(b"")
    with pytest.raises(BadInputError):
        restore_run(sqlite_cluster.inventory, run_id, tmp_path / "restored")

    catalog = open_catalog(sqlite_cluster.inventory)
    [key] = catalog.store.list(f"restore-test/restores/{run_id}-")
    record = RestoreRecord.model_validate_json(catalog.store.read(key))
    assert record.finished_at is not None and record.outcome == "failed"
    assert record.error.startswith("node n1: restore target ") and record.volumes == {}


def test_a_catalog_that_cannot_be_written_refuses_the_restore_unless_told_no_prune_can_run(sqlite_cluster, tmp_path):
    # A disaster restore from a read-only copy of the catalog: the record that keeps a prune away
    # cannot be written, and the only way forward was to make the copy writable.
    import json
    import subprocess
    import sys

    run_id = sqlite_cluster.backup()
    # A file where the records' directory goes: no write there succeeds, not even as root.
    (sqlite_cluster.directory / "catalog" / "restore-test" / "restores").write_text("")

    def restore(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "snapctl.cli", "restore", run_id, "--to", "restored", *flags,
                               "-i", str(sqlite_cluster.inventory_path), "-o", "json"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, check=False)

    refused = restore()
    document = json.loads(refused.stdout)
    assert refused.returncode != 0 and document["error"].startswith("cannot put the restore on record")
    assert "pass --no-record if no prune can run meanwhile" in document["hint"]
    assert not (tmp_path / "restored").exists()

    done = restore("--no-record")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["data"]["record"] is None
    assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == ["n1", "n2"]


def test_a_node_without_an_engine_block_is_prepared_and_verified_from_what_the_run_recorded(sqlite_cluster, tmp_path):
    with node_without_engine_block(sqlite_cluster, "n1"):
        run_id = sqlite_cluster.backup()
    record = open_catalog(sqlite_cluster.inventory).load(run_id).nodes["n1"]
    assert record.engine is None and record.state.engine == "sqlite"

    n1, _ = restore_run(sqlite_cluster.inventory, run_id, tmp_path / "restored").nodes
    assert n1.prepared == "in-process" and n1.note is None and not n1.mismatches
    assert n1.facts.tables["items"].rows == ROWS

    with sqlite3.connect(sqlite_cluster.snapshot_data("n1", run_id) / "app.db") as conn:
        conn.execute("DELETE FROM items WHERE id = 1")  # the check runs: a changed snapshot is found
    checkpointed(sqlite_cluster.snapshot_data("n1", run_id) / "app.db")
    tampered = restore_run(sqlite_cluster.inventory, run_id, tmp_path / "again")
    assert not tampered.ok and tampered.nodes[0].mismatches == [f"table items: {ROWS - 1} rows, expected {ROWS}"]


def test_a_node_whose_record_cannot_start_its_engine_is_restored_with_a_note_asking_for_the_block(sqlite_cluster,
                                                                                                   tmp_path):
    with node_without_engine_block(sqlite_cluster, "n1"):
        run_id = sqlite_cluster.backup()
    catalog = open_catalog(sqlite_cluster.inventory)
    manifest = catalog.load(run_id)
    manifest.nodes["n1"].state.engine = "tarantool"  # its record names files, not how to start it
    catalog.save(manifest)

    n1, n2 = restore_run(sqlite_cluster.inventory, run_id, tmp_path / "restored").nodes
    assert n1.volumes and n1.prepared is None and n1.facts is None
    assert n1.note == ("no engine block in the inventory, and the run recorded too little of its tarantool engine to "
                       "start it: restored, neither restore-prepared nor verified (add the node's engine block to the "
                       "inventory, as in its agent's config)")
    assert n2.facts.tables["items"].rows == ROWS


def test_a_snapshot_missing_a_recorded_file_is_refused_as_damaged_before_anything_is_copied(sqlite_cluster, tmp_path):
    """A file the snapshot's index records gone (a partial copy of the store, a hand clean-up):
    `verify` said the run cannot be restored, `restore` exited 0 "matches prepare: yes", since
    the file was none the in-place check reads (a Tarantool xlog, a second data file)."""
    from snapctl.errors import ProviderError

    (sqlite_cluster.directory / "n2" / "data" / "00000000000000000042.xlog").write_bytes(b"x" * 4096)
    run_id = sqlite_cluster.backup()
    data = sqlite_cluster.snapshot_data("n2", run_id)
    (data / "00000000000000000042.xlog").unlink()
    target = tmp_path / "restored"

    with pytest.raises(ProviderError, match=r"node n2: snapshot .*-n2-data is damaged: file "
                                            r"00000000000000000042.xlog is missing") as caught:
        restore_run(sqlite_cluster.inventory, run_id, target)
    assert "snapctl verify" in caught.value.hint
    assert not target.exists(), "n1 was copied before n2's snapshot was found damaged"

    (data / "00000000000000000042.xlog").write_bytes(b"x" * 4096)
    assert restore_run(sqlite_cluster.inventory, run_id, target).ok


def test_a_snapshot_file_cut_short_is_refused_as_damaged_by_restore_and_drill(sqlite_cluster, tmp_path):
    """A file of the snapshot truncated in the store (a disk error, a partial copy of the store):
    `verify` called the run damaged ("has 1000 bytes, recorded 65536"), yet `restore` exited 0,
    "matches prepare: yes", with the short file in the restored volume, and the drill passed."""
    from snapctl.drill import run_drill
    from snapctl.errors import ProviderError

    (sqlite_cluster.directory / "n2" / "data" / "00000000000000000042.xlog").write_bytes(b"x" * 65536)
    run_id = sqlite_cluster.backup()
    xlog = sqlite_cluster.snapshot_data("n2", run_id) / "00000000000000000042.xlog"
    with open(xlog, "r+b") as f:
        f.truncate(1000)
    target = tmp_path / "restored"

    damage = (r"node n2: snapshot .*-n2-data is damaged: file 00000000000000000042.xlog has 1000 bytes, "
              r"recorded 65536")
    with pytest.raises(ProviderError, match=damage):
        restore_run(sqlite_cluster.inventory, run_id, target)
    assert not target.exists(), "n1 was copied before n2's snapshot was found damaged"
    with pytest.raises(ProviderError, match=damage):
        run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "drill.xml")
    assert not open_catalog(sqlite_cluster.inventory).load(run_id).last_drill.ok


@pytest.mark.parametrize(("snapshot_format", "whole"), [(2, True), (3, False)])
def test_a_log_longer_than_its_index_says_is_whole_in_a_format_2_snapshot_only(sqlite_cluster, tmp_path,
                                                                              snapshot_format, whole):
    """Before format 3 the index kept the size the walk saw, and a log a held Tarantool appended to
    meanwhile was copied longer: restore called such backups damaged. Since format 3 the index
    says what was copied, and any difference is damage."""
    import json

    from snapctl.errors import ProviderError
    from snapctl.verify import verify_run

    (sqlite_cluster.directory / "n2" / "data" / "00000000000000000042.xlog").write_bytes(b"x" * 4096)
    run_id = sqlite_cluster.backup()
    data = sqlite_cluster.snapshot_data("n2", run_id)
    with open(data / "00000000000000000042.xlog", "ab") as xlog:
        xlog.write(b"appended by the held engine after the walk")
    index = json.loads((data.parent / "snapshot.json").read_text())
    assert index["format"] == 3, "what this snapctl writes"
    (data.parent / "snapshot.json").write_text(json.dumps({**index, "format": snapshot_format}))

    if whole:
        assert restore_run(sqlite_cluster.inventory, run_id, tmp_path / "restored").ok
        assert {c.state for c in verify_run(sqlite_cluster.inventory, run_id).snapshots} == {"ok"}
    else:
        with pytest.raises(ProviderError, match=r"file 00000000000000000042.xlog has 4138 bytes, recorded 4096"):
            restore_run(sqlite_cluster.inventory, run_id, tmp_path / "restored")
        assert "damaged" in {c.state for c in verify_run(sqlite_cluster.inventory, run_id).snapshots}


def test_a_target_that_is_a_symlink_to_an_empty_directory_is_restored_into_that_directory(sqlite_cluster, tmp_path):
    """A symlink pointing a target at a larger disk passed the up-front check (an empty directory),
    then the final rename failed on it, "not a directory", with n1 already restored."""
    run_id = sqlite_cluster.backup()
    big = tmp_path / "big" / "n2-data"
    big.mkdir(parents=True)
    target = tmp_path / "restored"
    (target / "n2").mkdir(parents=True)
    (target / "n2" / "data").symlink_to(big)

    result = restore_run(sqlite_cluster.inventory, run_id, target)

    assert result.ok
    n1, n2 = result.nodes
    assert n1.volumes == {"data": str(target / "n1" / "data")} and n2.volumes == {"data": str(big)}
    assert (big / "app.db").is_file() and n2.facts.tables["items"].rows == ROWS
    assert (target / "n2" / "data").is_symlink() and (target / "n2" / "data" / "app.db").is_file()
    assert (big.parent / "n2-data.snapctl-restore.json").is_file()


def test_a_node_the_run_recorded_no_snapshot_of_is_refused_not_reported_restored(sqlite_cluster, tmp_path):
    """A succeeded manifest whose node lost its snapshots (a hand edit, a damaged copy): verify
    said the run cannot be restored, restore exited 0 with the node "restored as cloud volumes"."""
    from snapctl.errors import CatalogError

    run_id = sqlite_cluster.backup()
    catalog = open_catalog(sqlite_cluster.inventory)
    manifest = catalog.load(run_id)
    manifest.nodes["n2"].snapshots = []
    catalog.save(manifest)
    target = tmp_path / "restored"

    with pytest.raises(CatalogError, match=f"node n2: run {run_id} recorded no snapshot of this node: nothing of it "
                                           "can be restored") as caught:
        restore_run(sqlite_cluster.inventory, run_id, target)
    assert "snapctl verify" in caught.value.hint
    assert not target.exists(), "n1 was restored before n2 was found to have nothing to restore"


def test_a_target_that_is_a_mount_point_is_refused_before_anything_is_copied(sqlite_cluster, tmp_path, mounted):
    """A fresh disk mounted at the target: the copy was built beside it, on the parent file system
    (which it could fill), then the rename over the mount point failed "device or resource busy"."""
    run_id = sqlite_cluster.backup()
    target = tmp_path / "restored"
    mounted(target / "n2" / "data")

    with pytest.raises(BadInputError, match=f"node n2: cannot restore to {target / 'n2' / 'data'}: it is a mount "
                                            "point") as caught:
        restore_run(sqlite_cluster.inventory, run_id, target)
    assert "inside" in caught.value.hint
    assert not (target / "n1").exists() and list((target / "n2").iterdir()) == [target / "n2" / "data"]


@pytest.mark.parametrize("flags", [{"attach": True}, {"zone": "eu-west-1a"}], ids=["attach", "zone"])
def test_cloud_only_flags_on_the_local_provider_say_so(sqlite_cluster, tmp_path, flags):
    # They said "--attach needs restore.instance" and "needs a target path", as if the fix were there.
    run_id = sqlite_cluster.backup()
    flag = "--attach" if "attach" in flags else "--zone"
    with pytest.raises(BadInputError, match=f"^{flag} is for the cloud providers: the local provider restores into "
                                            "directories") as caught:
        restore_run(sqlite_cluster.inventory, run_id, tmp_path / "restored", **flags)
    assert "--to DIR" in caught.value.hint
    assert not (tmp_path / "restored").exists()


def test_a_target_inside_a_nodes_live_volume_is_refused_before_anything_is_copied(sqlite_cluster, tmp_path):
    # `--to n1/data/oops` put every node's copy inside n1's live data: every later snapshot of n1
    # carried them, and a backup of them the next.
    run_id = sqlite_cluster.backup()
    inside = sqlite_cluster.directory / "n1" / "data" / "oops"
    with pytest.raises(BadInputError, match=r"would be restored to .*oops/n1/data, inside the live data of node n1 "
                                            r"volume data \(") as caught:
        restore_run(sqlite_cluster.inventory, run_id, inside)
    assert "once its data is moved aside" in caught.value.hint
    assert not inside.exists()


def test_a_run_a_prune_is_deleting_is_said_to_be_so_not_to_have_nothing_to_restore(sqlite_cluster, tmp_path):
    """A prune stopped (SIGTERM) once it had marked the older run and deleted n1's snapshot of it:
    restore, drill and verify of that run said "run R pruning: it has nothing to restore" (or "no
    snapshots to verify"), as if the backup had been empty, not that a prune was deleting it."""
    from snapctl.drill import run_drill
    from snapctl.verify import verify_run
    from tests.conftest import snapctl_sigtermed_after

    old = sqlite_cluster.backup()
    sqlite_cluster.backup()
    sqlite_cluster.edit(retention={"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    stopped = snapctl_sigtermed_after("snapctl.prune", "_delete_snapshot", "prune",
                                      "-i", str(sqlite_cluster.inventory_path), cwd=sqlite_cluster.directory)
    assert stopped.returncode == 130, stopped.stderr
    assert open_catalog(sqlite_cluster.inventory).load(old).status == "pruning", stopped.stderr

    said = (f"run {old} is being deleted by a prune: it cannot be used any more",
            ("pick another succeeded run from `snapctl list`; the prune that marked it, or the next one, deletes "
             "what is left of it"))
    for attempt in (lambda: restore_run(sqlite_cluster.inventory, old, tmp_path / "restored"),
                    lambda: run_drill(sqlite_cluster.inventory, old, junit=tmp_path / "drill.xml"),
                    lambda: verify_run(sqlite_cluster.inventory, old)):
        with pytest.raises(BadInputError) as caught:
            attempt()
        assert (caught.value.message, caught.value.hint) == said


def test_only_the_nodes_own_volume_directory_is_a_restore_in_place_not_another_nodes(sqlite_cluster, tmp_path):
    # n1's restore.path mistyped as n2's directory, n2's volume empty (its disk replaced): n1's data
    # went into n2's live volume, exit 0, as if that were n2's own restore in place.
    import shutil

    run_id = sqlite_cluster.backup()
    n1, n2 = sqlite_cluster.directory / "n1", sqlite_cluster.directory / "n2"
    shutil.rmtree(n2 / "data")
    (n2 / "data").mkdir()
    sqlite_cluster.edit(node_n1={"restore": {"path": "n2"}}, node_n2={"restore": {"path": str(tmp_path / "r2")}})

    with pytest.raises(BadInputError) as caught:
        restore_run(sqlite_cluster.inventory, run_id)
    assert caught.value.message == (f"node n1 volume data would be restored to {n2 / 'data'}, the live data directory "
                                    "of node n2 volume data: that volume would start from another's data")
    assert "check the node's restore.path" in caught.value.hint
    assert not any((n2 / "data").iterdir()) and not (tmp_path / "r2").exists()

    # Each node's own directory, emptied, is its restore in place.
    shutil.rmtree(n1 / "data")
    (n1 / "data").mkdir()
    sqlite_cluster.edit(node_n1={"restore": {"path": "n1"}}, node_n2={"restore": {"path": "n2"}})
    result = restore_run(sqlite_cluster.inventory, run_id)
    assert result.ok and sqlite_cluster.rows("n1") == sqlite_cluster.rows("n2") == ROWS
