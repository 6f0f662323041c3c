"""The azure provider in the provider contract suite: the real SDK against a local ARM."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from snapctl.providers import TAG_CLUSTER, RestoreTarget, SnapshotRef, load_provider_factory
from tests.contract.conftest import ProviderEnv
from tests.fakes.azure_compute import FakeAzureCompute, StaticTokenCredential

CLUSTER = "contract"
RESOURCE_GROUP = "rg-contract"


@contextlib.contextmanager
def make_env(tmp_path: Path) -> Iterator[ProviderEnv]:
    with FakeAzureCompute(op_polls=2, provisioning_polls=1, copy_polls=1) as fake:
        disks = {name: fake.add_disk(RESOURCE_GROUP, f"pg-{name}") for name in ("data", "wal")}
        factory = load_provider_factory("azure")
        settings = factory.settings_model.model_validate({
            "type": "azure", "subscription_id": fake.subscription, "resource_group": RESOURCE_GROUP,
            "location": "westeurope", "base_url": fake.url, "insecure_http_for_tests": True, "polling_interval_s": 0.01,
        })
        # The one step create_provider cannot do: hand over a credential (production uses DefaultAzureCredential).
        provider = factory(settings, cluster=CLUSTER, base_dir=tmp_path, credential=StaticTokenCredential())
        volumes = provider.validate_volumes(
            "n1", [{"disk_id": disk_id, "name": name} for name, disk_id in disks.items()], base_dir=tmp_path
        )

        def check_restored(ref: SnapshotRef, restored: str) -> None:
            disk = fake.disks()[restored.rsplit("/", 1)[-1]]
            assert disk["id"] == restored
            assert disk["properties"]["creationData"]["sourceResourceId"] == ref.snapshot_id
            assert disk["properties"]["provisioningState"] == "Succeeded"
            assert disk["tags"][TAG_CLUSTER] == CLUSTER

        def volume_exists(disk_id: str) -> bool:
            return disk_id.rsplit("/", 1)[-1] in fake.disks()

        def foreign_volume() -> str:
            return fake.add_disk(RESOURCE_GROUP, "made-by-hand", tags={"owner": "someone"})

        def untagged_snapshot() -> SnapshotRef:
            snapshot_id = fake.add_snapshot(RESOURCE_GROUP, "made-by-hand", tags={"owner": "someone"})
            return SnapshotRef(provider="azure", snapshot_id=snapshot_id, node="n1", volume="data")

        yield ProviderEnv(
            provider=provider,
            volumes=volumes,
            restore_target=lambda name: RestoreTarget(name=name),
            check_restored=check_restored,
            untagged_snapshot=untagged_snapshot,
            volume_exists=volume_exists,
            foreign_volume=foreign_volume,
            cluster=CLUSTER,
        )
