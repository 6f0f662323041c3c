"""The hold itself under faults, with a real engine and real agent processes: node1's agent holds a
real Tarantool (its pin lives in the server, not in the agent), node2 and node3 hold SQLite.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from snapctl.errors import ExitCode
from tests.faults.harness import NODES, FaultCluster, wait_until
from tests.realdb.tarantool import TarantoolReplicaSet

pytestmark = pytest.mark.slow

PIN = ("local refs = {} for _, c in ipairs(box.info.gc().checkpoints) do for _, r in ipairs(c.references) do "
       "refs[#refs + 1] = r end end return refs, rawget(_G, 'snapctl_backup_run')")


def pin_of(tt: TarantoolReplicaSet) -> str | None:
    """The run whose pin holds the instance's checkpoint, or None when nothing is pinned."""
    refs, holder = tt.eval(PIN)
    return holder if "backup" in refs else None


def inventory(cluster: FaultCluster, tt: TarantoolReplicaSet, path: Path, **changes) -> Path:
    def volumes(node: str) -> list[dict]:
        where = tt.master.work_dir if node == "node1" else cluster.agents[node].volume
        return [{"name": "data", "path": str(where)}]

    return cluster.write_inventory(path, volumes=volumes, **changes)


# The agent is SIGKILLed while its Tarantool is pinned, and started again before the run completes.
# The pin outlived the agent (it is the server's); the new agent did not know the run, so its
# complete was answered "nothing is held", the rollback reported node1 "released", and the pin
# stayed for ever: every later backup was refused, "engine already held by snapctl run R". Then a
# complete reaching the new agent released it and answered `released: true`, as if the hold had
# stood. Now the new agent releases the pin at start, from the killed one's hold record, and
# answers the run's renew and complete that its hold was lost: the run fails either way.
@pytest.mark.parametrize("lease", ["30s", "3s"], ids=["complete-first", "renew-first"])
def test_a_pin_left_by_an_agent_killed_mid_hold_is_released_at_its_restart_and_fails_the_run(make_cluster, tmp_path,
                                                                                             lease):
    with TarantoolReplicaSet(tmp_path / "tt", size=1) as tt:
        cluster: FaultCluster = make_cluster(engines={"node1": tt.engine_settings()})
        stopping = inventory(cluster, tt, tmp_path / "stopping.yaml", provider={"stop": {"node1": "after"}},
                             policy={"lease_ttl_s": lease})
        process = cluster.popen("backup", "--no-prune", inventory=stopping)
        cluster.wait_reached("node1.made")  # node1's snapshot is made; its create call has not returned
        run_id = cluster.lock_record()["run_id"]
        assert pin_of(tt) == run_id

        cluster.kill_agent("node1")
        assert pin_of(tt) == run_id, "a pin is the server's: it outlives the agent that made it"
        cluster.start_agent("node1")
        assert pin_of(tt) is None, "released by the new agent at start, from the killed one's hold record"
        proxy = cluster.agents["node1"].proxy
        if lease == "3s":  # snapctl renews every second: the new agent refuses, the run's hold being lost
            first = proxy.gate("POST /v1/renew")
            first.wait()
            first.open()
            proxy.gate("POST /v1/renew").wait()  # the next one: snapctl has read the refusal of the first
        cluster.go("node1.go")
        _, stderr = process.communicate(timeout=90)

        assert "Traceback" not in stderr
        assert pin_of(tt) is None
        manifest = cluster.manifest(run_id)
        # Never told its hold stood: the pin was gone before the snapshot was fixed.
        assert process.returncode == ExitCode.RUN_FAILED, stderr
        assert manifest["status"] == "failed" and "node1" in manifest["error"]
        if lease == "30s":  # the complete came: its answer says how the hold ended, and the hint what to look at
            assert "its hold had already ended when the run completed it" in manifest["error"]
            assert "its agent was killed while it held" in manifest["error"], manifest["error"]
            assert "find out why the agent died" in stderr, stderr

        after = cluster.snapctl("backup", "--no-prune", inventory=inventory(cluster, tt, tmp_path / "plain.yaml"))
        assert after.returncode == 0, after.stderr
        assert pin_of(tt) is None


# The instance restarted while held (its pin lives in memory): the agent answered the complete
# `released: false` and the run failed, as it must, but said to "raise policy.lease_ttl_s if snapctl
# stalls" or rotate the token: the run had taken 0.2 s of a 30 s lease, and nobody else held the token.
def test_an_engine_restarted_mid_hold_fails_the_run_naming_the_restart(make_cluster, tmp_path):
    with TarantoolReplicaSet(tmp_path / "tt", size=1) as tt:
        cluster: FaultCluster = make_cluster(engines={"node1": tt.engine_settings()})
        stopping = inventory(cluster, tt, tmp_path / "stopping.yaml", provider={"stop": {"node1": "after"}},
                             policy={"lease_ttl_s": "30s"})
        process = cluster.popen("backup", "--no-prune", inventory=stopping)
        cluster.wait_reached("node1.made")
        run_id = cluster.lock_record()["run_id"]
        tt.restart(0)
        assert pin_of(tt) is None
        cluster.go("node1.go")
        _, stderr = process.communicate(timeout=90)

        assert process.returncode == ExitCode.RUN_FAILED, stderr
        error, hint = stderr.splitlines()[-2:]
        assert ("node node1: its hold had already ended when the run completed it (the engine dropped it before "
                "complete: it restarted, or someone released its hold by hand)") in error
        assert "lease_ttl_s" not in hint and "token" not in hint and "engine restarted" in hint, hint
        manifest = cluster.manifest(run_id)
        assert manifest["status"] == "failed" and "the engine dropped it" in manifest["nodes"]["node1"]["error"]


# snapctl stopped (SIGSTOP: a control host paused, swapped out) past its nodes' leases while node3's
# snapshot was being made: node3's agent released it. Resumed, snapctl must fail the run, and say why.
def test_snapctl_stopped_past_the_lease_fails_the_run_saying_the_lease_expired(scene: FaultCluster):
    cluster = scene
    stopping = cluster.write_inventory(cluster.directory / "stopping.yaml", provider={"stop": {"node3": "after"}})
    process = cluster.popen("backup", "--no-prune", inventory=stopping)
    cluster.wait_reached("node3.made")
    run_id = cluster.lock_record()["run_id"]
    # Completed by snapctl, which the agents' logs say (no lease would also be a prepare not yet
    # arrived): node3 alone is held. Their answers may still be on the way; snapctl reads them on resume.
    wait_until(lambda: all(cluster.released_by(n, run_id) == "completed" for n in ("node1", "node2")), 15,
               "node1 and node2 to be completed")
    process.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: cluster.released_by("node3", run_id) == "expired", 20, "node3's lease to expire")
        cluster.go("node3.go")
    finally:
        process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == ExitCode.RUN_FAILED, stderr
    error, hint = stderr.splitlines()[-2:]
    assert "node node3: its hold had already ended when the run completed it (its lease expired" in error, error
    assert "policy.lease_ttl_s" in hint and "token" not in hint
    assert cluster.manifest(run_id)["status"] == "failed"
    assert cluster.snapshot_dirs(run_id) == [] and all(cluster.writable(n) for n in NODES)
