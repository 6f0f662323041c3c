"""`snapctl restore` of cloud runs, in-process, with the real SDKs: an embedded SQLite node whose
volume is a cloud disk on the local emulators (moto for aws; local servers answering the GCP and
Azure wire formats)."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from snapctl.config import load_inventory
from snapctl.drill import run_drill
from snapctl.restore import restore_run
from tests.fakes.gcp_compute import FakeGcpCompute
from tests.moto_server import DEFAULT_REGION, dummy_aws_credentials, shared_moto_server
from tests.restore import clouds
from tests.restore.clouds import (
    AZURE_GROUP,
    GCP_ZONE,
    _backup,
    _inventory,
    attached_disks,
    azure_node,
    gcp_node,
    restored_disks,
)
from tests.restore.conftest import scratch_agent


def test_a_gcp_restore_without_a_zone_makes_the_disk_in_the_source_disks_zone(tmp_path):
    with gcp_node(tmp_path) as (fake, inventory):
        run_id = _backup(inventory)
        result = restore_run(load_inventory(inventory), run_id)
        [node] = result.nodes
        zone, name = node.volumes["data"].split("/zones/", 1)[1].split("/disks/")
        assert zone == GCP_ZONE and (GCP_ZONE, name) in fake.disks


def test_an_azure_restore_without_a_zone_makes_a_zoneless_disk_in_the_providers_location(tmp_path):
    with azure_node(tmp_path) as (fake, inventory):
        run_id = _backup(inventory)
        result = restore_run(load_inventory(inventory), run_id)
        [node] = result.nodes
        disk = fake.disks()[node.volumes["data"].rsplit("/", 1)[-1]]
        assert disk["location"] == "westeurope" and "zones" not in disk


def test_an_aws_restore_with_attach_says_where_it_attached_each_volume(tmp_path):
    import boto3

    moto = shared_moto_server()
    with dummy_aws_credentials():
        ec2 = boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name=DEFAULT_REGION)
        zone = f"{DEFAULT_REGION}b"
        source = ec2.create_volume(Size=8, AvailabilityZone=zone)["VolumeId"]
        instance = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1,
                                     Placement={"AvailabilityZone": zone})["Instances"][0]["InstanceId"]
        provider = {"type": "aws", "region": DEFAULT_REGION, "endpoint_url": moto.endpoint_url, "poll_interval_s": 0.05}
        inventory = _inventory(tmp_path, provider, {"volume": source, "name": "data"},
                               {"zone": zone, "instance": instance, "devices": {"data": "/dev/sdf"}})
        run_id = _backup(inventory)

        [node] = restore_run(load_inventory(inventory), run_id, attach=True).nodes

        [volume] = ec2.describe_volumes(VolumeIds=[node.volumes["data"]])["Volumes"]
        assert [(a["InstanceId"], a["Device"]) for a in volume["Attachments"]] == [(instance, "/dev/sdf")]
        assert node.note.startswith(f"attached to {instance} (data at /dev/sdf): restore-prepare and start the engine")
        assert "attach them" not in node.note


@pytest.mark.parametrize("cloud", [gcp_node, azure_node], ids=["gcp", "azure"])
def test_a_gcp_or_azure_restore_with_attach_attaches_each_disk_to_the_nodes_instance(tmp_path, cloud):
    with cloud(tmp_path, {"instance": "scratch"}) as (fake, inventory):
        run_id = _backup(inventory)

        [node] = restore_run(load_inventory(inventory), run_id, attach=True).nodes

        [disk] = restored_disks(fake)
        assert node.volumes["data"].endswith(f"/disks/{disk}") and attached_disks(fake) == [disk]
        assert node.note.startswith("attached to scratch (data): restore-prepare and start the engine there")


@pytest.mark.parametrize("cloud", [gcp_node, azure_node], ids=["gcp", "azure"])
def test_a_gcp_or_azure_run_is_drilled_through_a_scratch_agent_and_torn_down(tmp_path, cloud):
    """The drill restores the node's disk, attaches it to the scratch machine, verifies the engine
    the scratch agent serves there, then detaches and deletes the disk. The emulators' disks hold
    no bytes: the scratch agent's database is a copy of the one backed up, as the disk would hold."""
    token_file = tmp_path / "agent-token"
    token_file.write_text("scratch-agent-token\n")
    scratch_db = tmp_path / "scratch-machine" / "data" / "app.db"
    scratch_db.parent.mkdir(parents=True)
    auth = {"token_file": str(token_file)}
    with scratch_agent(tmp_path, token_file, scratch_db) as url, \
            cloud(tmp_path, {"instance": "scratch", "agent": url}, auth) as (fake, inventory):
        run_id = _backup(inventory)
        shutil.copy(tmp_path / "db1" / "app.db", scratch_db)

        report = run_drill(load_inventory(inventory), run_id, junit=tmp_path / "drill.xml")

        [node] = report.nodes
        assert (node.verdict, node.runs_on, node.error) == ("passed", url, None), node.hint
        assert report.ok and report.leftovers == [] and report.teardown_errors == []
        attaches = fake.requests_to("POST", "/attachDisk") if isinstance(fake, FakeGcpCompute) else \
            fake.requests_to("PATCH", "/virtualMachines/scratch")
        assert len(attaches) == (1 if isinstance(fake, FakeGcpCompute) else 2)  # azure: attach, then detach
        assert restored_disks(fake) == [] and attached_disks(fake) == [], "the drill's disk is detached and deleted"


