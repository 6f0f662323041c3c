"""A trigger that outlives its timeout: the engine's snapshot goes on in its agent (a process of
its own, or snapctl's when embedded), and a backup's prepare that follows must say so, not wait
behind it and time out as if the engine were stuck, nor hold anything.

node1 runs SQLite kept from checkpointing by a reader, or the DingoDB adapter against the fake
store (tests/fakes/dingodb.py), whose snapshot lands seconds after the RPC, embedded or behind a
real agent process; node2 runs SQLite behind a real agent process.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from snapctl.errors import ExitCode
from tests.fakes.dingodb import FakeDingoStore
from tests.faults.harness import FaultCluster, create_db, wait_until

# The trigger is given up on after 1 s; the prepare would wait behind it (SQLite's checkpoint
# waits up to the engine's timeout_s, 10 s, for a reader) past its own 6 s.
POLICY = {"trigger_timeout_s": "1s", "prepare_timeout_s": "6s"}


def _dingodb(store: FakeDingoStore, volume: Path) -> dict:
    return {"type": "dingodb", "server": f"127.0.0.1:{store.server.port}", "raft": f"127.0.0.1:{store.raft.port}",
            "data_path": str(volume), "poll_interval_s": 0.1}


@pytest.fixture
def slow_store() -> Iterator[FakeDingoStore]:
    # 60 raft_stat reads at 0.1 s: the snapshot lands some 6 s after the RPC.
    with FakeDingoStore(region_ids=(1001,), snapshot_polls=60) as store:
        store.write(50)
        yield store


def _cluster(make_cluster, tmp_path: Path, engine: dict, agent: str) -> tuple[FaultCluster, Path]:
    """node1 with ``engine`` (a ``{volume}`` in it: node1's data directory), embedded or a real agent; node2 SQLite."""
    if agent == "remote":
        volume = tmp_path / "cluster0" / "node1" / "data"  # made by the cluster, before its agents start
        cluster = make_cluster(engines={"node1": _with_volume(engine, volume)}, nodes=("node1", "node2"))
        _make_db(engine, volume)
        return cluster, cluster.write_inventory(cluster.inventory, policy=POLICY)
    cluster = make_cluster(nodes=("node2",))
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", policy=POLICY)
    data = yaml.safe_load(inventory.read_text())
    volume = tmp_path / "vol1"
    volume.mkdir()
    _make_db(engine, volume)
    data["nodes"].insert(0, {"name": "node1", "agent": "embedded", "engine": _with_volume(engine, volume),
                             "volumes": [{"name": "data", "path": str(volume)}]})
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    return cluster, inventory


def _make_db(engine: dict, volume: Path) -> None:
    if engine["type"] == "sqlite":
        create_db(Path(_with_volume(engine, volume)["path"]))


def _with_volume(engine: dict, volume: Path) -> dict:
    return {key: value.format(volume=volume) if isinstance(value, str) else value for key, value in engine.items()}


@pytest.mark.parametrize("agent", ["embedded", "remote"])
def test_a_prepare_behind_a_trigger_still_running_is_refused_saying_so_and_nothing_stays_held(
        make_cluster, tmp_path, agent):
    # The prepare waited for the agent's lock behind the abandoned trigger and failed "prepare did
    # not answer within 6s of its hold instant; check the engine on that node". node1 is SQLite
    # (DingoDB's and AresDB's prepare snapshots by itself: a backup does not trigger them), whose
    # checkpoint a reader keeps waiting for the engine's whole timeout_s.
    engine = {"type": "sqlite", "path": "{volume}/db.sqlite", "timeout_s": 10}
    cluster, inventory = _cluster(make_cluster, tmp_path, engine, agent)
    db = Path(yaml.safe_load(inventory.read_text())["nodes"][0]["engine"]["path"])
    writer, reader = sqlite3.connect(db), sqlite3.connect(db)
    try:
        writer.execute("INSERT INTO events (note) VALUES ('in the wal')")
        writer.commit()
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchone()  # reads the wal until it ends
        result = cluster.snapctl("backup", "--trigger", "--no-prune", "-o", "json", inventory=inventory)
    finally:
        reader.close()
        writer.close()
    assert result.returncode == ExitCode.RUN_FAILED, result.stdout + result.stderr
    error = json.loads(result.stdout)["error"]
    assert "node1: the engine's own snapshot (a trigger) is still under way" in error, error
    assert "prepare of run " in error and "refused: nothing is held" in error, error
    assert "raise policy.trigger_timeout_s" in json.loads(result.stdout)["hint"]
    assert "node1: trigger failed (no answer from the" in result.stderr
    [run_id] = cluster.run_ids()
    assert cluster.manifest(run_id)["status"] == "failed"
    assert cluster.held() == set()


@pytest.mark.parametrize("agent", ["embedded", "remote"])
def test_a_trigger_past_its_timeout_says_which_setting_to_raise_embedded_or_not(make_cluster, tmp_path, slow_store,
                                                                               agent):
    # Over HTTP the hint named --timeout and policy.trigger_timeout_s; embedded, there was no hint at all.
    cluster, inventory = _cluster(make_cluster, tmp_path, _dingodb(slow_store, Path("{volume}")), agent)
    result = cluster.snapctl("trigger", "--node", "node1", "--timeout", "1", "-o", "json", inventory=inventory)
    assert result.returncode == ExitCode.RUN_FAILED, result.stdout + result.stderr
    [node] = result.json["data"]["nodes"]
    assert node["error"].endswith(" within 1s (/v1/trigger)" if agent == "remote" else " within 1s (trigger)")
    assert node["hint"].endswith("raise snapctl trigger --timeout, or policy.trigger_timeout_s for a backup's")
    region = slow_store.regions[1001]  # the engine's snapshot went on, embedded too: snapctl's process waited for it
    wait_until(lambda: region.last_snapshot_index == region.applied, 90, "the trigger's snapshot to land")
