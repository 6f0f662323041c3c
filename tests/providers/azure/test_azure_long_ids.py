"""Tag values within ARM's rules whatever the ids: a restored disk names its snapshot and its VM in
tags, and ARM refuses a value over 256 characters (the local ARM too), while an id reaches 266 (a
VM's) or 276 (a snapshot's) with a resource group of 90 characters."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapctl.errors import BadInputError, ProviderError
from snapctl.providers import TAG_CLUSTER, TAG_DRILL, RestoreTarget, snapshot_tags

LONG_RG = "rg-" + "g" * 87  # 90 characters, the most ARM allows
VM_NAME = "scratch-" + "v" * 56  # 64 characters, a Linux VM's most


LONG_NODE = "node-" + "n" * 30


@pytest.fixture
def long_provider(make_provider):
    # Long cluster, node and volume names make the longest snapshot name, 79 characters.
    return make_provider(cluster="prod-" + "c" * 30, resource_group=LONG_RG)


@pytest.fixture
def long_volumes(long_provider, azure):
    raw = [{"disk_id": disk_id, "name": disk_id.rsplit("/", 1)[-1] + "-" + "x" * 20} for disk_id in azure.disk_ids]
    return long_provider.validate_volumes(LONG_NODE, raw, base_dir=Path("."))


@pytest.mark.parametrize("vm_group", [LONG_RG, "rg-" + "h" * 87], ids=["providers-group", "another-group"])
def test_a_disk_restored_from_a_long_id_onto_a_long_named_vm_is_made_found_and_torn_down(
        azure, long_provider, long_volumes, vm_group):
    vm_id = azure.add_vm(vm_group, VM_NAME)
    ref = long_provider.snapshot(long_volumes, snapshot_tags(long_provider.cluster, "run-1", LONG_NODE))[0]
    assert len(ref.snapshot_id) == 275 and len(vm_id) == 266

    disk_id = long_provider.restore(ref, RestoreTarget(instance=vm_id, name="r-data", tags={TAG_DRILL: "d-1"}))

    disk = azure.disks()["r-data"]
    assert disk["managedBy"] == vm_id
    assert disk["tags"] == {TAG_DRILL: "d-1", TAG_CLUSTER: long_provider.cluster,
                            "snapctl-restored-from": f"{LONG_RG}/{ref.extra['name']}",
                            "snapctl-attached-to": f"{vm_group}/{VM_NAME}"}
    # A drill's teardown: what it finds by its tags, detached from the VM restore put it on, deleted.
    assert long_provider.find_restored({TAG_DRILL: "d-1"}) == [disk_id]
    long_provider.delete_volume(disk_id)
    assert "r-data" not in azure.disks() and azure.data_disks(vm_group, VM_NAME) == {}


def test_ids_that_fit_are_still_written_whole(azure, provider, volumes):
    vm_id = azure.add_vm("rg-snapctl", "scratch")
    ref = provider.snapshot(volumes, snapshot_tags(provider.cluster, "run-1", "n1"))[0]

    provider.restore(ref, RestoreTarget(instance="scratch", name="r-data"))

    tags = azure.disks()["r-data"]["tags"]
    assert (tags["snapctl-restored-from"], tags["snapctl-attached-to"]) == (ref.snapshot_id, vm_id)


def test_the_most_tags_the_inventory_check_lets_through_are_what_arm_takes(provider, volumes):
    # The inventory's tags and the provider's together are held to 45: with snapctl's five, ARM's 50.
    inventory_tags = {f"t{i}": "v" for i in range(45)}
    provider.settings.check_inventory_tags(inventory_tags)
    [ref, _] = provider.snapshot(volumes, snapshot_tags(provider.cluster, "run-1", "n1", extra=inventory_tags))
    assert len(ref.tags) == 50

    one_more = {**inventory_tags, "t45": "v"}
    with pytest.raises(BadInputError, match="make 46 tags on every snapshot, more than the 45 Azure has room for"):
        provider.settings.check_inventory_tags(one_more)
    with pytest.raises(ProviderError, match="InvalidTagCount"):  # what a backup met inside its hold
        provider.snapshot(volumes, snapshot_tags(provider.cluster, "run-2", "n1", extra=one_more))
