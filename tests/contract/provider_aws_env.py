"""The aws provider in the provider contract suite: boto3 against this process's moto server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from snapctl.providers import TAG_CLUSTER, RestoreTarget, SnapshotRef, create_provider
from tests.contract.conftest import ProviderEnv
from tests.moto_server import DEFAULT_REGION, dummy_aws_credentials, shared_moto_server

CLUSTER = "contract"
ZONE = f"{DEFAULT_REGION}a"


@contextlib.contextmanager
def make_env(tmp_path: Path) -> Iterator[ProviderEnv]:
    import boto3

    moto = shared_moto_server()
    moto.reset()
    with dummy_aws_credentials():
        ec2 = boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name=DEFAULT_REGION)
        sources = {name: ec2.create_volume(Size=8, AvailabilityZone=ZONE)["VolumeId"] for name in ("data", "wal")}
        provider = create_provider(
            {"type": "aws", "region": DEFAULT_REGION, "endpoint_url": moto.endpoint_url, "poll_interval_s": 0.05},
            cluster=CLUSTER, base_dir=tmp_path,
        )
        volumes = provider.validate_volumes(
            "n1", [{"volume": volume_id, "name": name} for name, volume_id in sources.items()], base_dir=tmp_path
        )

        def check_restored(ref: SnapshotRef, restored: str) -> None:
            [volume] = ec2.describe_volumes(VolumeIds=[restored])["Volumes"]
            assert volume["SnapshotId"] == ref.snapshot_id
            assert volume["AvailabilityZone"] == ZONE
            assert {t["Key"]: t["Value"] for t in volume["Tags"]}[TAG_CLUSTER] == CLUSTER

        def volume_exists(volume_id: str) -> bool:
            found = ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume_id]}])["Volumes"]
            return any(v["State"] not in ("deleting", "deleted") for v in found)

        def foreign_volume() -> str:
            return ec2.create_volume(Size=1, AvailabilityZone=ZONE,
                                     TagSpecifications=[{"ResourceType": "volume",
                                                         "Tags": [{"Key": TAG_CLUSTER, "Value": "other"}]}])["VolumeId"]

        def untagged_snapshot() -> SnapshotRef:
            answer = ec2.create_snapshot(VolumeId=sources["data"])
            return SnapshotRef(provider="aws", snapshot_id=answer["SnapshotId"], node="n1", volume="data")

        yield ProviderEnv(
            provider=provider,
            volumes=volumes,
            restore_target=lambda name: RestoreTarget(zone=ZONE, name=name),
            check_restored=check_restored,
            untagged_snapshot=untagged_snapshot,
            volume_exists=volume_exists,
            foreign_volume=foreign_volume,
            cluster=CLUSTER,
        )
