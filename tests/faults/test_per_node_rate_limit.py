"""A per-node backup whose prepare meets the agent's rate limit (429, with Retry-After): the agent
refuses before anything runs, and no other node waits on this one, so the prepare is sent again
once after the Retry-After when that is a few seconds; longer, the run fails at once saying so.
Real agent processes on loopback behind counting proxies, their limit spent by a script with the
same token from the same address, as in test_agent_faults.py's cluster-mode case."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta

import httpx

from snapctl.errors import ExitCode
from tests.faults.harness import NODES, TOKEN, FaultCluster


def spend_prepares(cluster: FaultCluster, node: str) -> None:
    """Another client of the same token and address spends the agent's prepare budget; the agent
    refuses its requests before doing anything (a hold_at a day ahead holds nothing)."""
    too_far = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10, verify=cluster.verify) as script:
        statuses = [script.post(cluster.url(node) + "/v1/prepare",
                                json={"run_id": "script", "lease_s": 30, "hold_at": too_far}).status_code
                    for _ in range(70)]
    assert statuses[-1] == 429, statuses


def backup_meeting_the_limit(cluster: FaultCluster) -> subprocess.CompletedProcess:
    inventory = cluster.write_inventory(cluster.directory / "per-node.yaml", policy={"consistency": "per-node"})
    first = cluster.agents["node2"].proxy.gate("POST /v1/prepare")
    process = cluster.popen("backup", "--no-prune", inventory=inventory)
    first.wait()
    spend_prepares(cluster, "node2")
    first.open()
    out, err = process.communicate(timeout=90)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def prepares_sent(cluster: FaultCluster, node: str) -> int:
    return sum(1 for r in cluster.agents[node].proxy.requests if r.startswith("POST /v1/prepare "))


def test_a_per_node_prepare_refused_429_is_sent_again_after_retry_after_and_the_backup_succeeds(make_cluster):
    cluster = make_cluster(agent_extra={"rate_per_s": 0.5})  # Retry-After: 2 s at most
    result = backup_meeting_the_limit(cluster)

    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    [run_id] = cluster.run_ids()
    manifest = cluster.manifest(run_id)
    assert manifest["status"] == "succeeded" and manifest["consistency"] == "per-node"
    assert prepares_sent(cluster, "node2") == 2, cluster.agents["node2"].proxy.requests
    assert all(prepares_sent(cluster, n) == 1 for n in NODES if n != "node2")
    assert "node2: rate-limited (the agent's rate limit: prepare sent again in " in result.stdout + result.stderr
    for node in NODES:
        assert manifest["nodes"][node]["snapshots"] and cluster.lease(node) is None and cluster.writable(node)


def test_a_per_node_prepare_asked_to_wait_longer_fails_at_once_saying_so(make_cluster):
    cluster = make_cluster(agent_extra={"rate_per_s": 0.1})  # Retry-After: about 10 s
    result = backup_meeting_the_limit(cluster)

    assert result.returncode == ExitCode.RUN_FAILED, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [run_id] = cluster.run_ids()
    manifest = cluster.manifest(run_id)
    assert manifest["status"] == "failed"
    error = manifest["nodes"]["node2"]["error"]
    assert re.fullmatch(r"node node2: the agent's rate limit refused /v1/prepare and asked to wait \d+s, more than "
                        r"the 5s a per-node prepare waits to be sent again: too many requests from 127\.0\.0\.1 to "
                        r"/v1/prepare: more than 60 at once or 0\.1 per second", error), error
    assert "rate_per_s, burst in its config" in result.stderr  # the hint: where the limit is, who else asks
    assert prepares_sent(cluster, "node2") == 1
    assert cluster.snapshot_dirs(run_id) == []  # rolled back
    for node in NODES:
        assert cluster.lease(node) is None and cluster.writable(node)


def test_a_cluster_run_whose_create_calls_cannot_fit_max_freeze_is_refused_before_any_hold(cluster):
    # 3 create calls at 1 at once, then 1/s: the last goes out 2 s after the first, past the 1.5 s
    # a node may stay held. Such a run once held every node, then always failed, and its dry run
    # said nothing.
    limited = {"create_rate": 1.0, "create_burst": 1}
    inventory = cluster.write_inventory(cluster.directory / "limited.yaml", provider=limited,
                                        policy={"max_freeze_s": "1.5s"})
    dry = cluster.snapctl("backup", "--dry-run", inventory=inventory)
    assert dry.returncode != 0
    said = dry.stdout + dry.stderr
    assert "a cluster-mode run would fail after holding every node" in said
    assert "(1 create calls at once, then 1/s) spreads this run's 3 over 2.0s" in said

    refused = cluster.snapctl("backup", "--no-prune", "--force", inventory=inventory)
    assert refused.returncode == ExitCode.PREFLIGHT_REFUSED
    assert "hint: provider: back up with --consistency per-node" in refused.stderr
    assert "raise policy.max_freeze_s to at least 3s" in refused.stderr
    assert not any(cluster.reached(f"{node}.entered") for node in NODES)  # nothing was held or snapshotted

    per_node = cluster.snapctl("backup", "--no-prune", "--consistency", "per-node", inventory=inventory)
    assert per_node.returncode == 0, per_node.stderr
