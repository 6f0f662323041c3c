"""A provider with an async create call (``snapshot_async``): real agents, the real CLI, the
third-party `slow` provider with ``async_calls``. Its create calls are made on snapctl's own event
loop after ``warm_up_async``, its client closed once at the end; failures roll back as with
blocking calls, and ``provider_process: never`` still makes the blocking calls."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from snapctl.errors import ExitCode


def _snapshot_dirs(cluster) -> list[Path]:
    store = cluster.directory / ".snapctl-demo" / "snapshots"
    return [p for p in store.glob("*/*/*") if p.is_dir() and not p.name.startswith(".")] if store.exists() else []


def _inventory(cluster, name: str, policy: dict | None = None, **provider) -> tuple[Path, Path]:
    events = cluster.directory / f"{name}.events"
    base_policy = yaml.safe_load(cluster.inventory.read_text())["policy"]
    path = cluster.write_inventory(cluster.directory / f"{name}.yaml", policy={**base_policy, **(policy or {})},
                                   provider={"type": "slow", "store": ".snapctl-demo/snapshots", "async_calls": True,
                                             "events_file": str(events), **provider})
    return path, events


def _events(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_create_calls_are_made_on_snapctls_loop_after_the_async_warm_up_and_the_client_closes_once(cluster):
    inventory, events = _inventory(cluster, "async", delay_s=0.2)
    result = cluster.snapctl("backup", "-i", str(inventory), "-o", "json", check_json=True)
    assert result.returncode == 0, result.stderr
    manifest = result.json["data"]
    snapctl_pid = int(manifest["owner"].rsplit(":", 1)[1])
    refs = [ref for record in manifest["nodes"].values() for ref in record["snapshots"]]
    assert len(refs) == 3
    assert all(ref["extra"]["async"] is True and ref["extra"]["pid"] == snapctl_pid for ref in refs)
    assert all(ref["extra"]["warm"] is True for ref in refs)  # warm_up ran (in its thread) before them
    seen = _events(events)
    assert seen[0] == "warm_up_async" and seen[-1] == "aclose"
    assert sorted(seen[1:-1]) == ["snapshot_async node1", "snapshot_async node2", "snapshot_async node3"]
    assert len(_snapshot_dirs(cluster)) == 3


def test_provider_process_never_makes_the_blocking_calls_of_an_async_provider(cluster):
    inventory, events = _inventory(cluster, "never", policy={"provider_process": "never"})
    result = cluster.snapctl("backup", "-i", str(inventory), "-o", "json", check_json=True)
    assert result.returncode == 0, result.stderr
    refs = [ref for record in result.json["data"]["nodes"].values() for ref in record["snapshots"]]
    assert len(refs) == 3 and not any(ref["extra"].get("async") for ref in refs)
    assert sorted(_events(events)) == ["snapshot node1", "snapshot node2", "snapshot node3"]


def test_a_failed_async_create_rolls_the_run_back_and_deletes_what_the_others_made(cluster):
    inventory, events = _inventory(cluster, "failing", fail_nodes=["node3"])
    result = cluster.snapctl("backup", "-i", str(inventory), "-o", "json")
    assert result.returncode == ExitCode.RUN_FAILED
    assert "injected failure for node node3" in result.stderr
    assert all(cluster.agent_status(n)["lease"] is None for n in cluster.nodes)
    assert _snapshot_dirs(cluster) == []
    assert _events(events)[-1] == "aclose"  # closed on the failure too


def test_a_failed_async_warm_up_holds_nothing_and_a_dry_run_reports_it(cluster):
    inventory, events = _inventory(cluster, "cold", fail_warm_up_async="slow: the async client could not start")
    dry = cluster.snapctl("backup", "--dry-run", "-i", str(inventory), "-o", "json")
    assert dry.returncode != 0
    assert "slow: the async client could not start" in dry.stdout + dry.stderr
    assert _events(events) == ["warm_up_async", "aclose"]  # the dry run closes what it opened

    result = cluster.snapctl("backup", "-i", str(inventory), "-o", "json")
    assert result.returncode == ExitCode.RUN_FAILED
    assert "slow: the async client could not start" in result.stderr
    assert "check the async client's settings" in result.stderr
    newest = cluster.snapctl("list", "-o", "json", check_json=True).json["data"]["runs"][0]
    failed = cluster.snapctl("show", newest["run_id"], "-o", "json", check_json=True).json["data"]
    assert failed["status"] == "failed"
    assert all(record["prepare_sent_at"] is None for record in failed["nodes"].values())  # no node was held
    assert not any(line.startswith("snapshot") for line in _events(events))


def test_an_async_call_that_outlasts_max_freeze_is_awaited_by_the_rollback_and_its_snapshots_deleted(cluster):
    # The freeze budget gives up waiting after 1 s; the call goes on on the loop and makes its
    # snapshots at 2.5 s. The rollback must wait for it, then delete them.
    inventory, _ = _inventory(cluster, "slow", policy={"max_freeze_s": "1s"}, delay_s=2.5)
    result = cluster.snapctl("backup", "-i", str(inventory), "-o", "json")
    assert result.returncode == ExitCode.RUN_FAILED
    assert "did not return within" in result.stderr
    assert all(cluster.agent_status(n)["lease"] is None for n in cluster.nodes)
    time.sleep(3)  # had a call been left running, its snapshot would be on disk by now
    assert _snapshot_dirs(cluster) == []


@pytest.mark.parametrize("consistency", ["per-node"])
def test_per_node_consistency_makes_its_create_calls_on_the_loop_too(cluster, consistency):
    inventory, events = _inventory(cluster, "per-node")
    result = cluster.snapctl("backup", "-i", str(inventory), "--consistency", consistency, "-o", "json",
                             check_json=True)
    assert result.returncode == 0, result.stderr
    assert result.json["data"]["consistency"] == consistency
    refs = [ref for record in result.json["data"]["nodes"].values() for ref in record["snapshots"]]
    assert len(refs) == 3 and all(ref["extra"]["async"] is True for ref in refs)
    assert _events(events)[-1] == "aclose"


def test_a_dry_run_checks_the_client_the_run_would_use(cluster):
    # With provider_process never the run makes the blocking calls: its dry run must not refuse
    # for an async client it would never open (nor open it).
    inventory, events = _inventory(cluster, "dry-never", policy={"provider_process": "never"},
                                   fail_warm_up_async="slow: the async client could not start")
    dry = cluster.snapctl("backup", "--dry-run", "-i", str(inventory), "-o", "json")
    assert dry.returncode == ExitCode.OK, dry.stdout + dry.stderr
    assert _events(events) == []
    result = cluster.snapctl("backup", "-i", str(inventory), "-o", "json")
    assert result.returncode == ExitCode.OK, result.stderr
