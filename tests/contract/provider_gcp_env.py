"""The gcp provider in the provider contract suite: the real SDK against a local Compute API."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from snapctl.providers import TAG_CLUSTER, RestoreTarget, SnapshotRef, create_provider
from tests.contract.conftest import ProviderEnv
from tests.fakes.gcp_compute import FakeGcpCompute

CLUSTER = "contract"
ZONE = "europe-west1-b"


@contextlib.contextmanager
def make_env(tmp_path: Path) -> Iterator[ProviderEnv]:
    with FakeGcpCompute(op_running_polls=2, creating_polls=1, uploading_polls=2) as fake:
        for disk in ("pg-data", "pg-wal"):
            fake.add_disk(ZONE, disk)
        provider = create_provider(
            {"type": "gcp", "project": fake.project, "api_endpoint": fake.url, "anonymous": True,
             "poll_interval_s": 0.01},
            cluster=CLUSTER, base_dir=tmp_path,
        )
        volumes = provider.validate_volumes(
            "n1", [{"disk": "pg-data", "zone": ZONE, "name": "data"}, {"disk": "pg-wal", "zone": ZONE, "name": "wal"}],
            base_dir=tmp_path,
        )

        def check_restored(ref: SnapshotRef, restored: str) -> None:
            zone, name = restored.split("/")[-3], restored.split("/")[-1]
            disk = fake.disks[(zone, name)]
            assert disk["sourceSnapshot"].endswith(f"/global/snapshots/{ref.snapshot_id}")
            assert disk["status"] == "READY" and zone == ZONE
            assert disk["labels"][TAG_CLUSTER] == CLUSTER

        def volume_exists(disk_path: str) -> bool:
            zone, name = disk_path.split("/")[-3], disk_path.split("/")[-1]
            return (zone, name) in fake.disks

        def foreign_volume() -> str:
            fake.add_disk(ZONE, "made-by-hand", labels={"owner": "someone"})
            return f"projects/{fake.project}/zones/{ZONE}/disks/made-by-hand"

        def untagged_snapshot() -> SnapshotRef:
            fake.add_snapshot("made-by-hand", labels={"owner": "someone"})
            return SnapshotRef(provider="gcp", snapshot_id="made-by-hand", node="n1", volume="data")

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
