"""Embedded agents (``agent: embedded``): their holds live in snapctl's own process, so what else
that process does while a node is held, and how it ends, decides whether the hold is kept."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from tests.fakes.questdb import FakeQuestDB
from tests.faults.harness import FaultCluster, create_db


def _other_process_writes(db: Path) -> bool:
    """Whether another process can write ``db`` now (SQLite's locks are per process: this one's
    own connection would tell nothing)."""
    code = (f"import sqlite3; c = sqlite3.connect({str(db)!r}, timeout=0.2); "
            "c.execute(\"INSERT INTO events (note) VALUES ('w')\"); c.commit()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    if done.returncode and "locked" not in done.stderr:
        raise AssertionError(done.stderr)
    return done.returncode == 0


def _with_embedded_sqlite(cluster: FaultCluster, tmp_path: Path, policy: dict | None = None) -> tuple[Path, Path]:
    """The cluster's inventory with node1 an embedded SQLite node whose volume the local provider
    copies; the fault provider stops after node1's copy until ``node1.go``."""
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", provider={"stop": {"node1": "after"}}, policy=policy)
    data = yaml.safe_load(inventory.read_text())
    volume = tmp_path / "vol1"
    volume.mkdir()
    db = volume / "db.sqlite"
    create_db(db)
    data["nodes"].insert(0, {"name": "node1", "agent": "embedded", "engine": {"type": "sqlite", "path": str(db)},
                             "volumes": [{"name": "data", "path": str(volume)}]})
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    return inventory, db


def test_an_embedded_sqlite_node_stays_held_while_the_local_provider_copies_it(make_cluster, tmp_path):
    # Under 50 calls, auto once made the copies in threads of snapctl's own process: their close of
    # db.sqlite dropped the hold's fcntl lock, and another process wrote while node1 counted held.
    cluster = make_cluster(nodes=("node2",))
    inventory, db = _with_embedded_sqlite(cluster, tmp_path)
    before = sqlite3.connect(db).execute("SELECT count(*) FROM events").fetchone()[0]
    process = cluster.popen("backup", "--no-prune", inventory=inventory)
    try:
        cluster.wait_reached("node1.made")  # copied, and still held
        written_while_held = _other_process_writes(db)
    finally:
        cluster.go("node1.go")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert not written_while_held, "another process wrote node1's database while the run counted it held"
    [run_id] = cluster.run_ids()
    assert cluster.manifest(run_id)["status"] == "succeeded"
    assert sqlite3.connect(db).execute("SELECT count(*) FROM events").fetchone()[0] == before


def test_provider_process_never_with_an_embedded_sqlite_node_is_refused_before_any_hold(make_cluster, tmp_path):
    cluster = make_cluster(nodes=("node2",))
    inventory, _ = _with_embedded_sqlite(cluster, tmp_path, policy={"provider_process": "never"})
    dry = cluster.snapctl("backup", "--dry-run", inventory=inventory)
    assert dry.returncode != 0
    assert "node1: its embedded engine holds by a lock of snapctl's own process" in dry.stdout + dry.stderr
    refused = cluster.snapctl("backup", "--no-prune", "--force", inventory=inventory)
    assert refused.returncode != 0
    assert "policy.provider_process: never would drop" in refused.stderr
    assert "hint: node1: set policy.provider_process: auto or always" in refused.stderr
    assert not cluster.reached("node1.made") and not cluster.held()


def _with_embedded_questdb(cluster: FaultCluster, tmp_path: Path, questdb: FakeQuestDB, **inventory_options) -> tuple[Path, dict]:
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", **inventory_options)
    data = yaml.safe_load(inventory.read_text())
    root = tmp_path / "qdb"
    root.mkdir()
    data["nodes"].insert(0, {"name": "node1", "agent": "embedded",
                             "engine": {"type": "questdb", "url": questdb.url, "root": str(root), "timeout_s": 2},
                             "volumes": [{"name": "data", "path": str(root)}]})
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    return inventory, data


def test_a_snapctl_killed_while_an_embedded_questdb_node_is_held_leaves_a_record_the_next_run_releases(
        make_cluster, tmp_path):
    # An embedded agent once kept no hold record: QuestDB's checkpoint outlived the SIGKILL (no
    # lease watcher is left in a dead process), and every later backup was refused on it.
    with FakeQuestDB() as questdb:
        questdb.tables.update({"trades": 10})
        cluster = make_cluster(nodes=("node2",))
        inventory, data = _with_embedded_questdb(cluster, tmp_path, questdb, provider={"stop": {"node1": "after"}})
        process = cluster.popen("backup", "--no-prune", inventory=inventory)
        cluster.wait_reached("node1.made")
        assert questdb.held
        records = cluster.directory / "state" / "snapctl" / "embedded" / cluster.cluster
        recorded = sorted(records.glob("hold-node1-*.json"))
        # A status meanwhile builds node1's agent too: the live run has the record, so it is left alone.
        cluster.snapctl("status", inventory=inventory)
        assert questdb.held and all(r.exists() for r in recorded)
        process.kill()
        process.communicate(timeout=30)
        assert questdb.held  # nothing of snapctl's is left to release it

        cluster.wait_lock_free()  # the dead run's catalog lock runs out (lock_ttl_s)
        data["provider"].pop("stop")
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        after = cluster.snapctl("backup", "--no-prune", inventory=inventory)
        assert after.returncode == 0, after.stderr
        assert not questdb.held
        assert len(recorded) == 1 and not recorded[0].exists()  # released, then removed
        # Said of the process that died, a snapctl: no agent process of node1 ever ran.
        [said] = [line for line in after.stderr.splitlines() if "died while run" in line]
        assert re.fullmatch(r"warning: an earlier snapctl process died while run \S+ held the engine through its "
                            r"embedded agent \(lease until \S+ as prepared\): released its questdb checkpoint \(since \S+\)",
                            said), said
        assert records.stat().st_mode & 0o777 == 0o700


