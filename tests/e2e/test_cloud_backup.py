"""`snapctl backup` then `snapctl restore` of the demo cluster with each cloud provider: the demo's
SQLite agents, their volumes fake cloud disks (moto for aws; local servers answering the GCP and
Azure REST wire formats), the real SDKs in the CLI process talking HTTP to them."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from snapctl.errors import ExitCode
from tests.e2e.conftest import THIRD_PARTY, Cluster, make_inventory
from tests.fakes.azure_compute import FakeAzureCompute
from tests.fakes.gcp_compute import FakeGcpCompute
from tests.moto_server import DEFAULT_REGION, dummy_aws_credentials, shared_moto_server
from tests.restore.conftest import scratch_agent

NODES = ("node1", "node2", "node3")


@contextlib.contextmanager
def cloud_cluster(directory: Path, provider: dict, volumes: dict[str, list[dict]],
                  restore: dict[str, dict] | None = None, policy: dict | None = None) -> Iterator[Cluster]:
    """The demo cluster's agents, with each node's volumes on the cloud."""
    from snapctl import demo
    from snapctl.config import load_inventory

    path, nodes = make_inventory(directory, provider=provider, policy=policy)
    data = yaml.safe_load(path.read_text())
    for node in data["nodes"]:
        node["volumes"] = volumes[node["name"]]
        if restore:
            node["restore"] = restore[node["name"]]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    sys.path.insert(0, str(THIRD_PARTY))
    try:
        demo.up(load_inventory(path))
        yield Cluster(directory, path, nodes)
    finally:
        demo.down(load_inventory(path))
        sys.path.remove(str(THIRD_PARTY))


def backed_up(cluster: Cluster) -> dict:
    backup = cluster.snapctl("backup", "-o", "json", check_json=True)
    assert backup.returncode == ExitCode.OK, backup.stderr
    manifest = backup.json["data"]
    assert manifest["status"] == "succeeded" and manifest["snapshots_completed"]
    assert list(manifest["nodes"]) == list(NODES)
    assert manifest["max_freeze_window_s"] > 0 and manifest["prepare_skew_s"] is not None
    for name, record in manifest["nodes"].items():
        [ref] = record["snapshots"]
        assert record["freeze_window_s"] > 0
        assert ref["state"] == "completed" and ref["volume"] == "data"
        assert {k: ref["tags"][k] for k in ("snapctl-cluster", "snapctl-run", "snapctl-node", "snapctl-volume")} == {
            "snapctl-cluster": "e2e", "snapctl-run": manifest["run_id"], "snapctl-node": name, "snapctl-volume": "data"}
    return manifest


def restored(cluster: Cluster, run_id: str, *flags: str) -> dict[str, str]:
    restore = cluster.snapctl("restore", run_id, *flags, "-o", "json", check_json=True)
    assert restore.returncode == ExitCode.OK, restore.stderr
    nodes = restore.json["data"]["nodes"]
    assert [node["node"] for node in nodes] == list(NODES)  # the callers check each node restored: all of them
    return {node["node"]: node["volumes"]["data"] for node in nodes}


def verified(cluster: Cluster, run_id: str) -> None:
    verify = cluster.snapctl("verify", run_id, "-o", "json", check_json=True)
    assert verify.returncode == ExitCode.OK, verify.stdout + verify.stderr
    assert {s["node"] for s in verify.json["data"]["snapshots"] if s["state"] == "ok"} == set(NODES)


def test_aws_backup_then_restore_makes_volumes_from_the_runs_snapshots(tmp_path):
    import boto3

    moto = shared_moto_server()
    moto.reset()
    with dummy_aws_credentials():
        ec2 = boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name=DEFAULT_REGION)
        zone, restore_zone = f"{DEFAULT_REGION}a", f"{DEFAULT_REGION}b"
        sources = {n: ec2.create_volume(Size=8, AvailabilityZone=zone)["VolumeId"] for n in NODES}
        instances = {n: ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1,
                                          Placement={"AvailabilityZone": restore_zone})["Instances"][0]["InstanceId"]
                     for n in NODES}
        provider = {"type": "aws", "region": DEFAULT_REGION, "endpoint_url": moto.endpoint_url, "poll_interval_s": 0.05}
        with cloud_cluster(tmp_path, provider, {n: [{"volume": sources[n], "name": "data"}] for n in NODES},
                           {n: {"instance": instances[n], "devices": {"data": "/dev/sdf"}} for n in NODES}) as cluster:
            manifest = backed_up(cluster)
            snapshot_ids = {n: r["snapshots"][0]["snapshot_id"] for n, r in manifest["nodes"].items()}
            for snapshot in ec2.describe_snapshots(SnapshotIds=list(snapshot_ids.values()))["Snapshots"]:
                tags = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
                assert snapshot["VolumeId"] == sources[tags["snapctl-node"]]
                assert tags["snapctl-run"] == manifest["run_id"]

            volumes = restored(cluster, manifest["run_id"], "--zone", restore_zone)
            for node, volume_id in volumes.items():
                [volume] = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
                assert volume["SnapshotId"] == snapshot_ids[node]
                assert volume["AvailabilityZone"] == restore_zone and not volume["Attachments"]

            attached = restored(cluster, manifest["run_id"], "--zone", restore_zone, "--attach")
            for node, volume_id in attached.items():
                [volume] = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
                assert volume["SnapshotId"] == snapshot_ids[node]
                assert [(a["InstanceId"], a["Device"]) for a in volume["Attachments"]] == [(instances[node], "/dev/sdf")]

            verified(cluster, manifest["run_id"])
            ec2.delete_snapshot(SnapshotId=snapshot_ids["node2"])
            gone = cluster.snapctl("verify", manifest["run_id"])
            assert gone.returncode == ExitCode.VERIFY_MISMATCH
            assert f"{snapshot_ids['node2']} no longer exists" in gone.stdout


def test_an_aws_drill_deletes_the_volumes_it_restored_and_attached_even_when_it_fails(tmp_path):
    """Each node's volume is restored and attached to its scratch instance; its scratch agent takes
    the check before restoring, then finds no database (moto attaches no disk), so no node verifies,
    and the teardown must still detach and delete every volume."""
    import boto3

    moto = shared_moto_server()
    moto.reset()
    with dummy_aws_credentials():
        ec2 = boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name=DEFAULT_REGION)
        zone, restore_zone = f"{DEFAULT_REGION}a", f"{DEFAULT_REGION}b"
        sources = {n: ec2.create_volume(Size=8, AvailabilityZone=zone)["VolumeId"] for n in NODES}
        instances = {n: ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1,
                                          Placement={"AvailabilityZone": restore_zone})["Instances"][0]["InstanceId"]
                     for n in NODES}
        provider = {"type": "aws", "region": DEFAULT_REGION, "endpoint_url": moto.endpoint_url, "poll_interval_s": 0.05}
        restore = {n: {"zone": restore_zone, "instance": instances[n], "devices": {"data": "/dev/sdf"}} for n in NODES}
        with cloud_cluster(tmp_path, provider, {n: [{"volume": sources[n], "name": "data"}] for n in NODES},
                           restore) as cluster, \
                scratch_agent(tmp_path, tmp_path / ".snapctl-demo" / "agent-token",
                              tmp_path / "never-attached" / "app.db") as scratch:
            manifest = backed_up(cluster)
            data = yaml.safe_load(cluster.inventory.read_text())
            for node in data["nodes"]:
                node["restore"]["agent"] = scratch
            cluster.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
            before = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}

            drill = cluster.snapctl("drill", manifest["run_id"], "--junit", str(tmp_path / "drill.xml"),
                                    "-o", "json", check_json=True)

            assert drill.returncode == ExitCode.RUN_FAILED, drill.stdout + drill.stderr
            report = drill.json["data"]
            restored = {node["node"]: node["volumes"].get("data") for node in report["nodes"]}
            assert list(restored) == list(NODES)
            assert all(restored.values()) and not set(restored.values()) & before, "each node had a volume restored"
            assert {node["verdict"] for node in report["nodes"]} == {"error"}
            assert report["leftovers"] == [] and report["teardown_errors"] == []
            assert {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]} == before, "no restored volume is left"
            for reservation in ec2.describe_instances(InstanceIds=list(instances.values()))["Reservations"]:
                for instance in reservation["Instances"]:
                    assert not {m["Ebs"]["VolumeId"] for m in instance.get("BlockDeviceMappings", [])} & set(
                        restored.values()), "nothing restored stays attached"


def test_gcp_backup_then_restore_makes_disks_from_the_runs_snapshots(tmp_path):
    zone, restore_zone = "europe-west1-b", "europe-west1-c"
    with FakeGcpCompute(op_running_polls=1, creating_polls=1, uploading_polls=1) as fake:
        for node in NODES:
            fake.add_disk(zone, f"{node}-data")
        provider = {"type": "gcp", "project": fake.project, "api_endpoint": fake.url, "anonymous": True,
                    "poll_interval_s": 0.01}
        volumes = {n: [{"disk": f"{n}-data", "zone": zone, "name": "data"}] for n in NODES}
        with cloud_cluster(tmp_path, provider, volumes) as cluster:
            manifest = backed_up(cluster)
            for name, record in manifest["nodes"].items():
                snapshot = fake.snapshots[record["snapshots"][0]["snapshot_id"]]
                assert snapshot["sourceDisk"].endswith(f"/zones/{zone}/disks/{name}-data")
                assert snapshot["status"] == "READY" and snapshot["labels"]["snapctl-node"] == name

            disks = restored(cluster, manifest["run_id"], "--zone", restore_zone)
            for name, disk_path in disks.items():
                disk = fake.disks[(restore_zone, disk_path.rsplit("/", 1)[-1])]
                snapshot_id = manifest["nodes"][name]["snapshots"][0]["snapshot_id"]
                assert disk["sourceSnapshot"].endswith(f"/global/snapshots/{snapshot_id}")
            verified(cluster, manifest["run_id"])


def _azure_provider(fake: FakeAzureCompute, group: str) -> dict:
    return {"type": "azure", "subscription_id": fake.subscription, "resource_group": group, "location": "westeurope",
            "base_url": fake.url, "insecure_http_for_tests": True, "dummy_credential_for_tests": True,
            "polling_interval_s": 0.01}


def test_azure_backup_then_restore_makes_disks_from_the_runs_snapshots(tmp_path):
    group = "rg-e2e"
    with FakeAzureCompute(op_polls=1, provisioning_polls=1, copy_polls=1) as fake:
        sources = {n: fake.add_disk(group, f"{n}-data") for n in NODES}
        provider = _azure_provider(fake, group)
        with cloud_cluster(tmp_path, provider, {n: [{"disk_id": sources[n], "name": "data"}] for n in NODES}) as cluster:
            manifest = backed_up(cluster)
            snapshots = fake.snapshots()
            for name, record in manifest["nodes"].items():
                snapshot = snapshots[record["snapshots"][0]["snapshot_id"].rsplit("/", 1)[-1]]
                assert snapshot["properties"]["creationData"]["sourceResourceId"] == sources[name]
                assert snapshot["tags"]["snapctl-run"] == manifest["run_id"]

            disks = restored(cluster, manifest["run_id"], "--zone", "2")
            made = fake.disks()
            for name, disk_id in disks.items():
                disk = made[disk_id.rsplit("/", 1)[-1]]
                assert disk["properties"]["creationData"]["sourceResourceId"] == \
                    manifest["nodes"][name]["snapshots"][0]["snapshot_id"]
                assert disk["zones"] == ["2"]
            verified(cluster, manifest["run_id"])


def test_the_azure_dummy_credential_is_refused_off_loopback():
    import pytest

    from snapctl.errors import BadInputError
    from snapctl.providers import create_provider

    settings = {"type": "azure", "subscription_id": "00000000-0000-4000-8000-000000000001", "resource_group": "rg",
                "location": "westeurope", "dummy_credential_for_tests": True}
    with pytest.raises(BadInputError, match="dummy_credential_for_tests is only allowed with a base_url on 127.0.0.1"):
        create_provider({**settings, "base_url": "https://management.azure.com"}, cluster="c", base_dir=Path("."))


# Each cloud's disks yield (provider settings, each node's volumes, the source disks of some
# snapshot ids, creates_sent_by): ``with creates_sent_by() as senders`` fills ``senders`` with the
# processes that sent each snapshot create request meanwhile (tests/fakes/callers.py).
Senders = list[list[tuple[int, ...]]]
Disks = tuple[dict, dict[str, list[dict]], Callable[[list[str]], set[str]],
              Callable[[], contextlib.AbstractContextManager[Senders]]]


@contextlib.contextmanager
def _aws_disks() -> Iterator[Disks]:
    import boto3

    moto = shared_moto_server()
    with dummy_aws_credentials():
        ec2 = boto3.client("ec2", endpoint_url=moto.endpoint_url, region_name=DEFAULT_REGION)
        sources = {n: ec2.create_volume(Size=8, AvailabilityZone=f"{DEFAULT_REGION}a")["VolumeId"] for n in NODES}
        provider = {"type": "aws", "region": DEFAULT_REGION, "endpoint_url": moto.endpoint_url, "poll_interval_s": 0.05}

        def sources_of(ids: list[str]) -> set[str]:
            return {s["VolumeId"] for s in ec2.describe_snapshots(SnapshotIds=ids)["Snapshots"]}

        yield (provider, {n: [{"volume": sources[n], "name": "data"}] for n in NODES}, sources_of,
               lambda: moto.senders("CreateSnapshot"))


@contextlib.contextmanager
def _fake_senders(fake: FakeGcpCompute | FakeAzureCompute, method: str, path_contains: str) -> Iterator[Senders]:
    seen: Senders = []
    with fake.lock:
        fake.senders.clear()
        fake.record_senders = True
    try:
        yield seen
    finally:
        fake.record_senders = False
        seen.extend(fake.senders_of(method, path_contains))


@contextlib.contextmanager
def _gcp_disks() -> Iterator[Disks]:
    zone = "europe-west1-b"
    with FakeGcpCompute(op_running_polls=1, creating_polls=1, uploading_polls=1) as fake:
        for node in NODES:
            fake.add_disk(zone, f"{node}-data")
        provider = {"type": "gcp", "project": fake.project, "api_endpoint": fake.url, "anonymous": True,
                    "poll_interval_s": 0.01}
        yield (provider, {n: [{"disk": f"{n}-data", "zone": zone, "name": "data"}] for n in NODES},
               lambda ids: {fake.snapshots[i]["sourceDisk"].rsplit("/", 1)[-1] for i in ids},
               lambda: _fake_senders(fake, "POST", "/createSnapshot"))


@contextlib.contextmanager
def _azure_disks() -> Iterator[Disks]:
    group = "rg-e2e"
    with FakeAzureCompute(op_polls=1, provisioning_polls=1, copy_polls=1) as fake:
        sources = {n: fake.add_disk(group, f"{n}-data") for n in NODES}
        provider = _azure_provider(fake, group)
        yield (provider, {n: [{"disk_id": sources[n], "name": "data"}] for n in NODES},
               lambda ids: {fake.snapshots()[i.rsplit("/", 1)[-1]]["properties"]["creationData"]["sourceResourceId"]
                            for i in ids},
               lambda: _fake_senders(fake, "PUT", "/Microsoft.Compute/snapshots/"))


@pytest.mark.parametrize("disks", [_aws_disks, _gcp_disks, _azure_disks], ids=["aws", "gcp", "azure"])
def test_each_cloud_sdk_makes_the_snapshots_from_the_provider_worker_process(tmp_path, disks):
    """The child builds its own SDK client from the inventory's settings (credentials from the
    environment it inherits), and what it makes comes back whole: one snapshot per source disk.
    The cloud saw each create arrive on a connection that only a child of the snapctl process this
    test started holds: the worker's, not snapctl's own (whose parent is this process)."""
    with disks() as (provider, volumes, sources_of, creates_sent_by), \
            cloud_cluster(tmp_path, provider, volumes, policy={"provider_process": "always"}) as cluster:
        with creates_sent_by() as senders:
            manifest = backed_up(cluster)
        ids = [record["snapshots"][0]["snapshot_id"] for record in manifest["nodes"].values()]
        assert len(sources_of(ids)) == len(NODES)
    assert len(senders) == len(NODES)
    # Each line of descent: the sender, its parent (snapctl), the parent's parent (this process).
    assert [[line[2] for line in holders] for holders in senders] == [[os.getpid()]] * len(NODES), senders


def test_an_aws_backup_makes_its_create_calls_with_aiobotocore_unless_provider_process_never(tmp_path):
    """With aiobotocore installed (snapctl-aws[async]), provider_process auto makes the create
    calls on snapctl's loop: moto sees aiobotocore's user agent on them. ``never`` still makes
    them with boto3, and the manifests' refs are alike."""
    moto = shared_moto_server()
    moto.reset()
    with _aws_disks() as (provider, volumes, sources_of, _), cloud_cluster(tmp_path, provider, volumes) as cluster:
        with moto.recording() as seen_dry:
            dry = cluster.snapctl("backup", "--dry-run")
        assert dry.returncode == ExitCode.OK, dry.stdout + dry.stderr
        with moto.recording() as seen_auto:
            auto = backed_up(cluster)
        cluster.write_inventory(policy={**yaml.safe_load(cluster.inventory.read_text())["policy"],
                                        "provider_process": "never"})
        with moto.recording() as seen_never:
            never = backed_up(cluster)
        ids = [record["snapshots"][0]["snapshot_id"] for record in auto["nodes"].values()]
        assert len(sources_of(ids)) == len(NODES)

    def agents(seen: list[tuple[str, str]], action: str) -> list[str]:
        return [agent.split(" ", 1)[0].split("/")[0] for name, agent in seen if name == action]

    assert agents(seen_auto, "CreateSnapshot") == ["aiobotocore"] * 3
    assert agents(seen_never, "CreateSnapshot") == ["Boto3"] * 3
    assert "aiobotocore" in agents(seen_auto, "DescribeSnapshots")  # warm_up_async asked once, before any hold
    assert "aiobotocore" in agents(seen_dry, "DescribeSnapshots") and not agents(seen_dry, "CreateSnapshot")

    def refs(manifest: dict) -> dict[str, list[dict]]:
        return {node: [{k: v for k, v in ref.items() if k not in ("snapshot_id", "created_at", "tags")}
                       | {"tags": {k: v for k, v in ref["tags"].items() if k != "snapctl-run"}}
                       for ref in record["snapshots"]] for node, record in manifest["nodes"].items()}

    assert refs(auto) == refs(never)


