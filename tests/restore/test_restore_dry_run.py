"""`snapctl restore --dry-run`: every check the restore makes before restoring anything, the plan
it would carry out, and nothing restored (no record in the catalog, no directory, no cloud volume).
A mistyped restore option or a target in the way was found only by `restore` or `drill` itself.
The local provider with SQLite nodes and a real scratch agent process, the CLI as a subprocess;
the clouds through their real SDKs against moto and the GCP/Azure fakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from snapctl.config import load_inventory
from snapctl.errors import ExitCode, SnapctlError
from snapctl.restore import restore_run
from snapctl.restore_plan import plan_restore
from tests.moto_server import DEFAULT_REGION, dummy_aws_credentials
from tests.restore import clouds
from tests.restore.clouds import _backup, gcp_node, restored_disks
from tests.restore.conftest import scratch_agent
from tests.restore.test_restore_options import cloud_node
from tests.retention.s3_helpers import BUCKET, s3_bucket, s3_client

TOKEN = "dry-run-agent-token"


def snapctl(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapctl.cli", *args, "-i", str(cluster.inventory_path)],
                          cwd=cluster.directory, capture_output=True, text=True, timeout=180, check=False)


def _written(cluster, *places: Path) -> list[str]:
    """What a restore leaves: its record in the catalog, and any of ``places``."""
    records = cluster.directory / "catalog" / "restore-test" / "restores"
    return sorted([str(p) for p in records.glob("*")] + [str(p) for p in places if p.exists()])


def _error(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith(("snapctl: error:", "  hint:"))]


def test_a_dry_run_plans_every_volume_and_engine_writes_nothing_and_the_restore_then_does_it(
        sqlite_cluster, tmp_path):
    token_file = tmp_path / "agent-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    run_id = sqlite_cluster.backup()
    mounted, n2_place = tmp_path / "mnt", tmp_path / "n2-restored"
    with scratch_agent(tmp_path, token_file, tmp_path / "image" / "app.db", restore_root=mounted) as url:
        sqlite_cluster.edit(auth={"token_file": str(token_file)},
                            node_n1={"restore": {"path": str(mounted / "n1"), "agent": url,
                                                 "agent_path": str(mounted / "n1" / "data")}},
                            node_n2={"restore": {"path": str(n2_place)}})

        text = snapctl(sqlite_cluster, "restore", run_id, "--dry-run")
        document = snapctl(sqlite_cluster, "restore", "latest", "--dry-run", "-o", "json")

        assert text.returncode == ExitCode.OK, text.stdout + text.stderr
        assert text.stdout.splitlines() == [
            (f"dry run: would restore run {run_id} of cluster restore-test with provider local into each node's "
             "restore target"),
            "  n1:",
            f"    data -> {run_id}-n1-data -> {mounted / 'n1' / 'data'}",
            f"    engine: scratch agent {url}",
            "  n2:",
            f"    data -> {run_id}-n2-data -> {n2_place / 'data'}",
            "    engine: sqlite, restore-prepared in-process",
            ("restore: would go ahead; nothing restored, no record written (the restore would put its record in the "
             "catalog's restore-test/restores/)")]
        assert document.returncode == ExitCode.OK, document.stdout + document.stderr
        plan = json.loads(document.stdout)
        assert (plan["schema_version"], plan["kind"]) == (1, "restore_plan")
        assert plan["data"] == {
            "cluster": "restore-test", "provider": "local", "run_id": run_id, "target": "each node's restore target",
            "record": "restore-test/restores", "record_checked": True, "warnings": [], "dry_run": True,
            "nodes": [
                {"node": "n1", "prepared": url, "engine": None,
                 "note": "restore-prepared by the scratch agent; `snapctl drill` verifies it",
                 "volumes": [{"volume": "data", "snapshot_id": f"{run_id}-n1-data",
                              "path": str(mounted / "n1" / "data"), "zone": None, "instance": None, "device": None}]},
                {"node": "n2", "prepared": "in-process", "engine": "sqlite", "note": None,
                 "volumes": [{"volume": "data", "snapshot_id": f"{run_id}-n2-data", "path": str(n2_place / "data"),
                              "zone": None, "instance": None, "device": None}]}]}
        assert _written(sqlite_cluster, mounted, n2_place) == []

        # What it planned is what the restore does.
        result = restore_run(sqlite_cluster.inventory, run_id)
    assert {n.node: (n.volumes, n.prepared) for n in result.nodes} == {
        n["node"]: ({v["volume"]: v["path"] for v in n["volumes"]}, n["prepared"]) for n in plan["data"]["nodes"]}


def _bad_option(cluster, tmp_path):
    cluster.edit(node_n2={"restore": {"options": {"volume_type": "gp3"}}})
    return ["--to", str(tmp_path / "restored")]


def _target_in_the_way(cluster, tmp_path):
    (tmp_path / "restored" / "n2" / "data").mkdir(parents=True)
    (tmp_path / "restored" / "n2" / "data" / "x").write_bytes(b"")
    return ["--to", str(tmp_path / "restored")]


def _nowhere(cluster, tmp_path):
    return []


@pytest.mark.parametrize("setup, said", [
    (_bad_option, "snapctl: error: node n2: unknown restore option(s) for local: volume_type"),
    (_target_in_the_way, "snapctl: error: node n2: restore target {tmp}/restored/n2/data is not an empty directory"),
    (_nowhere, "snapctl: error: node n1: nowhere to restore to"),
], ids=["bad option", "target in the way", "nowhere"])
def test_a_dry_run_refuses_what_the_restore_refuses_with_its_error_and_exit_code(sqlite_cluster, tmp_path, setup,
                                                                                 said):
    run_id = sqlite_cluster.backup()
    flags = setup(sqlite_cluster, tmp_path)
    before = sorted(tmp_path.rglob("*"))

    dry = snapctl(sqlite_cluster, "restore", run_id, *flags, "--dry-run")

    assert _written(sqlite_cluster) == [] and sorted(tmp_path.rglob("*")) == before
    real = snapctl(sqlite_cluster, "restore", run_id, *flags)
    assert dry.returncode == real.returncode == ExitCode.BAD_INPUT, dry.stderr + real.stderr
    assert _error(dry)[0].startswith(said.format(tmp=tmp_path)), dry.stderr
    assert _error(dry) == _error(real) and len(_error(dry)) == 2, dry.stderr + real.stderr  # message and hint
    assert dry.stdout == ""
    json_dry = snapctl(sqlite_cluster, "restore", run_id, *flags, "--dry-run", "-o", "json")
    assert json_dry.returncode == ExitCode.BAD_INPUT
    assert json.loads(json_dry.stdout)["error"] == _error(dry)[0].removeprefix("snapctl: error: ")


def test_a_catalog_the_restore_could_not_put_its_record_in_refuses_the_dry_run_unless_no_record(sqlite_cluster,
                                                                                               tmp_path):
    run_id = sqlite_cluster.backup()
    # A file where the records' directory goes: no write there succeeds, not even as root.
    (sqlite_cluster.directory / "catalog" / "restore-test" / "restores").write_text("")
    flags = ["--to", str(tmp_path / "restored"), "-o", "json"]

    dry = snapctl(sqlite_cluster, "restore", run_id, *flags, "--dry-run")
    real = snapctl(sqlite_cluster, "restore", run_id, *flags)

    refused, real_refused = json.loads(dry.stdout), json.loads(real.stdout)
    assert dry.returncode == real.returncode != 0 and refused["exit_code"] == real_refused["exit_code"]
    for document in (refused, real_refused):
        assert document["error"].startswith(f"cannot put the restore on record, which keeps a prune from deleting "
                                            f"run {run_id} meanwhile: ")
        assert document["hint"].endswith("pass --no-record if no prune can run meanwhile (a read-only copy of the "
                                         "catalog, in a disaster)")
    assert not (tmp_path / "restored").exists()
    unrecorded = snapctl(sqlite_cluster, "restore", run_id, *flags, "--dry-run", "--no-record")
    assert unrecorded.returncode == ExitCode.OK, unrecorded.stdout + unrecorded.stderr
    assert json.loads(unrecorded.stdout)["data"]["record"] is None and not (tmp_path / "restored").exists()
    assert json.loads(unrecorded.stdout)["data"]["record_checked"] is False


def test_with_an_s3_catalog_the_dry_run_says_it_could_not_check_the_record(sqlite_cluster, tmp_path):
    # S3 answers whether it takes a PUT only by one: the last line read as if the record were
    # checked, and a read-only credential got "would go ahead", then the restore's refusal.
    with s3_bucket() as server:
        sqlite_cluster.edit(catalog={"url": f"s3://{BUCKET}/shared", "endpoint_url": server.endpoint_url,
                                     "region": DEFAULT_REGION})
        run_id = sqlite_cluster.backup()
        flags = ["--to", str(tmp_path / "restored"), "--dry-run"]

        text = snapctl(sqlite_cluster, "restore", run_id, *flags)
        document = snapctl(sqlite_cluster, "restore", run_id, *flags, "-o", "json")

        assert text.returncode == document.returncode == ExitCode.OK, text.stderr + document.stderr
        assert text.stdout.splitlines()[-1] == (
            "restore: would go ahead; nothing restored, no record written (the restore would put its record in the "
            "catalog's restore-test/restores/; not checked: an S3 catalog answers only a real write)")
        plan = json.loads(document.stdout)["data"]
        assert (plan["record"], plan["record_checked"]) == ("restore-test/restores", False)
        keys = s3_client(server).list_objects_v2(Bucket=BUCKET, Prefix="shared/").get("Contents", [])
        assert [k["Key"] for k in keys if "/restores/" in k["Key"]] == [] and not (tmp_path / "restored").exists()


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_a_cloud_dry_run_plans_each_volume_in_its_zone_and_makes_nothing(tmp_path, cloud):
    with cloud_node(tmp_path, cloud) as (inventory, restored):
        run_id = _backup(inventory)

        plan = plan_restore(load_inventory(inventory), run_id)

        [node] = plan.nodes
        zone = {"aws": f"{clouds.DEFAULT_REGION}a", "gcp": None, "azure": None}[cloud]  # gcp, azure: their default
        assert [(v.volume, v.path, v.zone, v.instance) for v in node.volumes] == [("a" if cloud == "aws" else "data",
                                                                                   None, zone, None),
                                                                                  ("b", None, zone, None)]
        assert all(v.snapshot_id for v in node.volumes) and plan.provider == cloud and plan.record is not None
        assert node.prepared is None and node.note.startswith("restored as cloud volumes: attach them")
        assert restored() == []
        assert list((inventory.parent / "catalog" / plan.cluster).glob("restores*")) == []

        # A mistyped option: the dry run says what the restore says, and neither makes a volume.
        data = yaml.safe_load(inventory.read_text())
        data["nodes"][0]["restore"] = {**data["nodes"][0].get("restore", {}), "options": {"typo": 1}}
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        said = []
        for call in (plan_restore, restore_run):
            with pytest.raises(SnapctlError) as refused:
                call(load_inventory(inventory), run_id)
            said.append((refused.value.message, refused.value.hint, refused.value.exit_code))
        assert said[0] == said[1] and said[0][0] == f"node db1: unknown restore option(s) for {cloud}: typo"
        assert restored() == []


def test_a_gcp_dry_run_with_attach_names_the_instance_and_the_scratch_agent_and_calls_nothing_that_makes(tmp_path):
    token_file = tmp_path / "agent-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with scratch_agent(tmp_path, token_file, tmp_path / "image" / "app.db") as url, \
            gcp_node(tmp_path, {"instance": "scratch", "device": "restored-data", "agent": url},
                     {"token_file": str(token_file)}) as (fake, inventory):
        run_id = _backup(inventory)
        posts = len(fake.requests_to("POST"))

        plan = plan_restore(load_inventory(inventory), run_id, zone=clouds.GCP_ZONE, attach=True)

        [node] = plan.nodes
        [volume] = node.volumes
        assert (volume.zone, volume.instance, volume.device) == (clouds.GCP_ZONE, "scratch", "restored-data")
        assert node.prepared == url and plan.target == f"zone {clouds.GCP_ZONE}"
        assert len(fake.requests_to("POST")) == posts and restored_disks(fake) == []
        text = subprocess.run([sys.executable, "-m", "snapctl.cli", "restore", run_id, "--attach", "--dry-run",
                               "-i", str(inventory)], capture_output=True, text=True, timeout=120, check=False)
        assert text.returncode == ExitCode.OK, text.stdout + text.stderr
        assert text.stdout.splitlines()[2:4] == [
            (f"    data -> {volume.snapshot_id} -> new volume in the provider's default place, attached to scratch "
             "at restored-data"),
            f"    engine: scratch agent {url}"]
        assert len(fake.requests_to("POST")) == posts and restored_disks(fake) == []

        data = yaml.safe_load(inventory.read_text())
        data["nodes"][0]["restore"]["instance"] = "scratch-typo"
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        with pytest.raises(SnapctlError) as refused:  # found by the dry run, as by the restore
            plan_restore(load_inventory(inventory), run_id, attach=True)
        assert refused.value.message.startswith("node db1: gcp instance scratch-typo not found in zone")
        assert restored_disks(fake) == []


def _instance(ec2, case: str) -> tuple[str, str]:
    """(restore.instance, what the refusal says of it) for ``case``; the node's volumes are made in us-east-1a."""
    if case == "missing":
        return "i-0deadbeef00000000", "not found in region us-east-1: aws DescribeInstances: InvalidInstanceID.NotFound"
    zone = f"{clouds.DEFAULT_REGION}{'b' if case == 'other zone' else 'a'}"
    instance = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1,
                                 Placement={"AvailabilityZone": zone})["Instances"][0]["InstanceId"]
    if case == "terminated":
        ec2.terminate_instances(InstanceIds=[instance])
        return instance, "is terminated: volume a could not be attached to it"
    return instance, "is in zone us-east-1b, and volume a would be made in us-east-1a: EBS attaches a volume only"


