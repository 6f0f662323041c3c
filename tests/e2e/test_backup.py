"""The foundation's promises, end to end: real agent processes, real SQLite under writers, the real CLI."""

from __future__ import annotations

import re
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from snapctl.errors import ExitCode


def _snapshot_dirs(cluster) -> list[Path]:
    store = cluster.directory / ".snapctl-demo" / "snapshots"
    return [p for p in store.glob("*/*/*") if p.is_dir() and not p.name.startswith(".")] if store.exists() else []


def _wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_backup_under_writers_restores_to_the_facts_recorded_at_prepare(cluster, tmp_path):
    backup = cluster.snapctl("backup", "-o", "json", check_json=True)
    assert backup.returncode == 0, backup.stderr
    manifest = backup.json["data"]
    assert manifest["status"] == "succeeded"
    assert set(manifest["nodes"]) == {"node1", "node2", "node3"}
    for record in manifest["nodes"].values():
        assert record["freeze_window_s"] > 0
        assert record["snapshots"] and record["snapshots"][0]["tags"]["snapctl-run"] == manifest["run_id"]
        assert record["state"]["facts"]["tables"]["events"]["rows"] > 0
        # Every node was asked to begin its hold at one instant, and none began earlier.
        assert _instant(record["state"]["prepared_at"]) >= _instant(manifest["hold_at"])
    assert manifest["prepare_skew_s"] is not None and manifest["hold_skew_s"] is not None

    # The writers kept going after the backup: the live databases moved on, the restore must not.
    _wait_until(lambda: cluster.rows("node1") > manifest["nodes"]["node1"]["state"]["facts"]["tables"]["events"]["rows"],
                10, "the writer to add rows after the backup")
    restore = cluster.snapctl("restore", "latest", "--to", str(tmp_path / "restored"), "-o", "json", check_json=True)
    assert restore.returncode == 0, restore.stderr
    restored = {n["node"]: n for n in restore.json["data"]["nodes"]}
    for name, record in manifest["nodes"].items():
        expected = record["state"]["facts"]["tables"]["events"]
        actual = restored[name]["facts"]["tables"]["events"]
        assert (actual["rows"], actual["checksum"]) == (expected["rows"], expected["checksum"])
        assert restored[name]["mismatches"] == []
    # In text, each node's progress on stderr as it goes (a restore of gigabytes said nothing until its table).
    text = cluster.snapctl("restore", "latest", "--to", str(tmp_path / "restored-text"))
    assert text.returncode == 0, text.stderr
    said = [line.split("Z ", 1)[-1] for line in text.stderr.splitlines()]
    assert f"restore: restoring run {manifest['run_id']} (3 nodes) into {tmp_path / 'restored-text'}" in said
    for name in manifest["nodes"]:
        assert said.index(f"  {name}: restoring (1 volume(s))") < said.index(f"  {name}: restore-preparing") \
            < said.index(f"  {name}: restored")

    listed = cluster.snapctl("list", "-o", "json", check_json=True)
    assert [r["run_id"] for r in listed.json["data"]["runs"]] == [manifest["run_id"]]
    shown = cluster.snapctl("show", manifest["run_id"][:12], "-o", "json", check_json=True)
    assert shown.json["data"]["run_id"] == manifest["run_id"]


def test_sigkill_after_prepare_leaves_nothing_held_once_the_lease_passes(cluster):
    slow = cluster.write_inventory(cluster.directory / "slow.yaml",
                                   provider={"type": "slow", "store": ".snapctl-demo/snapshots", "delay_s": 60})
    process = cluster.popen("backup", "-i", str(slow))
    try:
        _wait_until(lambda: all(cluster.agent_status(n)["lease"] for n in cluster.nodes), 30, "every node to be held")
        rows_while_held = cluster.rows("node1")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        process.kill()
    # The lease (3 s) runs out with nobody renewing: every agent releases by itself.
    _wait_until(lambda: not any(cluster.agent_status(n)["lease"] for n in cluster.nodes), 15, "the leases to expire")
    _wait_until(lambda: cluster.rows("node1") > rows_while_held, 10, "writers to get in again")
    # The dead run's lock expires too (lock_ttl_s 3s), and the next backup succeeds.
    time.sleep(3)
    after = cluster.snapctl("backup", "-o", "json", check_json=True)
    assert after.returncode == 0, after.stderr
    assert after.json["data"]["status"] == "succeeded"


