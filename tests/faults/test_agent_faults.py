"""An agent killed or hung in the middle of prepare or complete, and a network partition between
snapctl and one agent. In every case the timeouts fire, the run rolls back (failed, naming the
node), every other node is released by snapctl's own complete, and the faulty node's hold ends
too: by the process dying, by a late complete, or by its lease.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from snapctl.errors import ExitCode
from tests.faults.harness import NODES, TOKEN, FaultCluster, wait_until
from tests.faults.proxy import LoopbackProxy


def _failed_run(cluster: FaultCluster, result, node: str) -> dict:
    assert result.returncode == ExitCode.RUN_FAILED, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and f"node {node}" in result.stderr
    [run_id] = cluster.run_ids()
    manifest = cluster.manifest(run_id)
    assert manifest["status"] == "failed"
    assert manifest["nodes"][node]["error"]
    assert cluster.snapshot_dirs(run_id) == []  # rolled back: every snapshot of the run deleted
    return manifest


def _others_released_by_the_run(cluster: FaultCluster, run_id: str, faulty: str) -> None:
    for node in NODES:
        if node != faulty:
            assert cluster.lease(node) is None
            # By snapctl, not by the lease (a prepare still waiting for its hold_at is cancelled).
            assert cluster.released_by(node, run_id) in ("completed", "cancelled")
            assert cluster.writable(node)


@pytest.mark.parametrize("request_line", ["POST /v1/prepare", "POST /v1/complete"], ids=["prepare", "complete"])
def test_an_agent_killed_mid_request_fails_the_run_and_releases_the_rest(scene: FaultCluster, request_line) -> None:
    cluster = scene
    gate = cluster.agents["node1"].proxy.gate(request_line)
    process = cluster.popen("backup")
    gate.wait()
    cluster.kill_agent("node1")  # SIGKILL, with the request on its way
    gate.open()
    out, err = process.communicate(timeout=60)
    result = subprocess.CompletedProcess(process.args, process.returncode, out, err)

    manifest = _failed_run(cluster, result, "node1")
    _others_released_by_the_run(cluster, manifest["run_id"], "node1")
    assert cluster.writable("node1")  # the OS dropped the dead agent's SQLite lock with it


@pytest.mark.parametrize("request_line", ["POST /v1/prepare", "POST /v1/complete"], ids=["prepare", "complete"])
def test_a_hung_agent_times_out_the_run_and_its_hold_ends_when_it_wakes(scene: FaultCluster, request_line) -> None:
    cluster = scene
    gate = cluster.agents["node1"].proxy.gate(request_line)
    process = cluster.popen("backup")
    gate.wait()
    cluster.pause_agent("node1")  # SIGSTOP: the socket accepts, the agent never answers
    gate.open()
    try:
        out, err = process.communicate(timeout=60)
    finally:
        cluster.resume_agent("node1")
    result = subprocess.CompletedProcess(process.args, process.returncode, out, err)

    manifest = _failed_run(cluster, result, "node1")
    assert "no answer from the agent" in manifest["nodes"]["node1"]["error"]
    _others_released_by_the_run(cluster, manifest["run_id"], "node1")
    # Awake again, node1 finds the run's requests (its late prepare or complete, the rollback's
    # complete): whatever it holds ends, by that complete or by the lease.
    cluster.wait_released(nodes=("node1",))
    assert cluster.writable("node1")


def test_a_partition_during_the_snapshot_fails_the_run_and_the_cut_off_node_releases_itself(scene) -> None:
    cluster = scene
    stopping = cluster.write_inventory(cluster.directory / "stopping.yaml", provider={"stop": {"node1": "before"}})
    process = cluster.popen("backup", inventory=stopping)
    cluster.wait_reached("node1.entered")  # every node is held; node1's snapshot has not begun
    cluster.agents["node1"].proxy.partition()
    # snapctl's renewals no longer arrive: the agent ends the hold by itself when the lease runs out.
    wait_until(lambda: cluster.lease("node1") is None, 15, "node1's lease to expire")
    cluster.go("node1.go")
    try:
        out, err = process.communicate(timeout=60)
    finally:
        cluster.agents["node1"].proxy.heal()
    result = subprocess.CompletedProcess(process.args, process.returncode, out, err)

    manifest = _failed_run(cluster, result, "node1")  # a snapshot taken after the hold ended is not kept
    assert cluster.released_by("node1", manifest["run_id"]) == "expired"
    _others_released_by_the_run(cluster, manifest["run_id"], "node1")
    assert cluster.writable("node1")


def test_a_partitioned_agent_is_refused_at_preflight_within_the_timeout(scene: FaultCluster) -> None:
    cluster = scene
    cluster.agents["node2"].proxy.partition()
    result = cluster.snapctl("backup")
    assert result.returncode == ExitCode.PREFLIGHT_REFUSED, result.stderr
    assert "node2" in result.stderr and "no answer" in result.stderr
    assert cluster.held() == set()
    [run_id] = cluster.run_ids()
    assert cluster.manifest(run_id)["status"] == "failed"  # the refusal is on record
    assert cluster.snapshot_dirs(run_id) == []


def test_a_prepare_slower_than_the_agent_timeout_but_within_prepare_timeout_succeeds(scene: FaultCluster) -> None:
    # An engine's flush may take longer than any other request (policy.prepare_timeout_s, 10 s
    # here), which is why it has a timeout of its own; agent_timeout_s (3 s) must not cut it short.
    cluster = scene
    gate = cluster.agents["node1"].proxy.gate("POST /v1/prepare")
    process = cluster.popen("backup", "--no-prune")
    gate.wait()
    time.sleep(4)
    gate.open()
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    cluster.wait_released()


def test_a_node_nothing_listens_for_fails_a_run_without_a_hold_to_release(scene: FaultCluster) -> None:
    # Gone between the preflight and the prepares (--force no longer backs up past an unreachable
    # agent): the prepare finds no agent at all. It never left snapctl, so the rollback completes
    # the other nodes and not that one, and the error does not send anyone to wait for a lease
    # that was never taken.
    cluster = scene
    inventory = cluster.write_inventory(cluster.directory / f"{cluster.cluster}.dead-node2.yaml",
                                        provider={"stop_warm_up": True})
    node2 = cluster.agents["node2"]
    try:
        result = cluster.backup_changed_after_preflight(node2.proxy.close, inventory=inventory)
    finally:  # nothing listens at node2's address any more: the module's later tests get another
        node2.proxy = LoopbackProxy(node2.port)
    manifest = _failed_run(cluster, result, "node2")
    error_line = next(line for line in result.stderr.splitlines() if line.startswith("snapctl: error:"))
    assert error_line.count("cannot reach the agent") == 1, error_line
    assert "lease" not in error_line and "complete failed" not in manifest["nodes"]["node2"]["error"]
    for node in ("node1", "node3"):
        # Released by the rollback's complete, or never held: node2's refusal can cancel the run
        # before their prepares leave. Never left to a lease.
        assert cluster.lease(node) is None and cluster.writable(node)
        assert cluster.released_by(node, manifest["run_id"]) != "expired"


def test_a_node_that_refuses_the_prepare_fails_a_run_without_a_hold_to_release(scene: FaultCluster) -> None:
    # The agent answered 401 (restarted with another token between the preflight and the prepares;
    # --force no longer backs up past a refused token): it holds nothing, so the rollback neither
    # completes it nor sends anyone to wait for its lease, and the error says why once.
    cluster = scene
    inventory = cluster.write_inventory(cluster.directory / f"{cluster.cluster}.wrong-token.yaml",
                                        provider={"stop_warm_up": True})
    node2 = cluster.agents["node2"]
    config = node2.config.read_text()
    (cluster.directory / "rotated.token").write_text("a-token-snapctl-was-never-given\n")

    def restart(token_file: Path) -> None:
        node2.config.write_text(yaml.safe_dump({**yaml.safe_load(config), "token_file": str(token_file)}))
        cluster.kill_agent("node2")
        cluster.start_agent("node2")

    try:
        result = cluster.backup_changed_after_preflight(lambda: restart(cluster.directory / "rotated.token"),
                                                        inventory=inventory)
    finally:
        restart(cluster.token_file)
    manifest = _failed_run(cluster, result, "node2")
    error_line = next(line for line in result.stderr.splitlines() if line.startswith("snapctl: error:"))
    assert error_line.count("wrong bearer token") == 1 and error_line.count("node2") == 1, error_line
    assert "lease" not in error_line and "complete" not in manifest["nodes"]["node2"]["error"]
    assert cluster.released_by("node2", manifest["run_id"]) is None  # never asked to complete
    for node in NODES:
        assert cluster.lease(node) is None and cluster.writable(node)


def test_a_runs_start_is_before_its_preflight_however_long_that_takes(scene: FaultCluster) -> None:
    # started_at was set once the preflight had answered: a run refused after a 5 s preflight
    # showed a duration of 0.0001 s in its textfile, and `list` its start 5 s late.
    from datetime import datetime

    cluster = scene
    gate = cluster.agents["node1"].proxy.gate("GET /v1/status")
    began = time.time()
    process = cluster.popen("backup")
    gate.wait()
    asked = time.time()  # the preflight's status request reached the agent (a loaded machine: seconds after began)
    time.sleep(1.5)  # a slow preflight
    gate.open()
    out, err = process.communicate(timeout=60)
    assert process.returncode == ExitCode.OK, out + err
    [run_id] = cluster.run_ids()
    manifest = cluster.manifest(run_id)
    started = datetime.fromisoformat(manifest["started_at"]).timestamp()
    assert began <= started <= asked, (began, started, asked)
    assert datetime.fromisoformat(manifest["finished_at"]).timestamp() - started >= 1.5


def test_a_prepare_the_agents_rate_limit_refuses_is_sent_once_and_every_node_released(make_cluster) -> None:
    # Waiting out the agent's Retry-After (1 s at least) kept the nodes already held frozen at the
    # barrier, as long as prepare_timeout_s allowed and past max_freeze_s; the run fails at once instead.
    cluster = make_cluster(agent_extra={"rate_per_s": 0.2})  # a token per 5 s: none comes back meanwhile
    proxy = cluster.agents["node2"].proxy
    first = proxy.gate("POST /v1/prepare")
    again = proxy.gate("POST /v1/prepare")  # catches a second prepare, once the first is let through
    process = cluster.popen("backup", "--no-prune")
    first.wait()
    # A script on the control host with the same token spends node2's prepare budget; the
    # agent refuses its requests before doing anything (a hold_at a day ahead holds nothing).
    too_far = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10, verify=cluster.verify) as script:
        statuses = [script.post(cluster.url("node2") + "/v1/prepare",
                                json={"run_id": "script", "lease_s": 30, "hold_at": too_far}).status_code
                    for _ in range(70)]
    assert statuses[-1] == 429, statuses
    first.open()
    out, err = process.communicate(timeout=60)
    result = subprocess.CompletedProcess(process.args, process.returncode, out, err)

    manifest = _failed_run(cluster, result, "node2")
    assert not again.caught.is_set(), "the refused prepare was sent again"
    error = manifest["nodes"]["node2"]["error"]
    assert "the agent's rate limit refused /v1/prepare once: too many requests from 127.0.0.1 to /v1/prepare" in error
    assert "rate_per_s, burst in its config" in err  # the hint: where the limit is, who else asks
    _others_released_by_the_run(cluster, manifest["run_id"], "node2")
    assert cluster.lease("node2") is None and cluster.writable("node2")


def test_a_rollback_complete_refused_for_our_token_says_the_agent_holds_nothing(cluster: FaultCluster) -> None:
    # node2's and node3's agents restart with another token between the preflight and the prepares
    # (a rotation while a backup ran). node2's prepare, resent on a new connection, is refused for
    # the token, failing the run; node3's never reached any agent. The rollback's complete to node3
    # is refused for the token too: an agent that refuses our token accepted no prepare with it, so
    # nobody is to wait for a lease of this run there.
    gates = {n: cluster.agents[n].proxy.gate("POST /v1/prepare") for n in ("node2", "node3")}
    process = cluster.popen("backup", "--no-prune")
    for gate in gates.values():
        gate.wait()
    cluster.token_file.write_text("a-rotated-token-5e0c2d19f7\n")
    for node in gates:
        cluster.kill_agent(node)
        cluster.start_agent(node)
    gates["node2"].drop()
    out, err = process.communicate(timeout=60)
    result = subprocess.CompletedProcess(process.args, process.returncode, out, err)

    manifest = _failed_run(cluster, result, "node2")
    assert "refused us" in manifest["nodes"]["node2"]["error"]
    note = manifest["nodes"]["node3"]["error"]
    assert "lease expires" not in note and "holds nothing of this run" in note, note
    assert "lease expires" not in err and "a-rotated-token" not in err + out
    assert cluster.released_by("node1", manifest["run_id"]) in ("completed", "cancelled")
    assert cluster.writable("node1")
