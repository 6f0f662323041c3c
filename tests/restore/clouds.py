"""The cloud nodes the restore tests back up and restore: an embedded SQLite node whose volumes
are cloud disks on the local emulators (moto for aws; local servers answering the GCP and Azure
wire formats), reached through the real SDKs."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from snapctl.config import load_inventory
from tests.fakes.azure_compute import FakeAzureCompute
from tests.fakes.gcp_compute import FakeGcpCompute
from tests.moto_server import DEFAULT_REGION, dummy_aws_credentials, shared_moto_server

GCP_ZONE = "europe-west1-b"
AZURE_GROUP = "rg-restore"


def _inventory(directory: Path, provider: dict, volume: dict, restore: dict | None = None,
               auth: dict | None = None) -> Path:
    data = directory / "db1"
    data.mkdir(exist_ok=True)
    with sqlite3.connect(data / "app.db") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY)")
    node = {"name": "db1", "agent": "embedded", "engine": {"type": "sqlite", "path": str(data / "app.db")},
            "volumes": [volume]}
    if restore:
        node["restore"] = restore
    path = directory / "inventory.yaml"
    inventory = {"cluster": "cloud-restore", "provider": provider, "catalog": {"path": "catalog"}, "nodes": [node]}
    if auth:
        inventory["auth"] = auth
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def _backup(path: Path) -> str:
    from snapctl.orchestrator import BackupOptions, backup

    manifest = asyncio.run(backup(load_inventory(path), BackupOptions(prune=False)))
    assert manifest.status == "succeeded", manifest.error
    return manifest.run_id


@contextlib.contextmanager
def gcp_node(directory: Path, restore: dict | None = None, auth: dict | None = None
             ) -> Iterator[tuple[FakeGcpCompute, Path]]:
    with FakeGcpCompute(op_running_polls=1, creating_polls=1, uploading_polls=1) as fake:
        fake.add_disk(GCP_ZONE, "db1-data")
        fake.add_instance(GCP_ZONE, "scratch")
        provider = {"type": "gcp", "project": fake.project, "api_endpoint": fake.url, "anonymous": True,
                    "poll_interval_s": 0.01}
        yield fake, _inventory(directory, provider, {"disk": "db1-data", "zone": GCP_ZONE, "name": "data"}, restore,
                               auth)


@contextlib.contextmanager
def azure_node(directory: Path, restore: dict | None = None, auth: dict | None = None, *, upper_group_ids: bool = False
               ) -> Iterator[tuple[FakeAzureCompute, Path]]:
    with FakeAzureCompute(op_polls=1, provisioning_polls=1, upper_group_ids=upper_group_ids) as fake:
        disk = fake.add_disk(AZURE_GROUP, "db1-data")
        fake.add_vm(AZURE_GROUP, "scratch")
        provider = {"type": "azure", "subscription_id": fake.subscription, "resource_group": AZURE_GROUP,
                    "location": "westeurope", "base_url": fake.url, "insecure_http_for_tests": True,
                    "dummy_credential_for_tests": True, "polling_interval_s": 0.01}
        yield fake, _inventory(directory, provider, {"disk_id": disk, "name": "data"}, restore, auth)


def attached_disks(fake) -> list[str]:
    """The names of the data disks attached to the scratch machine."""
    if isinstance(fake, FakeGcpCompute):
        return sorted(fake.attached(GCP_ZONE, "scratch").values())
    return sorted(fake.data_disks(AZURE_GROUP, "scratch").values())


def restored_disks(fake) -> list[str]:
    names = [name for (_, name) in fake.disks] if isinstance(fake, FakeGcpCompute) else list(fake.disks())
    return sorted(n for n in names if n not in ("db1-data", "scratch-boot"))


def _add_volume(inventory: Path, volume: dict) -> None:
    data = yaml.safe_load(inventory.read_text())
    data["nodes"][0]["volumes"].append(volume)
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))


@dataclass
class TwoVolumes:
    """A node ``db1`` with two volumes, ``a`` (or ``data``) and ``b``, on one cloud."""

    inventory: Path
    ec2: Any = None  # aws: a boto3 client of the moto server
    moto: Any = None  # aws: the moto server
    fake: FakeGcpCompute | FakeAzureCompute | None = None  # gcp, azure
    zone: str | None = None  # aws: where the source volumes are


@contextlib.contextmanager
def two_volume_node(tmp_path: Path, cloud: str) -> Iterator[TwoVolumes]:
    if cloud == "aws":
        import boto3

        moto = shared_moto_server()
        with dummy_aws_credentials():
            ec2 = boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name=DEFAULT_REGION)
            zone = f"{DEFAULT_REGION}a"
            sources = [ec2.create_volume(Size=8, AvailabilityZone=zone)["VolumeId"] for _ in range(2)]
            provider = {"type": "aws", "region": DEFAULT_REGION, "endpoint_url": moto.endpoint_url,
                        "poll_interval_s": 0.05}
            inventory = _inventory(tmp_path, provider, {"volume": sources[0], "name": "a"}, {"zone": zone})
            _add_volume(inventory, {"volume": sources[1], "name": "b"})
            # One moto for every test of this process: another's snapshots of the cluster would be gc's orphans.
            data = yaml.safe_load(inventory.read_text())
            inventory.write_text(yaml.safe_dump({**data, "cluster": f"cloud-restore-{uuid.uuid4().hex[:8]}"}, sort_keys=False))
            yield TwoVolumes(inventory, ec2=ec2, moto=moto, zone=zone)
    elif cloud == "gcp":
        with gcp_node(tmp_path) as (fake, inventory):
            fake.add_disk(GCP_ZONE, "db1-data2")
            _add_volume(inventory, {"disk": "db1-data2", "zone": GCP_ZONE, "name": "b"})
            yield TwoVolumes(inventory, fake=fake)
    else:
        with azure_node(tmp_path) as (fake, inventory):
            disk = fake.add_disk(AZURE_GROUP, "db1-data2")
            _add_volume(inventory, {"disk_id": disk, "name": "b"})
            yield TwoVolumes(inventory, fake=fake)