def test_one_engine_down_is_refused_naming_it_forced_too_and_leaves_nothing_behind(cluster):
    # Forced, it went on to fail at node2's prepare after holding the others: --force cannot
    # bring an engine up, so the refusal now stands, with the fix in its hint.
    database = cluster.directory / ".snapctl-demo" / "node2" / "data" / "demo.db"
    database.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)

    for args in ((), ("--force",)):
        refused = cluster.snapctl("backup", *args)
        assert refused.returncode == ExitCode.PREFLIGHT_REFUSED, refused.stderr
        assert "node2: engine sqlite is down" in refused.stderr and "Traceback" not in refused.stderr
        assert "pass --force" not in refused.stderr
    for node in ("node1", "node2", "node3"):
        assert cluster.agent_status(node)["lease"] is None
    assert _snapshot_dirs(cluster) == []
    runs = cluster.snapctl("list", "-o", "json", check_json=True).json["data"]["runs"]
    assert [r["status"] for r in runs] == ["failed", "failed"]
    newest = cluster.snapctl("show", runs[0]["run_id"], "-o", "json", check_json=True).json["data"]
    assert newest["nodes"]["node2"]["error"] and not newest["forced"]
    assert "node2" in newest["error"]


def test_a_failed_snapshot_rolls_back_every_node_and_deletes_the_runs_snapshots(cluster):
    failing = cluster.write_inventory(cluster.directory / "failing.yaml",
                                      provider={"type": "slow", "store": ".snapctl-demo/snapshots",
                                                "delay_s": 0.5, "fail_nodes": ["node3"]})
    result = cluster.snapctl("backup", "-i", str(failing), "-o", "json")
    assert result.returncode == ExitCode.RUN_FAILED
    assert "injected failure for node node3" in result.stderr
    assert all(cluster.agent_status(n)["lease"] is None for n in cluster.nodes)
    assert _snapshot_dirs(cluster) == []


def test_snapshot_calls_made_in_the_provider_worker_process_succeed_and_roll_back_alike(cluster):
    policy = {**yaml.safe_load(cluster.inventory.read_text())["policy"], "provider_process": "always"}
    provider = {"type": "slow", "store": ".snapctl-demo/snapshots", "delay_s": 0.2}
    worked = cluster.write_inventory(cluster.directory / "worker.yaml", provider=provider, policy=policy)
    result = cluster.snapctl("backup", "-i", str(worked), "-o", "json", check_json=True)
    assert result.returncode == 0, result.stderr
    manifest = result.json["data"]
    snapctl_pid = int(manifest["owner"].rsplit(":", 1)[1])
    refs = [ref for record in manifest["nodes"].values() for ref in record["snapshots"]]
    made_by = {ref["extra"]["pid"] for ref in refs}
    assert len(made_by) == 1 and snapctl_pid not in made_by  # one child made them all
    # ... forked from snapctl's process (one thread, no terminal), not a new interpreter
    assert {ref["extra"]["argv0"] for ref in refs} == {"cli.py"}
    assert len(_snapshot_dirs(cluster)) == 3

    failing = cluster.write_inventory(cluster.directory / "worker-failing.yaml", policy=policy,
                                      provider={**provider, "fail_nodes": ["node3"]})
    result = cluster.snapctl("backup", "-i", str(failing), "-o", "json")
    assert result.returncode == ExitCode.RUN_FAILED
    assert "injected failure for node node3" in result.stderr  # the child's error, word for word
    assert all(cluster.agent_status(n)["lease"] is None for n in cluster.nodes)
    assert len(_snapshot_dirs(cluster)) == 3  # the failed run's snapshots are gone, the first run's stay


