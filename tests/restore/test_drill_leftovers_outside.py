"""What a drill killed outright made outside its scratch directory: the volumes it restored to a
node's ``restore.path`` or as cloud volumes, and a scratch engine it had only just started. The
next drill cleans them up, by what the killed drill's marker recorded before making them, and
nothing an operator made. Real `snapctl drill` processes, really SIGKILLed (as in
test_drill_leftovers.py); aws through boto3 to moto's server, with a real scratch agent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapctl.restore import restore_run
from tests.moto_server import DEFAULT_REGION, dummy_aws_credentials, shared_moto_server
from tests.restore.clouds import _backup, _inventory
from tests.restore.conftest import SqliteCluster, scratch_agent
from tests.restore.test_drill_leftovers import (
    drill,
    killed,
    only_unfinished,
    paused_at,
    records,
    running,
    tarantool_cluster,  # noqa: F401 - the fixture
    working_in,
)


def test_a_killed_drills_restore_path_is_removed_by_the_next_drill(sqlite_cluster, tmp_path):
    target = tmp_path / "restored" / "n1"
    sqlite_cluster.edit(node_n1={"restore": {"path": str(target)}})
    sqlite_cluster.backup()
    killed(paused_at(sqlite_cluster, "n1", "starting", tmp_path))  # n1 restored to its restore.path
    dead = only_unfinished(sqlite_cluster)
    assert (target / "data" / "app.db").exists(), "the killed drill left n1 restored outside its scratch"

    data = drill(sqlite_cluster)  # without the cleanup, restore's checks refuse the target: not empty

    [line] = data["cleaned_up"]
    assert f"deleted the volumes it restored: {target / 'data'}" in line and line.endswith("record marked abandoned")
    assert not Path(dead["scratch_dir"]).exists()
    assert not (target / "data").exists() and not (target / "data.snapctl-restore.json").exists()
    assert records(sqlite_cluster)[dead["drill_id"]]["abandoned"] is True


def test_an_operators_restore_at_a_place_the_killed_drill_recorded_is_left_alone(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    killed(paused_at(sqlite_cluster, "n1", "starting", tmp_path))
    dead = only_unfinished(sqlite_cluster)
    # An operator's own restore, of this cluster, at a place the marker names (a marker edited, or
    # a place restored into again since): it carries no tag of the drill.
    restore_run(sqlite_cluster.inventory, "latest", to=tmp_path / "mine")
    marker = Path(dead["scratch_dir"]) / ".snapctl-drill.json"
    recorded = json.loads(marker.read_text())
    marker.write_text(json.dumps({**recorded, "restore_places": [str(tmp_path / "mine" / "n1" / "data")]}))

    [line] = drill(sqlite_cluster)["cleaned_up"]

    assert (tmp_path / "mine" / "n1" / "data" / "app.db").exists()
    assert "deleted the volumes" not in line and "removed its scratch directory" in line


_PAUSED_AFTER_POPEN = """
import os, subprocess, sys, threading
from pathlib import Path
import snapctl.cli as cli

reached = sys.argv[1]
real = subprocess.Popen


class Popen(real):
    def __init__(self, args, *rest, **kwargs):
        super().__init__(args, *rest, **kwargs)
        if any(str(a).endswith("tarantool-drill.lua") for a in args):  # the scratch engine, just started
            Path(reached).write_text(str(self.pid))
            threading.Event().wait()