@pytest.mark.parametrize("case", ["missing", "terminated", "other zone"])
def test_an_aws_attach_to_an_instance_it_cannot_reach_is_refused_before_any_volume_is_made(tmp_path, case):
    # aws read no instance before restoring (gcp and azure did, and docs/restore.md said aws did):
    # the restore made the volume, waited for it, failed at AttachVolume and deleted it again.
    with clouds.two_volume_node(tmp_path, "aws") as node, dummy_aws_credentials():
        run_id = _backup(node.inventory)
        instance, said = _instance(node.ec2, case)
        data = yaml.safe_load(node.inventory.read_text())
        data["nodes"][0]["restore"] = {"zone": node.zone, "instance": instance,
                                       "devices": {"a": "/dev/sdf", "b": "/dev/sdg"}}
        node.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        before = {v["VolumeId"] for v in node.ec2.describe_volumes()["Volumes"]}

        refusals = []
        for call in (plan_restore, restore_run):
            with pytest.raises(SnapctlError) as refused:
                call(load_inventory(node.inventory), run_id, attach=True)
            refusals.append((refused.value.message, refused.value.hint, refused.value.exit_code))

        assert refusals[0] == refusals[1], "the dry run refuses as the restore does"
        message, hint, exit_code = refusals[0]
        assert message.startswith(f"node db1: aws instance {instance} (restore.instance) {said}"), message
        assert exit_code == ExitCode.BAD_INPUT
        assert ("restore.zone (or --zone) to us-east-1b" if case == "other zone" else "set restore.instance") in hint
        assert {v["VolumeId"] for v in node.ec2.describe_volumes()["Volumes"]} == before, "no volume was made"


