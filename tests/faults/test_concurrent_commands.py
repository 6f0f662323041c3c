"""Commands that run at once on one catalog, as cron and a person (or two control hosts) would:
real `snapctl` processes against a real cluster, each stopped at an exact step from outside (the
fault provider waits for a signal file) while another command runs."""

from __future__ import annotations

from tests.faults.harness import FaultCluster

KEEP_ONE = {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}


def test_a_drill_during_a_backups_retention_keeps_its_last_drill_on_the_run(scene: FaultCluster) -> None:
    # The backup saved its manifest as succeeded, then applied retention, then saved the manifest
    # it had in memory with the retention's outcome: a drill of that run (`drill latest`, from CI
    # or another host) that finished meanwhile had its `last_drill` written over, and `snapctl
    # show` said the backup had never been drilled.
    cluster = scene
    plain = cluster.write_inventory(cluster.directory / "keep-one.yaml", retention=KEEP_ONE)
    stopping = cluster.write_inventory(cluster.directory / "stop-delete.yaml", retention=KEEP_ONE,
                                       provider={"stop_delete": True}, policy={"lock_ttl_s": "30s"})
    older = cluster.snapctl("backup", "--no-prune", "-o", "json", inventory=plain)
    assert older.returncode == 0, older.stderr
    backup = cluster.popen("backup", "-o", "json", inventory=stopping)
    try:
        cluster.wait_reached("delete.entered")  # the run succeeded; its retention deletes `older`'s snapshots
        drill = cluster.snapctl("drill", "latest", "--junit", str(cluster.directory / "drill.xml"), "-o", "json",
                                inventory=plain)
        assert drill.returncode == 0, drill.stderr
        run_id = drill.json["data"]["run_id"]
        assert run_id != older.json["data"]["run_id"]
        cluster.go("delete.go")
        _, err = backup.communicate(timeout=120)
    finally:
        backup.kill()
        backup.communicate()
    assert backup.returncode == 0, err

    manifest = cluster.manifest(run_id)
    assert manifest["extra"]["retention"]["deleted"] == [older.json["data"]["run_id"]]
    assert manifest["last_drill"] is not None and manifest["last_drill"]["ok"], "the drill's summary is kept"
