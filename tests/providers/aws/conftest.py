"""boto3 against moto's server over HTTP: the run's one server, this process's account reset per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.moto_server import DEFAULT_REGION, MotoServer, dummy_aws_credentials, shared_moto_server

ZONE = f"{DEFAULT_REGION}a"
CLUSTER = "prod-db"


@pytest.fixture(autouse=True)
def no_way_out_of_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider built without endpoint_url, or a regression that drops it, would otherwise ask the
    instance metadata service (169.254.169.254) for credentials and send to AWS itself: both are
    pointed at nothing instead, so such a test fails here rather than reaching off the machine."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # botocore's default when a client has none


@pytest.fixture(scope="session")
def moto_server() -> MotoServer:
    return shared_moto_server()


@pytest.fixture
def moto(moto_server: MotoServer) -> Iterator[MotoServer]:
    """The run's moto server, this process's account emptied for this test, with dummy credentials in the env."""
    moto_server.reset()
    with dummy_aws_credentials():
        yield moto_server


@pytest.fixture
def ec2(moto: MotoServer) -> Any:
    """A plain boto3 client for setting the scene; the provider makes its own."""
    import boto3

    return boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name=DEFAULT_REGION)


@pytest.fixture
def make_provider(moto: MotoServer, tmp_path: Path) -> Callable[..., Any]:
    from snapctl.providers import create_provider

    def make(cluster: str = CLUSTER, **settings: Any) -> Any:
        raw = {
            "type": "aws", "region": DEFAULT_REGION, "endpoint_url": moto.endpoint_url,
            "poll_interval_s": 0.01, "per_volume_retry_wait_s": 0.01, **settings,
        }
        return create_provider(raw, cluster=cluster, base_dir=tmp_path)

    return make


@pytest.fixture
def provider(make_provider: Callable[..., Any]) -> Any:
    return make_provider()


@dataclass
class Machine:
    instance: str
    boot_volume: str
    data_volumes: list[str]  # attached at /dev/sdf, /dev/sdg


@pytest.fixture
def machine(ec2: Any) -> Machine:
    """An instance with its boot volume and two attached data volumes."""
    instance = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1,
                                 Placement={"AvailabilityZone": ZONE})["Instances"][0]
    boot = instance["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    data = []
    for device in ("/dev/sdf", "/dev/sdg"):
        volume = ec2.create_volume(Size=8, AvailabilityZone=ZONE)["VolumeId"]
        ec2.attach_volume(VolumeId=volume, InstanceId=instance["InstanceId"], Device=device)
        data.append(volume)
    return Machine(instance["InstanceId"], boot, data)


@pytest.fixture
def volume(ec2: Any) -> str:
    return ec2.create_volume(Size=8, AvailabilityZone=ZONE)["VolumeId"]