def test_aws_devices_given_in_restore_options_are_planned_and_checked_for_a_clash(tmp_path):
    # aws takes a volume's device from restore.options.devices too; the plan showed none, and two
    # volumes given one device passed the clash check (EC2 refuses the second only once it is made).
    with clouds.two_volume_node(tmp_path, "aws") as node, dummy_aws_credentials():
        run_id = _backup(node.inventory)
        instance = node.ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1,
                                          Placement={"AvailabilityZone": node.zone})["Instances"][0]["InstanceId"]
        data = yaml.safe_load(node.inventory.read_text())

        def options_devices(devices: dict) -> None:
            data["nodes"][0]["restore"] = {"zone": node.zone, "instance": instance, "options": {"devices": devices}}
            node.inventory.write_text(yaml.safe_dump(data, sort_keys=False))

        options_devices({"a": "/dev/sdf", "b": "/dev/sdg"})
        [planned] = plan_restore(load_inventory(node.inventory), run_id, attach=True).nodes
        assert [(v.volume, v.instance, v.device) for v in planned.volumes] == [("a", instance, "/dev/sdf"),
                                                                              ("b", instance, "/dev/sdg")]
        assert planned.note.startswith(f"attached to {instance} (a at /dev/sdf, b at /dev/sdg): ")

        options_devices({"a": "/dev/sdf", "b": "/dev/sdf"})
        before = {v["VolumeId"] for v in node.ec2.describe_volumes()["Volumes"]}
        said = []
        for call in (plan_restore, restore_run):
            with pytest.raises(SnapctlError) as refused:
                call(load_inventory(node.inventory), run_id, attach=True)
            said.append((refused.value.message, refused.value.exit_code))
        assert said == [(f"node db1 volume a and node db1 volume b would both be attached to {instance} at /dev/sdf",
                         ExitCode.BAD_INPUT)] * 2
        assert {v["VolumeId"] for v in node.ec2.describe_volumes()["Volumes"]} == before, "no volume was made"
