"""A backup SIGKILLed on this host while it held every node: the next `snapctl backup` takes its
cluster lock over at once, proven dead (this boot, this pid namespace, its pid gone), instead of
exiting 4 until the lock expired; and it waits for the agents to release the dead run's nodes by
their leases, as they promised that run, rather than being refused by its own preflight or
releasing them itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import datetime, timedelta

from snapctl.catalog.lock import LockRecord, utc_now
from snapctl.process_identity import identity
from tests.faults.harness import NODES, FaultCluster, wait_until

LONG_LOCK = {"lock_ttl_s": "10m", "lease_ttl_s": "20s"}


def test_the_next_backup_takes_over_the_lock_of_a_run_killed_on_this_host_and_waits_out_its_leases(
        cluster: FaultCluster) -> None:
    stopping = cluster.write_inventory(cluster.directory / "stopping.yaml",
                                       provider={"stop": {n: "before" for n in NODES}},
                                       policy={"agent_timeout_s": "30s", **LONG_LOCK})
    process = cluster.popen("backup", "--no-prune", inventory=stopping)
    try:
        for node in NODES:
            cluster.wait_reached(f"{node}.entered")  # every node held, its snapshot call begun
        assert cluster.held() == set(NODES)
        dead = cluster.lock_record()["run_id"]
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    assert cluster.held() == set(NODES)  # its leases run on: nobody renews them, nobody ended them

    after = cluster.snapctl("backup", "--no-prune", "-o", "json",
                            inventory=cluster.write_inventory(cluster.directory / "next.yaml", policy=LONG_LOCK))

    assert after.returncode == 0, after.stderr
    said = " ".join(after.stderr.split())
    assert f"took the lock over from run {dead} by " in said and "which is no longer running on this host" in said
    assert f"the dead run {dead} holds them until its leases expire" in said
    # Each of the dead run's holds ended by its lease, as its agent promised it: not released early.
    assert {node: cluster.released_by(node, dead) for node in NODES} == {node: "expired" for node in NODES}
    assert after.json["data"]["status"] == "succeeded"
    manifest = cluster.manifest(dead)
    assert manifest["status"] == "failed" and manifest["error"].startswith("abandoned"), manifest["error"]
    # It says its nodes were released by their leases: closed once they were, not before.
    expired = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for node in NODES
               for line in cluster.agents[node].log.read_text(errors="replace").splitlines()
               if f"lease of run {dead} expired" in line]
    assert len(expired) == len(NODES)
    closed = datetime.fromisoformat(manifest["finished_at"]).astimezone().replace(tzinfo=None)
    assert closed >= max(expired), (closed, expired)
    assert cluster.lock_record()["released_at"]


def test_status_and_a_dry_run_say_a_backup_would_take_such_a_lock_over(cluster: FaultCluster) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a process of this host, boot and namespace
    gone.wait()
    now = utc_now()
    record = LockRecord(owner=f"ops@{socket.gethostname()}:{gone.pid}", run_id="r-killed", acquired_at=now,
                        renewed_at=now, expires_at=now + timedelta(minutes=10),
                        owner_process={**identity(os.getpid()), "pid": gone.pid})
    cluster.catalog().store.write(f"{cluster.cluster}/lock.json", record.encode())

    planned = cluster.snapctl("backup", "--dry-run")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "a backup now would be refused (exit 4)" not in planned.stdout
    status = cluster.snapctl("status")
    assert "the next `snapctl backup` takes the lock over at once" in " ".join(status.stdout.split()), status.stdout



def test_the_next_backup_waits_for_a_hold_the_dead_run_asked_for_that_had_not_begun(cluster: FaultCluster) -> None:
    # Killed while its prepares waited at the agents for their hold_at: no lease showed them, so the
    # next backup went on at once, and where its prepares reached the agents once those holds had
    # begun (a preflight or a network slower than the dead run's hold lead), they were refused
    # ("already held by run DEAD"): the run failed.
    dying = cluster.write_inventory(cluster.directory / "dying.yaml",
                                    policy={**LONG_LOCK, "hold_lead_s": "8s", "lease_ttl_s": "5s"})
    process = cluster.popen("backup", "--no-prune", inventory=dying)
    try:
        wait_until(lambda: all("POST /v1/prepare HTTP/1.1" in cluster.agents[n].proxy.requests for n in NODES),
                   60, "the prepares to reach every agent")
        dead = cluster.lock_record()["run_id"]
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    assert cluster.held() == set()  # nothing is held yet: each prepare waits for its hold_at

    # The next run stops after its preflight, before its first prepare (its provider's warm-up),
    # until the dead run's holds have begun: the order in which they met when it did not wait.
    following = cluster.popen("backup", "--no-prune", "-o", "json", inventory=cluster.write_inventory(
        cluster.directory / "next.yaml", provider={"stop_warm_up": True}, policy={**LONG_LOCK, "lease_ttl_s": "5s"}))
    wait_until(lambda: set(cluster.run_ids()) - {dead} or following.poll() is not None, 60,
               "the next run's preflight to pass")
    wait_until(lambda: all(f"prepared for run {dead} " in cluster.agents[n].log.read_text(errors="replace")
                           for n in NODES), 60, f"run {dead}'s holds to begin")
    cluster.go("warm_up.go")
    out, err = following.communicate(timeout=120)

    assert following.returncode == 0, err
    said = " ".join(err.split())
    assert f"the dead run {dead}'s prepare is still under way there, its hold not begun yet" in said, said
    # Each hold the dead run asked for began, and ended by its lease, before the next run held the node.
    assert {node: cluster.released_by(node, dead) for node in NODES} == {node: "expired" for node in NODES}
    assert json.loads(out)["data"]["status"] == "succeeded"