subprocess.Popen = Popen
sys.argv = ["snapctl", *sys.argv[2:]]
cli.main()
"""


def test_a_scratch_engine_started_just_before_the_kill_is_stopped_by_the_next_drill(tarantool_cluster, tmp_path):  # noqa: F811
    reached = tmp_path / "engine-started"
    victim = subprocess.Popen([sys.executable, "-c", _PAUSED_AFTER_POPEN, str(reached), "drill", "latest", "-i",
                               str(tarantool_cluster.inventory_path)], cwd=tarantool_cluster.directory,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not reached.exists():
        assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()[1]
        time.sleep(0.05)
    engine = int(reached.read_text())
    while _program(engine) != "tarantool":  # it became the engine: what a kill may well leave behind
        assert running(engine) and time.monotonic() < deadline, "the scratch tarantool never started"
        time.sleep(0.05)
    killed(victim)  # before the drill itself wrote anything more about its engine
    dead = only_unfinished(tarantool_cluster)

    [line] = drill(tarantool_cluster)["cleaned_up"]

    assert not running(engine), "the engine of the killed drill is stopped"
    assert f"stopped tarantool pid {engine}" in line and not Path(dead["scratch_dir"]).exists()
    assert working_in(tarantool_cluster.directory / "scratch") == []


def _program(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


@pytest.fixture
def aws_drilled(tmp_path):
    """An embedded SQLite node on an EBS volume (moto), drilled through a real scratch agent on the
    restore instance its volume is attached to: (cluster, ec2 client)."""
    import boto3

    token_file = tmp_path / "agent-token"
    token_file.write_text("scratch-agent-token\n")
    scratch_db = tmp_path / "scratch-machine" / "data" / "app.db"
    scratch_db.parent.mkdir(parents=True)
    moto = shared_moto_server()
    with dummy_aws_credentials(), scratch_agent(tmp_path, token_file, scratch_db, name="db1") as url:
        ec2 = boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name=DEFAULT_REGION)
        zone = f"{DEFAULT_REGION}a"
        source = ec2.create_volume(Size=8, AvailabilityZone=zone)["VolumeId"]
        instance = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1,
                                     Placement={"AvailabilityZone": zone})["Instances"][0]["InstanceId"]
        provider = {"type": "aws", "region": DEFAULT_REGION, "endpoint_url": moto.endpoint_url, "poll_interval_s": 0.05}
        inventory = _inventory(tmp_path, provider, {"volume": source, "name": "data"},
                               {"zone": zone, "instance": instance, "devices": {"data": "/dev/sdf"}, "agent": url},
                               {"token_file": str(token_file)})
        cluster = SqliteCluster(tmp_path, inventory)
        cluster.edit(drill={"scratch_dir": "scratch"}, cluster="restore-test")
        _backup(inventory)
        shutil.copy(tmp_path / "db1" / "app.db", scratch_db)  # what the restored disk holds, on the scratch machine
        yield cluster, ec2


def test_a_killed_drills_cloud_volume_is_detached_and_deleted_by_the_next_drill(aws_drilled, tmp_path):
    cluster, ec2 = aws_drilled
    killed(paused_at(cluster, "db1", "starting", tmp_path))  # its volume made and attached to the instance
    dead = only_unfinished(cluster)
    [left] = _volumes_of(ec2, dead["drill_id"])
    assert left["Attachments"], "the killed drill left its volume attached"

    data = drill(cluster)

    [line] = data["cleaned_up"]
    assert f"deleted the volumes it restored: {left['VolumeId']}" in line, line
    assert _volumes_of(ec2, dead["drill_id"]) == []
    assert _volumes_of(ec2, data["drill_id"]) == [], "and the new drill's own volume is torn down"


def test_a_cloud_volume_without_the_killed_drills_tag_is_left_alone(aws_drilled, tmp_path):
    cluster, ec2 = aws_drilled
    killed(paused_at(cluster, "db1", "starting", tmp_path))
    dead = only_unfinished(cluster)
    [left] = _volumes_of(ec2, dead["drill_id"])
    # Someone else's restore of the cluster (a `snapctl restore`): the drill's tag taken off stands for it.
    ec2.delete_tags(Resources=[left["VolumeId"]], Tags=[{"Key": "snapctl-drill", "Value": dead["drill_id"]}])
    [attached] = left["Attachments"]  # detached, so that the new drill can attach its own at /dev/sdf
    ec2.detach_volume(VolumeId=left["VolumeId"], InstanceId=attached["InstanceId"], Device=attached["Device"])

    [line] = drill(cluster)["cleaned_up"]

    [kept] = ec2.describe_volumes(VolumeIds=[left["VolumeId"]])["Volumes"]
    assert kept["State"] not in ("deleting", "deleted") and "deleted the volumes" not in line


def _volumes_of(ec2, drill_id: str) -> list[dict]:
    found = ec2.describe_volumes(Filters=[{"Name": "tag:snapctl-drill", "Values": [drill_id]}])["Volumes"]
    return [v for v in found if v["State"] not in ("deleting", "deleted")]


def test_volumes_of_another_provider_are_named_not_looked_for_and_the_scratch_still_goes(tmp_path):
    # The inventory's provider changed since the killed drill (aws then, local now): no later try
    # could find its aws volumes, so the line says so with a hint, and the rest is cleaned up.
    import os
    import socket
    from datetime import UTC, datetime

    from snapctl.catalog import Catalog, LocalBlobStore
    from snapctl.drill_leftovers import clean_abandoned, find_abandoned, identity, write_marker
    from snapctl.providers import create_provider
    from tests.restore.test_drill_leftovers import _a_pid_no_process_has

    catalog = Catalog(LocalBlobStore(tmp_path / "catalog"), "c")
    owner = f"ops@{socket.gethostname()}:{_a_pid_no_process_has()}"
    drill_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-ab12"
    key = f"c/drills/20240101T000000Z-abcdef-{drill_id}.json"
    scratch = tmp_path / "scratch" / drill_id
    scratch.mkdir(parents=True)
    write_marker(scratch, cluster="c", drill_id=drill_id, record=key, owner=owner, provider="aws")
    catalog.store.write(key, json.dumps({"drill_id": drill_id, "run_id": "20240101T000000Z-abcdef", "owner": owner,
                                         "owner_process": {**identity(os.getpid()), "pid": int(owner.rpartition(":")[2])},
                                         "scratch_dir": str(scratch), "finished_at": None}).encode())
    local = create_provider({"type": "local", "store": str(tmp_path / "store")}, cluster="c", base_dir=tmp_path)

    [(line, done)] = clean_abandoned(catalog, find_abandoned(catalog), "drill d", local)

    assert done and not scratch.exists()
    assert f"did not look for the volumes it restored with the aws provider (tagged snapctl-drill={drill_id}): " \
           "the inventory's provider is local" in line
    assert "hint: delete them by hand with the provider's own tools" in line
