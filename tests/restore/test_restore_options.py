"""A node's `restore.options` through `snapctl restore` and `snapctl drill`, on every provider: a
key the provider does not take is refused (exit 2) before any volume of the run is made. Only aws
looked at them: on gcp a mistyped `disk_typ` restored to the default disk type without a word."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from snapctl.config import load_inventory
from snapctl.drill import run_drill
from snapctl.errors import BadInputError, ExitCode
from snapctl.restore import restore_run
from tests.restore import clouds
from tests.restore.clouds import _backup, restored_disks


def _set_restore(inventory: Path, restore: dict) -> None:
    data = yaml.safe_load(inventory.read_text())
    data["nodes"][0]["restore"] = restore
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))


@contextlib.contextmanager
def cloud_node(tmp_path: Path, cloud: str) -> Iterator[tuple[Path, Callable[[], list[str]]]]:
    """Node db1 with two volumes on ``cloud``: (inventory, the volumes restored since)."""
    with clouds.two_volume_node(tmp_path, cloud) as node:
        if cloud == "aws":
            ec2 = node.ec2
            before = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}  # the one moto's other tests' too
            yield node.inventory, lambda: [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]
                                           if v["VolumeId"] not in before]
        else:
            yield node.inventory, lambda: [n for n in restored_disks(node.fake) if n != "db1-data2"]


@pytest.mark.parametrize("cloud, typo, valid", [
    ("aws", "volume_typ", "devices, volume_type, iops, throughput, kms_key_id"),
    ("gcp", "disk_typ", "disk_type, size_gb"),
    ("azure", "skuu", "sku"),
])
def test_a_cloud_restore_option_mistyped_is_refused_before_any_volume_is_made(tmp_path, cloud, typo, valid):
    with cloud_node(tmp_path, cloud) as (inventory, restored):
        run_id = _backup(inventory)
        data = yaml.safe_load(inventory.read_text())
        _set_restore(inventory, {**data["nodes"][0].get("restore", {}), "options": {typo: "fast"}})

        with pytest.raises(BadInputError) as refused:
            restore_run(load_inventory(inventory), run_id)

        assert str(refused.value) == f"node db1: unknown restore option(s) for {cloud}: {typo} (hint: valid: {valid})"
        assert refused.value.exit_code == ExitCode.BAD_INPUT
        assert restored() == [], "volume a was made before b's options were looked at"


def test_a_gcp_drill_refuses_a_mistyped_option_before_any_disk_is_made(tmp_path):
    with cloud_node(tmp_path, "gcp") as (inventory, restored):
        run_id = _backup(inventory)
        _set_restore(inventory, {"instance": "scratch", "agent": "http://127.0.0.1:9",
                                 "options": {"disk_typ": "pd-ssd"}})

        with pytest.raises(BadInputError, match=r"^node db1: unknown restore option\(s\) for gcp: disk_typ "):
            run_drill(load_inventory(inventory), run_id, junit=tmp_path / "drill.xml")

        assert restored() == []


def test_the_local_provider_takes_no_restore_option_and_refuses_one_before_copying_any_node(sqlite_cluster, tmp_path):
    # An inventory moved from a cloud to the local provider, options left behind: nothing uses them.
    run_id = sqlite_cluster.backup()
    sqlite_cluster.edit(node_n2={"restore": {"options": {"volume_type": "gp3"}}})
    message = "node n2: unknown restore option(s) for local: volume_type"

    with pytest.raises(BadInputError) as restore_said:
        restore_run(sqlite_cluster.inventory, run_id, tmp_path / "restored")
    with pytest.raises(BadInputError) as drill_said:
        run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "drill.xml")

    for said in (restore_said.value, drill_said.value):
        assert said.message == message and said.exit_code == ExitCode.BAD_INPUT
        assert said.hint == "local takes no restore options: remove restore.options from the node"
    assert not (tmp_path / "restored").exists(), "n1 was restored before n2's options were looked at"
    assert not any((sqlite_cluster.directory / "scratch").iterdir())
