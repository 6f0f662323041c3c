"""What a volume restored from a snapshot carries: this cluster's tag, whatever the snapshot's
tags say now, so that a drill's teardown and the cleanup after a killed drill find and delete it;
and none of the tags that make a snapshot one of a run's, so that a snapshot made of the volume
(by the cloud's own tools or a script, copying its tags) is no run's to prune, nor gc's orphan or
snapshot of an unknown run. boto3 to moto; google-cloud-compute and azure-mgmt-compute to the
local fakes."""

from __future__ import annotations

import pytest
import yaml

from snapctl.catalog import open_catalog
from snapctl.config import load_inventory
from snapctl.providers import (
    TAG_CLUSTER,
    TAG_DRILL,
    TAG_NODE,
    TAG_RUN,
    TAG_VERSION,
    TAG_VOLUME,
    RestoreTarget,
    open_provider,
)
from snapctl.prune import gc, prune
from tests.restore.clouds import _backup, two_volume_node
from tests.restore.test_verify_by_id import retagger


def _volume(ec2, volume_id: str) -> dict | None:
    found = [v for v in ec2.describe_volumes()["Volumes"] if v["VolumeId"] == volume_id]
    return found[0] if found else None


def test_an_aws_drill_volume_whose_snapshot_lost_its_cluster_tag_is_found_and_deleted(tmp_path):
    with two_volume_node(tmp_path, "aws") as node:
        run_id = _backup(node.inventory)
        inventory = load_inventory(node.inventory)
        a, _ = open_catalog(inventory).load(run_id).nodes["db1"].snapshots
        retagger(node, "aws")(a.snapshot_id, TAG_CLUSTER, None)
        provider = open_provider(inventory)

        volume_id = provider.restore(a, RestoreTarget(zone=node.zone, tags={TAG_DRILL: "d1"}))

        tags = {t["Key"]: t["Value"] for t in _volume(node.ec2, volume_id)["Tags"]}
        assert tags[TAG_CLUSTER] == inventory.cluster
        assert provider.find_restored({TAG_DRILL: "d1"}) == [volume_id], "the killed-drill cleanup finds it"
        provider.delete_volume(volume_id)
        assert _volume(node.ec2, volume_id) is None, "the drill's teardown deletes it"


def _copy_of_restored(node, cloud: str, provider, volume_id: str) -> tuple[dict[str, str], str]:
    """The restored volume's tags, and the id of a snapshot of it made by another tool copying them:
    AWS's Data Lifecycle Manager (CopyTags) or the console's "copy tags from volume"; on gcp and
    azure a script or policy copying the disk's labels or tags onto its snapshot."""
    if cloud == "aws":
        tags = {t["Key"]: t["Value"] for t in _volume(node.ec2, volume_id)["Tags"]}
        return tags, node.ec2.create_snapshot(VolumeId=volume_id, TagSpecifications=[
            {"ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["SnapshotId"]
    if cloud == "gcp":
        from snapctl_gcp.labels import tags_of

        _, project, _, zone, _, name = volume_id.split("/")
        disks, types = provider.api.client("disks"), provider.api.types
        labels = dict(disks.get(project=project, zone=zone, disk=name).labels)
        disks.create_snapshot_unary(project=project, zone=zone, disk=name,
                                    snapshot_resource=types.Snapshot(name="copy-of-restored", labels=labels))
        return tags_of(None, labels), "copy-of-restored"
    from azure.mgmt.compute.models import CreationData, Snapshot

    group, name = volume_id.split("/")[4], volume_id.rsplit("/", 1)[-1]
    client = provider.api.client
    tags = dict(client.disks.get(group, name).tags)
    made = client.snapshots.begin_create_or_update(group, "copy-of-restored", Snapshot(
        location="westeurope", tags=tags, incremental=True,
        creation_data=CreationData(create_option="Copy", source_resource_id=volume_id))).result()
    return tags, made.id


def _exists(node, cloud: str, snapshot_id: str) -> bool:
    if cloud == "aws":
        found = node.ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": [snapshot_id]}])
        return bool(found["Snapshots"])
    if cloud == "gcp":
        return snapshot_id in node.fake.snapshots and node.fake.snapshots[snapshot_id]["status"] != "DELETING"
    return any(r["id"].lower() == snapshot_id.lower() for r in node.fake.snapshots().values())


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_a_snapshot_of_a_restored_volume_copying_its_tags_is_no_runs_to_prune_and_no_orphan(tmp_path, cloud):
    with two_volume_node(tmp_path, cloud) as node:
        old_run = _backup(node.inventory)
        inventory = load_inventory(node.inventory)
        a, _ = open_catalog(inventory).load(old_run).nodes["db1"].snapshots
        provider = open_provider(inventory)

        volume_id = provider.restore(a, RestoreTarget(zone=node.zone))

        tags, copy = _copy_of_restored(node, cloud, provider, volume_id)
        assert not {TAG_RUN, TAG_NODE, TAG_VOLUME, TAG_VERSION} & set(tags), tags
        assert tags["snapctl-restored-from"] == a.snapshot_id and tags[TAG_CLUSTER] == inventory.cluster
        if cloud == "aws":
            assert tags["snapctl-restored-run"] == old_run
        _backup(node.inventory)
        data = yaml.safe_load(node.inventory.read_text())
        data["retention"] = {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}
        node.inventory.write_text(yaml.safe_dump(data, sort_keys=False))

        pruned = prune(load_inventory(node.inventory))

        assert [v.run_id for v in pruned.deleted] == [old_run] and pruned.ok
        assert copy not in {s for v in pruned.deleted for s in v.snapshots}
        assert _exists(node, cloud, copy), "prune deleted it with the old run"
        # Not even as a snapshot of a run this catalog never heard of: --include-unknown-runs would delete it.
        collected = gc(load_inventory(node.inventory), delete=True, include_unknown_runs=True)
        assert (collected.orphans, collected.unknown_runs, collected.deleted) == ([], [], [])
        assert _exists(node, cloud, copy), "gc deleted it"
        provider.delete_volume(volume_id)
        if cloud == "aws":
            node.ec2.delete_snapshot(SnapshotId=copy)
