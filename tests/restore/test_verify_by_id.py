"""`snapctl verify` looks each snapshot up by the id its run's manifest records. An operator or a
cloud policy may change or remove a snapshot's tags: verify then warns, and does not call the
snapshot gone; gc, which goes by tags, still takes no snapshot a manifest names for an orphan.
Real SDKs: boto3 to moto's server, google-cloud-compute and azure-mgmt-compute to local fakes."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from snapctl.catalog import open_catalog
from snapctl.config import load_inventory
from snapctl.prune import gc
from snapctl.verify import verify_run
from tests.moto_server import DEFAULT_REGION, dummy_aws_credentials, shared_moto_server
from tests.restore.test_cloud_restore import (
    AZURE_GROUP,
    GCP_ZONE,
    _add_volume,
    _backup,
    _inventory,
    azure_node,
    gcp_node,
)

Retag = Callable[[str, str, str | None], None]  # (snapshot id, tag, new value or None: removed)


@contextlib.contextmanager
def two_volumes(tmp_path: Path, cloud: str) -> Iterator[tuple[Path, Retag]]:
    """A node with two volumes on ``cloud``, and what changes one snapshot's tag there, as an
    operator or a tagging policy would."""
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
            inventory.write_text(yaml.safe_dump({**data, "cluster": f"verify-{uuid.uuid4().hex[:8]}"}, sort_keys=False))

            def retag(snapshot_id: str, key: str, value: str | None) -> None:
                if value is None:
                    [old] = [t["Value"] for t in ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["Tags"]
                             if t["Key"] == key]
                    ec2.delete_tags(Resources=[snapshot_id], Tags=[{"Key": key, "Value": old}])
                else:
                    ec2.create_tags(Resources=[snapshot_id], Tags=[{"Key": key, "Value": value}])

            yield inventory, retag
    elif cloud == "gcp":
        from snapctl_gcp.labels import encode_key, encode_label

        with gcp_node(tmp_path) as (fake, inventory):
            fake.add_disk(GCP_ZONE, "db1-data2")
            _add_volume(inventory, {"disk": "db1-data2", "zone": GCP_ZONE, "name": "b"})

            def retag(snapshot_id: str, key: str, value: str | None) -> None:
                labels = fake.snapshots[snapshot_id]["labels"]  # the description keeps the tags given at creation
                if value is None:
                    del labels[encode_key(key)]
                else:
                    labels[encode_key(key)] = encode_label(value)

            yield inventory, retag
    else:
        with azure_node(tmp_path) as (fake, inventory):
            disk = fake.add_disk(AZURE_GROUP, "db1-data2")
            _add_volume(inventory, {"disk_id": disk, "name": "b"})

            def retag(snapshot_id: str, key: str, value: str | None) -> None:
                [snap] = [r for r in fake.snapshots().values() if r["id"].lower() == snapshot_id.lower()]
                if value is None:
                    del snap["tags"][key]
                else:
                    snap["tags"][key] = value

            yield inventory, retag


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_a_snapshot_whose_tags_were_changed_is_found_by_its_id_with_a_warning(tmp_path, cloud):
    with two_volumes(tmp_path, cloud) as (inventory, retag):
        run_id = _backup(inventory)
        a, b = open_catalog(load_inventory(inventory)).load(run_id).nodes["db1"].snapshots
        retag(a.snapshot_id, "snapctl-run", None)
        retag(b.snapshot_id, "snapctl-run", "20200101T000000Z-000000")

        result = verify_run(load_inventory(inventory), run_id)

        assert result.ok, [s.problems for s in result.snapshots]
        checks = {s.snapshot_id: s for s in result.snapshots}
        assert [s.state for s in checks.values()] == ["ok", "ok"]
        [gone] = checks[a.snapshot_id].warnings
        assert gone.startswith(f"snapshot {a.snapshot_id}: its tags were changed since the run (snapctl-run is gone)")
        cluster = load_inventory(inventory).cluster
        assert f"put them back (snapctl-cluster={cluster}, snapctl-run={run_id}, " in gone
        [changed] = checks[b.snapshot_id].warnings
        assert f"(snapctl-run is '20200101T000000Z-000000', not '{run_id}')" in changed

        assert gc(load_inventory(inventory)).orphans == [], "a snapshot its manifest names is no orphan, whatever its tags"


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_a_snapshot_without_its_cluster_tag_is_no_orphan_and_is_not_deleted_by_gc(tmp_path, cloud):
    with two_volumes(tmp_path, cloud) as (inventory, retag):
        run_id = _backup(inventory)
        a, _ = open_catalog(load_inventory(inventory)).load(run_id).nodes["db1"].snapshots
        retag(a.snapshot_id, "snapctl-cluster", None)

        deleted = gc(load_inventory(inventory), delete=True)

        assert deleted.orphans == [] and deleted.deleted == []
        [check, _] = verify_run(load_inventory(inventory), run_id).snapshots
        assert check.state == "ok" and "snapctl-cluster is gone" in check.warnings[0]


def test_the_cli_shows_the_warning_and_json_has_it(sqlite_cluster):
    import subprocess
    import sys

    run_id = sqlite_cluster.backup()
    [snap] = (sqlite_cluster.directory / "store" / "restore-test" / "n1").glob(f"{run_id}-*")
    meta = json.loads((snap / "snapshot.json").read_text())
    meta["tags"].pop("snapctl-run")  # a local snapshot's tags live in its snapshot.json
    (snap / "snapshot.json").write_text(json.dumps(meta))
    cli = [sys.executable, "-m", "snapctl.cli", "verify", run_id, "-i", str(sqlite_cluster.inventory_path)]

    text = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
    document = subprocess.run([*cli, "-o", "json"], capture_output=True, text=True, timeout=60, check=False)

    assert text.returncode == document.returncode == 0, text.stdout + text.stderr
    assert "n1/data: warning: snapshot " in text.stdout and "snapctl-run is gone" in text.stdout
    [n1] = [s for s in json.loads(document.stdout)["data"]["snapshots"] if s["node"] == "n1"]
    assert n1["state"] == "ok" and "snapctl-run is gone" in n1["warnings"][0]