def test_a_status_where_no_embedded_hold_record_can_be_kept_still_shows_the_cluster(make_cluster, tmp_path):
    # The embedded records' directory (under $XDG_STATE_HOME) could not be made: status printed no
    # table, only "cannot create the agent's state_dir", for a node that was fine.
    with FakeQuestDB() as questdb:
        cluster = make_cluster(nodes=("node2",))
        inventory, _ = _with_embedded_questdb(cluster, tmp_path, questdb)
        not_a_directory = tmp_path / "a-file"
        not_a_directory.write_text("x")
        env = {**cluster.env(), "XDG_STATE_HOME": str(not_a_directory)}
        shown = subprocess.run([sys.executable, "-m", "snapctl.cli", "status", "-i", str(inventory)],
                               capture_output=True, text=True, timeout=120, env=env, check=False)
    assert shown.returncode in (0, 5), shown.stderr  # healthy, or degraded: no backup yet
    assert "node1" in shown.stdout and "node2" in shown.stdout
    warning = next(line for line in shown.stderr.splitlines() if "keeps no hold record" in line)
    assert warning.startswith("warning: node node1: its embedded agent keeps no hold record (")


def test_a_backup_started_while_a_status_looks_waits_for_the_embedded_hold_record(make_cluster, tmp_path):
    # A status (each refresh of --watch) has node1's record while it looks; a backup starting then
    # held node1 with no record, so a SIGKILL left the checkpoint held for good.
    import fcntl
    import threading

    with FakeQuestDB() as questdb:
        questdb.tables.update({"trades": 10})
        cluster = make_cluster(nodes=("node2",))
        inventory, _ = _with_embedded_questdb(cluster, tmp_path, questdb, provider={"stop": {"node1": "after"}})
        assert cluster.snapctl("status", inventory=inventory).returncode in (0, 5)
        records = cluster.directory / "state" / "snapctl" / "embedded" / cluster.cluster
        [lock] = sorted(records.glob("hold-node1-*.lock"))
        looking = os.open(lock, os.O_RDWR)  # what a status holds while it asks the engine
        fcntl.flock(looking, fcntl.LOCK_EX | fcntl.LOCK_NB)
        threading.Timer(1.0, os.close, (looking,)).start()  # the status ends a moment later
        process = cluster.popen("backup", "--no-prune", inventory=inventory)
        try:
            cluster.wait_reached("node1.made")
            assert questdb.held
            assert sorted(records.glob("hold-node1-*.json")), "the backup holds node1 with no record"
        finally:
            process.kill()
            process.communicate(timeout=30)


def test_a_dry_run_with_an_embedded_questdb_node_writes_no_record_and_leaves_a_killed_runs_hold_alone(
        make_cluster, tmp_path):
    # The dry run built its agents as a backup does: it made $XDG_STATE_HOME/snapctl/embedded/CLUSTER
    # and its record lock, and released the hold a killed snapctl left, though README says a dry run
    # holds and writes nothing.
    with FakeQuestDB() as questdb:
        questdb.tables.update({"trades": 10})
        cluster = make_cluster(nodes=("node2",))
        inventory, data = _with_embedded_questdb(cluster, tmp_path, questdb, provider={"stop": {"node1": "after"}})
        state = cluster.directory / "state"
        before = sorted(state.rglob("*")) if state.exists() else []
        dry = cluster.snapctl("backup", "--dry-run", inventory=inventory)
        assert dry.returncode in (0, 5), dry.stderr
        assert (sorted(state.rglob("*")) if state.exists() else []) == before

        process = cluster.popen("backup", "--no-prune", inventory=inventory)
        cluster.wait_reached("node1.made")
        live = cluster.snapctl("backup", "--dry-run", inventory=inventory)
        assert "left by a snapctl killed outright" not in live.stderr  # the live run's record, not a left one
        process.kill()
        process.communicate(timeout=30)
        records = state / "snapctl" / "embedded" / cluster.cluster
        [recorded] = sorted(records.glob("hold-node1-*.json"))
        left = recorded.read_bytes()
        run_id = json.loads(left)["run_id"]
        dry = cluster.snapctl("backup", "--dry-run", inventory=inventory)
        assert questdb.held and recorded.read_bytes() == left  # said, not acted on
        assert (f"warning: node node1: run {run_id}'s hold on the engine, left by a snapctl killed outright, is "
                f"recorded in {recorded}: the next backup or status releases it; this command leaves it"
                in dry.stderr.splitlines()), dry.stderr
        assert "engine already held by another questdb client" in dry.stdout  # what the engine says of it
