"""A backup's trigger that outlives ``policy.trigger_timeout_s``: the engine's snapshot goes on in
its agent (a process of its own, or snapctl's when embedded), and the prepare that follows must
say so, not wait behind it and time out as if the engine were stuck, nor hold anything.

node1 runs the DingoDB adapter against the fake store (tests/fakes/dingodb.py), whose snapshot
lands a few seconds after the RPC; node2 runs SQLite behind a real agent process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from snapctl.errors import ExitCode
from tests.fakes.dingodb import FakeDingoStore
from tests.faults.harness import FaultCluster, wait_until

# The trigger is given up on after 1 s; the prepare would wait behind it past its own 2 s.
POLICY = {"trigger_timeout_s": "1s", "prepare_timeout_s": "2s"}


def _dingodb(store: FakeDingoStore, volume: Path) -> dict:
    return {"type": "dingodb", "server": f"127.0.0.1:{store.server.port}", "raft": f"127.0.0.1:{store.raft.port}",
            "data_path": str(volume), "poll_interval_s": 0.1}


@pytest.fixture
def slow_store() -> Iterator[FakeDingoStore]:
    # 60 raft_stat reads at 0.1 s: the snapshot lands some 6 s after the RPC.
    with FakeDingoStore(region_ids=(1001,), snapshot_polls=60) as store:
        store.write(50)
        yield store


def _cluster(make_cluster, tmp_path: Path, store: FakeDingoStore, agent: str) -> tuple[FaultCluster, Path]:
    if agent == "remote":
        cluster = make_cluster(engines={"node1": _dingodb(store, tmp_path / "cluster0" / "node1" / "data")},
                               nodes=("node1", "node2"))
        return cluster, cluster.write_inventory(cluster.inventory, policy=POLICY)
    cluster = make_cluster(nodes=("node2",))
    inventory = cluster.write_inventory(tmp_path / "inv.yaml", policy=POLICY)
    data = yaml.safe_load(inventory.read_text())
    volume = tmp_path / "vol1"
    volume.mkdir()
    data["nodes"].insert(0, {"name": "node1", "agent": "embedded", "engine": _dingodb(store, volume),
                             "volumes": [{"name": "data", "path": str(volume)}]})
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    return cluster, inventory


@pytest.mark.parametrize("agent", ["embedded", "remote"])
def test_a_prepare_behind_a_trigger_still_running_is_refused_saying_so_and_nothing_stays_held(
        make_cluster, tmp_path, slow_store, agent):
    # The prepare waited for the agent's lock behind the abandoned trigger and failed "prepare did
    # not answer within 2s of its hold instant; check the engine on that node".
    cluster, inventory = _cluster(make_cluster, tmp_path, slow_store, agent)
    result = cluster.snapctl("backup", "--trigger", "--no-prune", "-o", "json", inventory=inventory)
    assert result.returncode == ExitCode.RUN_FAILED, result.stdout + result.stderr
    error = json.loads(result.stdout)["error"] if result.stdout.strip() else result.stderr
    assert "node1: the engine's own snapshot (a trigger) is still under way" in error, error
    assert "prepare of run " in error and "refused: nothing is held" in error, error
    assert "raise policy.trigger_timeout_s" in result.stdout + result.stderr
    assert "node1: trigger failed (no answer from the" in result.stderr
    [run_id] = cluster.run_ids()
    manifest = cluster.manifest(run_id)
    assert manifest["status"] == "failed"
    assert cluster.held() == set()
    # The trigger was left to finish, not cut short: its snapshot lands.
    region = slow_store.regions[1001]
    wait_until(lambda: region.last_snapshot_index == region.applied, 30, "the trigger's snapshot to land")


@pytest.mark.parametrize("agent", ["embedded", "remote"])
def test_a_trigger_past_its_timeout_says_which_setting_to_raise_embedded_or_not(make_cluster, tmp_path, slow_store,
                                                                               agent):
    # Over HTTP the hint named --timeout and policy.trigger_timeout_s; embedded, there was no hint at all.
    cluster, inventory = _cluster(make_cluster, tmp_path, slow_store, agent)
    result = cluster.snapctl("trigger", "--node", "node1", "--timeout", "1", "-o", "json", inventory=inventory)
    assert result.returncode == ExitCode.RUN_FAILED, result.stdout + result.stderr
    [node] = result.json["data"]["nodes"]
    assert node["error"].endswith(" within 1s (/v1/trigger)" if agent == "remote" else " within 1s (trigger)")
    assert node["hint"].endswith("raise snapctl trigger --timeout, or policy.trigger_timeout_s for a backup's")
    region = slow_store.regions[1001]  # the engine's snapshot went on, embedded too: snapctl's process waited for it
    wait_until(lambda: region.last_snapshot_index == region.applied, 30, "the trigger's snapshot to land")
