"""What a volume restored from a snapshot carries: this cluster's tag, whatever the snapshot's
tags say now, so that a drill's teardown and the cleanup after a killed drill find and delete it;
and none of the tags that make a snapshot one of a run's, so that a snapshot made of the volume
(by the cloud's own tools, copying its tags) is no run's to prune nor gc's orphan. boto3 to moto."""

from __future__ import annotations

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


def test_a_snapshot_of_a_restored_aws_volume_copying_its_tags_is_no_runs_to_prune_and_no_orphan(tmp_path):
    with two_volume_node(tmp_path, "aws") as node:
        old_run = _backup(node.inventory)
        inventory = load_inventory(node.inventory)
        a, _ = open_catalog(inventory).load(old_run).nodes["db1"].snapshots
        provider = open_provider(inventory)

        volume_id = provider.restore(a, RestoreTarget(zone=node.zone))

        tags = {t["Key"]: t["Value"] for t in _volume(node.ec2, volume_id)["Tags"]}
        assert not {TAG_RUN, TAG_NODE, TAG_VOLUME, TAG_VERSION} & set(tags), tags
        assert (tags["snapctl-restored-from"], tags["snapctl-restored-run"]) == (a.snapshot_id, old_run)
        assert tags[TAG_CLUSTER] == inventory.cluster
        # What DLM's CopyTags or the console's "copy tags from volume" makes of it.
        copy = node.ec2.create_snapshot(VolumeId=volume_id, TagSpecifications=[
            {"ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["SnapshotId"]
        _backup(node.inventory)
        data = yaml.safe_load(node.inventory.read_text())
        data["retention"] = {"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0}
        node.inventory.write_text(yaml.safe_dump(data, sort_keys=False))

        pruned = prune(load_inventory(node.inventory))

        assert [v.run_id for v in pruned.deleted] == [old_run] and pruned.ok
        assert copy not in {s for v in pruned.deleted for s in v.snapshots}
        assert node.ec2.describe_snapshots(SnapshotIds=[copy])["Snapshots"], "prune deleted it with the old run"
        collected = gc(load_inventory(node.inventory), delete=True)
        assert collected.orphans == [] and collected.deleted == []
        assert node.ec2.describe_snapshots(SnapshotIds=[copy])["Snapshots"]
        provider.delete_volume(volume_id)
        node.ec2.delete_snapshot(SnapshotId=copy)
