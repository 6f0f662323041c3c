"""`snapctl verify` looks each snapshot up by the id its run's manifest records. An operator or a
cloud policy may change or remove a snapshot's tags: verify then warns, and does not call the
snapshot gone; gc, which goes by tags, still takes no snapshot a manifest names for an orphan.
Real SDKs: boto3 to moto's server, google-cloud-compute and azure-mgmt-compute to local fakes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapctl.catalog import open_catalog
from snapctl.config import load_inventory
from snapctl.prune import gc
from snapctl.verify import verify_run
from tests.restore.clouds import _backup, two_volume_node

Retag = Callable[[str, str, str | None], None]  # (snapshot id, tag, new value or None: removed)


@contextlib.contextmanager
def two_volumes(tmp_path: Path, cloud: str) -> Iterator[tuple[Path, Retag]]:
    """A node with two volumes on ``cloud``, and what changes one snapshot's tag there, as an
    operator or a tagging policy would."""
    with two_volume_node(tmp_path, cloud) as node:
        yield node.inventory, retagger(node, cloud)


def retagger(node, cloud: str) -> Retag:
    if cloud == "aws":
        ec2 = node.ec2

        def retag(snapshot_id: str, key: str, value: str | None) -> None:
            if value is None:
                [old] = [t["Value"] for t in ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["Tags"]
                         if t["Key"] == key]
                ec2.delete_tags(Resources=[snapshot_id], Tags=[{"Key": key, "Value": old}])
            else:
                ec2.create_tags(Resources=[snapshot_id], Tags=[{"Key": key, "Value": value}])
    elif cloud == "gcp":
        from snapctl_gcp.labels import encode_key, encode_label

        def retag(snapshot_id: str, key: str, value: str | None) -> None:
            labels = node.fake.snapshots[snapshot_id]["labels"]  # the description keeps the tags given at creation
            if value is None:
                del labels[encode_key(key)]
            else:
                labels[encode_key(key)] = encode_label(value)
    else:
        def retag(snapshot_id: str, key: str, value: str | None) -> None:
            [snap] = [r for r in node.fake.snapshots().values() if r["id"].lower() == snapshot_id.lower()]
            if value is None:
                del snap["tags"][key]
            else:
                snap["tags"][key] = value
    return retag


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
