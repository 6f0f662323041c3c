"""What a volume restored from a snapshot carries: this cluster's tag, whatever the snapshot's
tags say now, so that a drill's teardown and the cleanup after a killed drill find and delete it;
and none of the tags that make a snapshot one of a run's, so that a snapshot made of the volume
(by the cloud's own tools, copying its tags) is no run's to prune nor gc's orphan. boto3 to moto."""

from __future__ import annotations

from snapctl.catalog import open_catalog
from snapctl.config import load_inventory
from snapctl.providers import TAG_CLUSTER, TAG_DRILL, RestoreTarget, open_provider
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