@pytest.mark.parametrize("provider_process", ["never", "always"])
def test_the_provider_warms_up_before_any_hold_and_a_failed_warm_up_holds_nothing(cluster, provider_process):
    # A cloud SDK's import and client cost 0.3-3 s: paid inside the holds if the first create call
    # pays it. In threads of snapctl or in its worker child, the calls must find the provider warm.
    policy = {**yaml.safe_load(cluster.inventory.read_text())["policy"], "provider_process": provider_process}
    provider = {"type": "slow", "store": ".snapctl-demo/snapshots"}
    warmed = cluster.write_inventory(cluster.directory / "warmed.yaml", provider=provider, policy=policy)
    result = cluster.snapctl("backup", "-i", str(warmed), "-o", "json", check_json=True)
    assert result.returncode == 0, result.stderr
    refs = [ref for record in result.json["data"]["nodes"].values() for ref in record["snapshots"]]
    assert len(refs) == 3 and all(ref["extra"]["warm"] is True for ref in refs)

    cold = cluster.write_inventory(cluster.directory / "cold.yaml", policy=policy,
                                   provider={**provider, "fail_warm_up": "slow: no credentials found"})
    result = cluster.snapctl("backup", "-i", str(cold), "-o", "json")
    assert result.returncode == ExitCode.RUN_FAILED
    assert "slow: no credentials found" in result.stderr and "give the provider its credentials" in result.stderr
    newest = cluster.snapctl("list", "-o", "json", check_json=True).json["data"]["runs"][0]
    failed = cluster.snapctl("show", newest["run_id"], "-o", "json", check_json=True).json["data"]
    assert failed["status"] == "failed"
    assert all(record["prepare_sent_at"] is None for record in failed["nodes"].values())  # no node was held
    assert len(_snapshot_dirs(cluster)) == 3  # the first run's


def test_a_dry_run_holds_nothing_and_refuses_where_the_provider_could_not_get_ready(cluster):
    # A dry run in CI is how an operator learns that the run from cron would fail: missing cloud
    # credentials included, which a real run finds only after it has locked and probed.
    runs_before = len(cluster.snapctl("list", "-o", "json", check_json=True).json["data"]["runs"])
    provider = {"type": "slow", "store": ".snapctl-demo/snapshots"}
    ready = cluster.write_inventory(cluster.directory / "dry-ready.yaml", provider=provider)
    plan = cluster.snapctl("backup", "--dry-run", "-i", str(ready), "-o", "json", check_json=True)
    assert plan.returncode == ExitCode.OK, plan.stderr
    assert plan.json["data"]["nodes"] == {n: ["data"] for n in ("node1", "node2", "node3")}
    assert not [f for f in plan.json["data"]["verdict"]["findings"] if f["severity"] == "critical"]

    cold = cluster.write_inventory(cluster.directory / "dry-cold.yaml",
                                   provider={**provider, "fail_warm_up": "slow: no credentials found"})
    refused = cluster.snapctl("backup", "--dry-run", "-i", str(cold), "-o", "json", check_json=True)
    assert refused.returncode == ExitCode.PREFLIGHT_REFUSED, refused.stderr
    [finding] = [f for f in refused.json["data"]["verdict"]["findings"] if f["severity"] == "critical"]
    assert finding["subject"] == "provider"
    assert finding["message"] == "slow: no credentials found" and "give the provider its credentials" in finding["hint"]
    assert finding["forceable"] is False  # --force overrides the preflight, not the provider's readiness
    text = cluster.snapctl("backup", "--dry-run", "-i", str(cold))
    assert text.returncode == ExitCode.PREFLIGHT_REFUSED
    assert "provider: slow: no credentials found" in text.stdout and "would refuse" in text.stdout

    assert len(cluster.snapctl("list", "-o", "json", check_json=True).json["data"]["runs"]) == runs_before
    assert all(cluster.agent_status(n)["lease"] is None for n in cluster.nodes)
    assert _snapshot_dirs(cluster) == []