def test_a_warning_the_provider_worker_process_logs_is_in_the_json_documents_warnings_and_said_once(tmp_path):
    """A node's snapshot fails in the worker's child, and the plugin's cleanup of it fails too
    (no permission to delete): the warning it logs there once reached stderr only, missing from
    the document a script reads."""
    zone = "europe-west1-b"
    with FakeGcpCompute(op_running_polls=1, creating_polls=1, uploading_polls=1) as fake:
        for node in NODES:
            fake.add_disk(zone, f"{node}-data")
        provider = {"type": "gcp", "project": fake.project, "api_endpoint": fake.url, "anonymous": True,
                    "poll_interval_s": 0.01}
        volumes = {n: [{"disk": f"{n}-data", "zone": zone, "name": "data"}] for n in NODES}
        with cloud_cluster(tmp_path, provider, volumes, policy={"provider_process": "always"}) as cluster:
            fake.fail_next_snapshot("the disk is being resized")
            fake.deny("compute.snapshots.delete", method="DELETE")  # the child's cleanup: the first delete
            backup = cluster.snapctl("backup", "-o", "json", check_json=True)
    assert backup.returncode == ExitCode.RUN_FAILED, backup.stderr
    assert "the disk is being resized" in backup.json["error"]
    [warning] = [w for w in backup.json["warnings"] if "after a failed snapshot call" in w]
    assert warning.startswith("node node") and "could not delete snapshot" in warning
    assert "compute.snapshots.delete" in warning
    assert backup.stderr.count(warning) == 1, backup.stderr
    assert f"warning: {warning}\n" in backup.stderr