@contextlib.contextmanager
def two_volume_node(tmp_path: Path, cloud: str):
    """A node with two disks on ``cloud``: (inventory, remove(snapshot_id), fail(snapshot_id), restored())."""
    with clouds.two_volume_node(tmp_path, cloud) as node:
        if cloud == "aws":
            ec2 = node.ec2

            def fail(snapshot_id: str) -> None:
                node.moto.set_snapshot(snapshot_id, status="error")

            before = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}  # this process's other tests' too: its account on the one moto

            def restored() -> list[str]:
                return [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"] if v["VolumeId"] not in before]

            yield node.inventory, lambda snapshot_id: ec2.delete_snapshot(SnapshotId=snapshot_id), fail, restored
        elif cloud == "gcp":
            fake = node.fake
            yield (node.inventory, lambda name: fake.snapshots.pop(name),
                   lambda name: fake.snapshots[name].update(status="FAILED"),
                   lambda: [n for n in restored_disks(fake) if n != "db1-data2"])
        else:
            fake = node.fake

            def remove(snapshot_id: str) -> None:
                fake.resources = {k: r for k, r in fake.resources.items() if r["id"] != snapshot_id}

            def fail(snapshot_id: str) -> None:
                next(r for r in fake.resources.values() if r["id"] == snapshot_id)["properties"].update(
                    provisioningState="Failed")

            yield node.inventory, remove, fail, lambda: [n for n in restored_disks(fake) if n != "db1-data2"]


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_a_cloud_run_whose_snapshot_is_gone_or_failed_is_refused_before_any_volume_is_made(tmp_path, cloud):
    from snapctl.catalog import open_catalog
    from snapctl.errors import ProviderError

    with two_volume_node(tmp_path, cloud) as (inventory, remove, fail, restored):
        run_id = _backup(inventory)
        [_, second] = open_catalog(load_inventory(inventory)).load(run_id).nodes["db1"].snapshots

        fail(second.snapshot_id)
        with pytest.raises(ProviderError, match=r"node db1: .*snapshot .* of volume b (is in error state|is FAILED|"
                                                r"failed).*cannot be restored"):
            restore_run(load_inventory(inventory), run_id)
        assert restored() == [], "volume a was made before b's snapshot was found failed"

        remove(second.snapshot_id)
        with pytest.raises(ProviderError, match=r"node db1: .*snapshot .* of volume b no longer exists") as caught:
            restore_run(load_inventory(inventory), run_id)
        assert "snapctl verify" in caught.value.hint and "restored before this failure" not in caught.value.hint
        assert restored() == [], "volume a was made before b's snapshot was found gone"


def test_an_aws_snapshot_still_pending_is_refused_naming_it_with_what_to_do(tmp_path):
    from snapctl.catalog import open_catalog
    from snapctl.errors import ProviderError

    with two_volume_node(tmp_path, "aws") as (inventory, _, _, restored):
        run_id = _backup(inventory)
        [_, second] = open_catalog(load_inventory(inventory)).load(run_id).nodes["db1"].snapshots
        shared_moto_server().set_snapshot(second.snapshot_id, status="pending")

        with pytest.raises(ProviderError, match=rf"node db1: snapshot {second.snapshot_id} of volume b is pending"
                                                r".*not completed; it cannot be restored yet") as caught:
            restore_run(load_inventory(inventory), run_id)
        assert "snapctl verify" in caught.value.hint and "snapctl list" in caught.value.hint
        assert restored() == [], "volume a was made before b's snapshot was found pending"


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_two_volumes_given_one_device_are_refused_before_any_disk_is_made(tmp_path, cloud):
    """`restore.device` is for a node with one volume: with two, both asked for the same device;
    the first disk was made and attached, the second made, refused by the cloud, deleted."""
    from snapctl.errors import BadInputError

    with two_volume_node(tmp_path, cloud) as (inventory, _, _, restored):
        run_id = _backup(inventory)
        data = yaml.safe_load(inventory.read_text())
        device = "3" if cloud == "azure" else "db1-disk"
        data["nodes"][0]["restore"] = {"instance": "scratch", "device": device}
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))

        with pytest.raises(BadInputError, match=f"node db1 volume data and node db1 volume b would both be attached "
                                                f"to scratch at {device}") as caught:
            restore_run(load_inventory(inventory), run_id, attach=True)
        assert "restore.devices" in caught.value.hint
        assert restored() == []