def test_a_worker_call_that_outlasts_max_freeze_is_awaited_by_the_rollback_and_its_snapshots_deleted(cluster):
    # The freeze budget gives up waiting for the call after 1 s; the call goes on in the child and
    # makes its snapshots at 2.5 s. The rollback must wait for it (not find nothing and leave).
    policy = {**yaml.safe_load(cluster.inventory.read_text())["policy"], "provider_process": "always",
              "max_freeze_s": "1s"}
    slow = cluster.write_inventory(cluster.directory / "worker-slow.yaml", policy=policy,
                                   provider={"type": "slow", "store": ".snapctl-demo/snapshots", "delay_s": 2.5})
    result = cluster.snapctl("backup", "-i", str(slow), "-o", "json")
    assert result.returncode == ExitCode.RUN_FAILED
    assert "did not return within" in result.stderr
    assert all(cluster.agent_status(n)["lease"] is None for n in cluster.nodes)
    time.sleep(3)  # had a call been left running, its snapshot would be on disk by now
    assert _snapshot_dirs(cluster) == []


def test_a_node_frozen_past_max_freeze_before_its_snapshot_calls_is_said_so_not_given_a_negative_budget(cluster):
    # Its prepare alone (a request over loopback) outlasts a 1 µs max_freeze_s: the calls had no
    # time left, which is not "did not return within -0.1s".
    policy = {**yaml.safe_load(cluster.inventory.read_text())["policy"], "max_freeze_s": 0.000001}
    tight = cluster.write_inventory(cluster.directory / "tight.yaml", policy=policy,
                                    provider={"type": "slow", "store": ".snapctl-demo/snapshots", "delay_s": 0.5})
    result = cluster.snapctl("backup", "--no-prune", "-i", str(tight))
    assert result.returncode == ExitCode.RUN_FAILED, result.stderr
    said = " ".join(result.stderr.split())
    assert "did not return within" not in said, said
    assert re.search(r"node node\d: it was already frozen [0-9.e-]+s, past max freeze 1e-06s, before its snapshot "
                     r"calls began", said), said
    assert "raise policy.max_freeze_s above what a node's prepare takes" in said
    assert all(cluster.agent_status(n)["lease"] is None for n in cluster.nodes)


def test_the_prepare_timeout_counts_from_the_hold_instant_not_from_sending(cluster):
    policy = {**yaml.safe_load(cluster.inventory.read_text())["policy"], "hold_lead_s": "3s",
              "prepare_timeout_s": "2s"}
    late = cluster.write_inventory(cluster.directory / "late.yaml", policy=policy)
    result = cluster.snapctl("backup", "-i", str(late), "-o", "json", check_json=True)
    assert result.returncode == 0, result.stderr  # every answer came 3 s after sending, 0 s after the instant
    assert result.json["data"]["status"] == "succeeded"


def test_wrong_token_is_a_clear_message_never_a_traceback(cluster):
    bad_token = cluster.directory / "wrong-token"
    bad_token.write_text("not-the-token\n")
    data = yaml.safe_load(cluster.inventory.read_text())
    data["auth"] = {"token_file": str(bad_token)}
    wrong = cluster.directory / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(data))

    status = cluster.snapctl("status", inventory=wrong)
    assert status.returncode == ExitCode.CRITICAL
    assert "refused our token" in status.stdout and "not-the-token" not in status.stdout + status.stderr
    backup = cluster.snapctl("backup", inventory=wrong)
    assert backup.returncode == ExitCode.PREFLIGHT_REFUSED
    assert "refused our token" in backup.stderr and "Traceback" not in backup.stderr
