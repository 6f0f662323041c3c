"""`snapctl backup` SIGKILLed at each step of a run. Whatever the step, afterwards: no node stays held
past its lease, the catalog still loads, and the next run succeeds and closes the dead run: as
failed, every snapshot it made then found by `snapctl gc`; or, killed while it waited for its
snapshots to complete (every one taken, every node released), as the backup it is, as a
`backup --no-wait` run's, its snapshots its own.

Each step is reached from outside: a proxy holds one request (the run cannot get past it), the
fault provider stops inside a snapshot or wait call, or the test holds the catalog directory's
flock so the manifest write blocks. Then the test kills snapctl where it stands.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.harness import NODES, FaultCluster, wait_until


@dataclass
class Stop:
    provider: dict  # settings for the fault provider
    there: Callable[[int], None]  # waits until the run (pid) stands at the step
    after_kill: Callable[[], None]  # what the world does next (a held request arrives late, ...)
    has_manifest: bool = True
    kept_as_backup: bool = False  # killed after step 8: every snapshot taken, every node released
    rolling_back: bool = False  # killed in a rollback that began after step 8


def holding_the_lock(c: FaultCluster) -> Stop:
    gate = c.agents["node1"].proxy.gate("GET /v1/status")  # preflight's first look: the lock is taken

    def there(_pid: int) -> None:
        gate.wait()
        assert c.lock_record() and not c.lock_record().get("released_at")

    return Stop({}, there, gate.open, has_manifest=False)


def during_prepare(c: FaultCluster) -> Stop:
    gate = c.agents["node1"].proxy.gate("POST /v1/prepare")

    def there(_pid: int) -> None:
        gate.wait()
        wait_until(lambda: c.held() == {"node2", "node3"}, 30, "node2 and node3 to be held")

    # The dead run's prepare reaches node1 after all: that hold must end by its lease too.
    return Stop({}, there, gate.open)


def between_prepare_and_snapshot(c: FaultCluster) -> Stop:
    def there(_pid: int) -> None:
        for node in NODES:
            c.wait_reached(f"{node}.entered")
        assert c.held() == set(NODES)

    return Stop({"stop": {n: "before" for n in NODES}}, there, lambda: None)


def during_snapshot(c: FaultCluster) -> Stop:
    def there(_pid: int) -> None:
        c.wait_reached("node3.made")  # node3's snapshot exists, its create call has not returned
        c.wait_released(nodes=("node1", "node2"))  # the others were completed as soon as theirs returned

    return Stop({"stop": {"node3": "after"}}, there, lambda: None)


def before_complete(c: FaultCluster) -> Stop:
    gate = c.agents["node1"].proxy.gate("POST /v1/complete")

    def there(_pid: int) -> None:
        gate.wait()
        assert "node1" in c.held()

    # The dead run's complete arrives late: it must end that run's hold, nothing more.
    return Stop({}, there, gate.open)


def writing_the_manifest(c: FaultCluster) -> Stop:
    gate = c.agents["node1"].proxy.gate("POST /v1/complete")
    lock_file = c.catalog_dir / c.cluster / "manifests" / ".lock"
    held: list[int] = []

    def there(pid: int) -> None:
        gate.wait()
        # The local catalog serialises writers with an flock on the directory's .lock: holding it
        # here makes the run's step-8 manifest write wait, at the exact point it begins.
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)
        gate.open()
        wait_until(lambda: _waits_for_flock(pid, lock_file), 30, "snapctl to block on the manifest write")

    def after_kill() -> None:
        os.close(held.pop())

    return Stop({}, there, after_kill)


def waiting_for_completion(c: FaultCluster) -> Stop:
    def there(_pid: int) -> None:
        c.wait_reached("wait.entered")  # step 8's manifest, with every snapshot in it, is written

    return Stop({"stop_wait": True}, there, lambda: None, kept_as_backup=True)


def rolling_back_after_the_wait(c: FaultCluster) -> Stop:
    def there(_pid: int) -> None:
        c.wait_reached("delete.entered")  # the wait failed; the rollback deletes what step 8 recorded

    # Killed with its manifest naming every snapshot, some perhaps deleted already: no backup.
    return Stop({"fail_wait": "the upload failed", "stop_delete": True}, there, lambda: None, rolling_back=True)


def _waits_for_flock(pid: int, path: Path) -> bool:
    inode = os.stat(path).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and str(pid) in fields and fields[-3].endswith(f":{inode}"):
            return True
    return False


STEPS = [holding_the_lock, during_prepare, between_prepare_and_snapshot, during_snapshot, before_complete,
         writing_the_manifest, waiting_for_completion, rolling_back_after_the_wait]


@pytest.mark.parametrize("step", STEPS, ids=[s.__name__ for s in STEPS])
def test_sigkill_at_each_step_leaves_nothing_held_or_lost(scene: FaultCluster, step) -> None:
    cluster = scene
    stop = step(cluster)
    _, run_id = _killed_at(cluster, stop)
    stop.after_kill()
    _nothing_held_or_lost(cluster, stop, run_id)


def test_sigkill_while_the_provider_worker_process_makes_a_snapshot_leaves_nothing_behind(scene) -> None:
    cluster = scene
    stop = during_snapshot(cluster)
    process, run_id = _killed_at(cluster, stop, provider_process="always")
    worker = int((cluster.control / "node3.made").read_text())
    assert worker != process.pid and _running(worker)  # node3's create call is still under way there
    (cluster.control / "node3.go").touch()  # ... and now the cloud answers it
    wait_until(lambda: not _running(worker), 15, "the provider worker to end once its call returned")
    _nothing_held_or_lost(cluster, stop, run_id)


def _killed_at(cluster: FaultCluster, stop: Stop, **policy: str) -> tuple[subprocess.Popen, str]:
    """Start a backup, SIGKILL it once it stands at ``stop``; the process and its run id."""
    # Requests held at the proxy must not time out before the kill: the run stays where it stands.
    stopping = cluster.write_inventory(cluster.directory / "stopping.yaml", provider=stop.provider,
                                       policy={"agent_timeout_s": "30s", **policy})
    process = cluster.popen("backup", "--no-prune", inventory=stopping)
    try:
        stop.there(process.pid)
        run_id = cluster.lock_record()["run_id"]
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    return process, run_id


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # an orphan's zombie waits for whoever reaps it: it runs no more


def _nothing_held_or_lost(cluster: FaultCluster, stop: Stop, run_id: str) -> None:
    # No node stays held past its lease (3 s): every agent releases by itself, writers get in.
    cluster.wait_released(timeout=15)
    assert all(cluster.writable(node) for node in NODES)

    # The catalog still loads, with the dead run in it (when it got as far as writing a manifest).
    entries, problems = cluster.catalog().list()
    assert problems == []
    assert (run_id in [e.run_id for e in entries]) == stop.has_manifest

    # Before that run closes it, verify (as restore and drill) takes the dead run for what it is:
    # killed in its wait, a backup; else none, said so (not "running: nothing to verify").
    if stop.has_manifest:
        verified = cluster.snapctl("verify", run_id)
        said = " ".join(verified.stderr.split())
        if stop.kept_as_backup:  # its snapshots all there, not yet durable: pending, as a --no-wait run's
            assert "every snapshot is there, 3 still pending" in verified.stdout, verified.stdout + verified.stderr
            assert "its snapctl is gone and every snapshot was taken" in said, said
        else:
            how = "while it rolled the run back" if stop.rolling_back else "before it took every snapshot"
            assert verified.returncode == 2 and f"running, but snapctl stopped {how}" in said, said

    # The next run succeeds once the dead run's lock has expired, and closes the dead run's record.
    cluster.wait_lock_free()
    after = cluster.snapctl("backup", "--no-prune", "-o", "json")
    assert after.returncode == 0, after.stderr
    assert after.json["data"]["status"] == "succeeded"
    owned: set[str] = set()
    if stop.kept_as_backup:
        dead = cluster.manifest(run_id)
        assert dead["status"] == "succeeded" and dead["error"] is None
        # Closed as a --no-wait run's; being the newest backup, the next run then completed its
        # local snapshots before it held any node, as it does those of a --no-wait run.
        assert dead["snapshots_completed"] is True
        assert any("snapctl stopped while it waited for the snapshots" in d for d in dead["degradations"])
        owned = {ref["snapshot_id"] for record in dead["nodes"].values() for ref in record["snapshots"]}
        assert len(owned) == len(NODES)
    elif stop.has_manifest:
        dead = cluster.manifest(run_id)
        said = "rolled back: snapctl stopped while rolling" if stop.rolling_back else "abandoned"
        assert dead["status"] == "failed" and dead["error"].startswith(said), dead["error"]
    else:
        assert run_id not in cluster.run_ids()

    # Every snapshot a dead run made is the backup's it was, or found by `snapctl gc` (a failed
    # run's manifest owns none); no half-made copy is left (the next snapshot of each node cleared
    # its work directories).
    made = {p.name for p in cluster.snapshot_dirs(run_id)}
    assert not [name for name in made if name.startswith(".")]
    orphans = {ref.snapshot_id for ref in cluster.gc().orphans if ref.tags["snapctl-run"] == run_id}
    assert made == owned | orphans and not owned & orphans
    assert set(cluster.tagged(run_id)) == made
    assert cluster.gc(delete=True).ok
    assert {p.name for p in cluster.snapshot_dirs(run_id)} == owned


def test_sigkill_between_the_succeeded_manifest_and_its_index_line_leaves_a_good_backup(scene) -> None:
    cluster = scene
    stopping = cluster.write_inventory(cluster.directory / "stopping.yaml", provider={"stop_wait": True},
                                       policy={"agent_timeout_s": "30s"})
    process = cluster.popen("backup", "--no-prune", inventory=stopping)
    # The index's directory lock, not the manifests': the manifest says succeeded, its index line
    # cannot follow. Taken once step 8's manifest and index line (running) are written.
    index_lock = cluster.catalog_dir / cluster.cluster / ".lock"
    try:
        cluster.wait_reached("wait.entered")
        run_id = cluster.lock_record()["run_id"]
        fd = os.open(index_lock, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            cluster.go("wait.go")
            wait_until(lambda: cluster.manifest(run_id)["status"] == "succeeded", 30, "the succeeded manifest")
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=30)
            index = (cluster.catalog_dir / cluster.cluster / "index.json").read_text()
            assert [e["status"] for e in json.loads(index) if e["run_id"] == run_id] == ["running"]
        finally:
            os.close(fd)
    finally:
        process.kill()
        process.communicate()

    listed = cluster.snapctl("list", "-o", "json").json["data"]
    assert [(r["run_id"], r["status"]) for r in listed["runs"]] == [(run_id, "succeeded")]
    assert cluster.snapctl("show", "latest", "-o", "json").json["data"]["run_id"] == run_id
    cluster.wait_lock_free()
    after = cluster.snapctl("backup", "--no-prune", "-o", "json")
    assert after.returncode == 0, after.stderr
    assert cluster.manifest(run_id)["status"] == "succeeded"  # never marked failed as abandoned
    index = json.loads((cluster.catalog_dir / cluster.cluster / "index.json").read_text())
    assert [e["status"] for e in index if e["run_id"] == run_id] == ["succeeded"]
    assert cluster.gc().orphans == [] and cluster.snapshot_dirs(run_id)
