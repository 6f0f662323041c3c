"""Two `snapctl backup` processes, started together on one cluster with a shared S3 catalog (moto's
server over HTTP): exactly one runs, the other exits 4 naming the holder."""

from __future__ import annotations

import json

import pytest

from snapctl.errors import ExitCode
from tests.moto_server import DEFAULT_REGION
from tests.retention.s3_helpers import BUCKET, s3_bucket, s3_client


@pytest.fixture
def s3_cluster(cluster):
    with s3_bucket() as server:
        cluster.write_inventory(
            catalog={"url": f"s3://{BUCKET}/shared", "endpoint_url": server.endpoint_url, "region": DEFAULT_REGION},
            # Each snapshot call pauses, so the winner is still running when the loser asks for the lock.
            provider={"type": "slow", "store": ".snapctl-demo/snapshots", "delay_s": 6},
        )
        yield cluster, server


def test_two_backups_at_once_exactly_one_runs(s3_cluster) -> None:
    cluster, server = s3_cluster
    processes = [cluster.popen("backup", "-o", "json") for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=180) for p in processes]
    finally:
        for p in processes:
            p.kill()
    codes = [p.returncode for p in processes]
    assert sorted(codes) == [ExitCode.OK, ExitCode.LOCK_HELD], outputs
    winner = codes.index(ExitCode.OK)
    (won_out, _), (lost_out, lost_err) = outputs[winner], outputs[1 - winner]
    run_id = json.loads(won_out)["data"]["run_id"]

    assert f":{processes[winner].pid} (run {run_id})" in lost_err  # the holder: user@host:pid and its run
    assert "cluster e2e is locked by" in lost_err and "Traceback" not in lost_err
    assert json.loads(lost_out)["exit_code"] == ExitCode.LOCK_HELD

    # The shared catalog holds the one run, and any host listing it sees the same.
    listed = cluster.snapctl("list", "-o", "json", check_json=True).json["data"]["runs"]
    assert [(r["run_id"], r["status"]) for r in listed] == [(run_id, "succeeded")]
    client = s3_client(server)
    lock = json.loads(client.get_object(Bucket=BUCKET, Key="shared/e2e/lock.json")["Body"].read())
    assert lock["run_id"] == run_id and lock["owner"].endswith(f":{processes[winner].pid}") and lock["released_at"]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="shared/")["Contents"]]
    assert sorted(keys) == ["shared/e2e/index.json", "shared/e2e/lock.json", f"shared/e2e/manifests/{run_id}.json"]