@pytest.mark.parametrize("restore", [None, {"instance": "scratch"}, {"agent": "http://127.0.0.1:9"}],
                         ids=["neither", "no agent", "no instance"])
def test_a_cloud_node_that_cannot_be_drilled_fails_before_its_disk_is_made(tmp_path, restore):
    """A cloud node is drilled through a scratch agent on its restore instance: without both, the
    drill made the disk (minutes and money for a large one), then said it could not use it."""
    with gcp_node(tmp_path, restore) as (fake, inventory):
        run_id = _backup(inventory)

        report = run_drill(load_inventory(inventory), run_id, junit=tmp_path / "drill.xml")

        [node] = report.nodes
        assert node.verdict == "error" and node.volumes == {}
        assert node.error.startswith("a gcp volume is drilled through a scratch agent on the machine it is attached "
                                     "to: the node needs restore.agent and restore.instance"), node.error
        assert [r for r in fake.requests_to("POST") if r.path.endswith("/disks")] == [] and restored_disks(fake) == []


@pytest.mark.parametrize("cloud", [gcp_node, azure_node], ids=["gcp", "azure"])
def test_an_attach_to_an_instance_that_is_not_there_is_refused_before_any_disk_is_made(tmp_path, cloud):
    """db2's restore.instance is mistyped: db1's disk was made and attached, then db2's attach (gcp:
    after its disk was made too) failed, leaving db1's disk attached to the scratch machine."""
    from snapctl.errors import SnapctlError

    with cloud(tmp_path, {"instance": "scratch"}) as (fake, inventory):
        data = yaml.safe_load(inventory.read_text())
        db2 = yaml.safe_load(yaml.safe_dump(data["nodes"][0]))
        db2["name"] = "db2"
        db2["restore"] = {"instance": "scratch-typo"}
        db2["engine"]["path"] = str(tmp_path / "db2" / "app.db")
        (tmp_path / "db2").mkdir()
        with sqlite3.connect(tmp_path / "db2" / "app.db") as conn:
            conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        if cloud is gcp_node:
            fake.add_disk(GCP_ZONE, "db2-data")
            db2["volumes"] = [{"disk": "db2-data", "zone": GCP_ZONE, "name": "data"}]
        else:
            db2["volumes"] = [{"disk_id": fake.add_disk(AZURE_GROUP, "db2-data"), "name": "data"}]
        data["nodes"].append(db2)
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        run_id = _backup(inventory)

        with pytest.raises(SnapctlError, match=r"(gcp instance scratch-typo not found in zone europe-west1-b|"
                                               r"azure vm scratch-typo not found in resource group rg-restore)"):
            restore_run(load_inventory(inventory), run_id, attach=True)

        assert [d for d in restored_disks(fake) if d != "db2-data"] == [] and attached_disks(fake) == []


def test_azure_ids_that_name_the_resource_group_in_capitals_are_the_same_snapshots(tmp_path):
    """Azure's Compute provider often answers ids with the resource group in capitals: the ids the
    list gave were compared as strings with those the run recorded, so `verify` said every
    snapshot "no longer exists" and `gc` took every backup for an orphan (`--delete` deleted them)."""
    from snapctl.prune import gc
    from snapctl.verify import verify_run

    with azure_node(tmp_path, upper_group_ids=True) as (fake, inventory):
        run_id = _backup(inventory)
        inv = load_inventory(inventory)
        assert all("/resourceGroups/RG-RESTORE/" in r["id"] for r in fake.snapshots().values())

        result = verify_run(inv, run_id)
        assert result.ok, [s.problems for s in result.snapshots]
        assert gc(inv).orphans == []
        assert gc(inv, delete=True).deleted == [] and len(fake.snapshots()) == 1


@pytest.mark.parametrize("cloud", [gcp_node, azure_node], ids=["gcp", "azure"])
def test_a_snapshot_being_deleted_is_not_pending(tmp_path, cloud):
    """GCP's DELETING and Azure's Deleting are not "complete" yet, but neither will they ever be:
    verify said "still pending: verify again once the provider completes them", and restore went
    ahead and waited for it, making the other volumes' disks meanwhile."""
    from snapctl.catalog import open_catalog
    from snapctl.errors import ProviderError
    from snapctl.verify import verify_run

    with cloud(tmp_path) as (fake, inventory):
        run_id = _backup(inventory)
        [ref] = open_catalog(load_inventory(inventory)).load(run_id).nodes["db1"].snapshots
        if cloud is gcp_node:
            fake.snapshots[ref.snapshot_id]["status"] = "DELETING"
        else:
            fake.snapshots()[ref.extra["name"]]["properties"]["provisioningState"] = "Deleting"

        result = verify_run(load_inventory(inventory), run_id)
        [check] = result.snapshots
        assert not result.pending and check.state == "failed" and "being deleted" in check.problems[0]

        with pytest.raises(ProviderError, match="being deleted"):
            restore_run(load_inventory(inventory), run_id)
        assert restored_disks(fake) == []
