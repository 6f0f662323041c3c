"""`snapctl backup` stopped mid-run by SIGTERM (how cron's and CI's timeouts, systemd and Kubernetes
stop a command) or SIGINT (Ctrl-C) rolls back as any failure does: every held node is completed by
snapctl at once rather than left to its lease, the run's snapshots are deleted, its manifest says
failed, its lock is released, and it exits 130 saying so (with `-o json`, in its one document).
Stopped while it waits for its snapshots to complete, every one taken and every node released, it
keeps them: the run is the backup a `--no-wait` run is, and it ends at once."""

from __future__ import annotations

import json
import signal

import pytest

from tests.faults.harness import NODES, FaultCluster


# SIGHUP: the ssh session or terminal of a backup started by hand went away. It killed snapctl where
# it stood, as SIGKILL does: node3 left held until its lease ran out, the manifest `running`.
# async: the provider's create calls are tasks on snapctl's event loop, which the interruption
# cancels the backup's task over; node3's must go on, to be awaited and its snapshot deleted.
@pytest.mark.parametrize(("sig", "output", "async_calls"),
                         [(signal.SIGTERM, "text", False), (signal.SIGINT, "text", False),
                          (signal.SIGTERM, "json", False), (signal.SIGHUP, "text", False),
                          (signal.SIGTERM, "text", True)],
                         ids=["SIGTERM", "SIGINT", "SIGTERM-json", "SIGHUP", "SIGTERM-async"])
def test_a_backup_stopped_while_a_node_is_held_releases_it_and_rolls_back(scene: FaultCluster, sig, output,
                                                                          async_calls) -> None:
    cluster = scene
    stopping = cluster.write_inventory(cluster.directory / "stopping.yaml",
                                       provider={"stop": {"node3": "after"}, "async_calls": async_calls})
    process = cluster.popen("backup", "--no-prune", "-o", output, inventory=stopping)
    cluster.wait_reached("node3.made")  # node3's snapshot exists, its create call has not returned
    cluster.wait_released(nodes=("node1", "node2"))
    run_id = cluster.lock_record()["run_id"]
    assert cluster.held() == {"node3"}

    process.send_signal(sig)
    cluster.wait_released(nodes=("node3",), timeout=10)
    assert process.poll() is None, "it waits for the call under way, to delete what that call made"
    cluster.go("node3.go")
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    # It says which run it was and what became of it: rolled back, nothing kept (it said only "interrupted").
    # It names the signal: a SIGHUP (an ssh session gone) said "Ctrl-C or SIGTERM".
    said = f"interrupted ({sig.name}): backup {run_id} was rolled back"
    assert stderr.splitlines()[-1] == f"snapctl: error: {said}"
    if output == "json":
        assert json.loads(stdout) == {"schema_version": 1, "error": said, "hint": None, "exit_code": 130}
    else:
        assert "rolling back: interrupted" in stderr
    # Completed by snapctl, not expired: its leases (3 s) would have released them too.
    assert {node: cluster.released_by(node, run_id) for node in NODES} == dict.fromkeys(NODES, "completed")
    assert all(cluster.writable(node) for node in NODES)
    manifest = cluster.manifest(run_id)
    assert (manifest["status"], manifest["error"]) == ("failed", "interrupted")
    assert cluster.snapshot_dirs(run_id) == [] and cluster.tagged(run_id) == []
    assert cluster.lock_record()["released_at"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_backup_stopped_while_it_waits_for_its_snapshots_keeps_them_and_ends_at_once(scene: FaultCluster,
                                                                                        sig) -> None:
    cluster = scene
    # The provider's wait would take two minutes to end by itself: the run must not wait for it.
    stopping = cluster.write_inventory(cluster.directory / "stopping.yaml",
                                       provider={"stop_wait": True, "stop_timeout_s": 120})
    process = cluster.popen("backup", "--no-prune", inventory=stopping)
    cluster.wait_reached("wait.entered")  # every snapshot taken, every node released
    run_id = cluster.lock_record()["run_id"]

    process.send_signal(sig)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 130, stderr
    assert stderr.splitlines()[-2:] == [  # the error itself says the run is kept, and how to check it
        (f"snapctl: error: interrupted ({sig.name}): backup {run_id} is kept, its snapshots not confirmed "
         "complete"),
        f"  hint: `snapctl verify {run_id}` asks the provider whether its snapshots are there and complete"]
    assert f"interrupted: backup {run_id} is kept, its snapshots not confirmed complete" in stderr
    assert "rolling back" not in stderr
    manifest = cluster.manifest(run_id)
    assert manifest["status"] == "succeeded" and not manifest["snapshots_completed"] and manifest["error"] is None
    assert len(cluster.snapshot_dirs(run_id)) == len(NODES) and cluster.lock_record()["released_at"]
    assert cluster.held() == set()
    listed = cluster.snapctl("list", "-o", "json").json["data"]["runs"]
    assert [(r["run_id"], r["status"]) for r in listed] == [(run_id, "succeeded")]


def test_a_backup_stopped_whose_rollback_cannot_delete_its_snapshots_names_them(scene: FaultCluster) -> None:
    # Stopped while held, the rollback's deletes failing: "interrupted" alone said neither that the
    # run was rolled back nor that its snapshots were still there.
    cluster = scene
    stopping = cluster.write_inventory(cluster.directory / "stopping.yaml",
                                       provider={"stop": {"node3": "after"}, "fail_delete": "the store is read-only"})
    process = cluster.popen("backup", "--no-prune", "-o", "json", inventory=stopping)
    cluster.wait_reached("node3.made")
    cluster.wait_released(nodes=("node1", "node2"))
    run_id = cluster.lock_record()["run_id"]

    process.send_signal(signal.SIGTERM)
    cluster.wait_released(nodes=("node3",), timeout=10)
    cluster.go("node3.go")
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    document = json.loads(stdout)
    left = cluster.tagged(run_id)
    assert len(left) == len(NODES)
    assert document["error"].startswith(f"interrupted (SIGTERM): backup {run_id} was rolled back; "
                                        "snapshots not deleted (snapctl gc finds them): "), document
    assert all(f"{snapshot} (snapshot {snapshot}: the store is read-only)" in document["error"] for snapshot in left)
    assert document["hint"] == "`snapctl gc` lists them; `snapctl gc --delete` deletes those no manifest owns"
    assert cluster.held() == set()
