"""AzureProvider.delete_volume (a drill's teardown) with the real SDK against the local ARM."""

from __future__ import annotations

import pytest

from snapctl.errors import BadInputError, ProviderError
from snapctl.providers import TAG_CLUSTER, RestoreTarget, snapshot_tags
from tests.fakes.json_http import Fault

RG = "rg-snapctl"  # conftest's resource group


def restored_disk(provider, volumes, name: str = "restored-data") -> str:
    ref = provider.snapshot(volumes, snapshot_tags(provider.cluster, "run-1", "n1"))[0]
    return provider.restore(ref, RestoreTarget(name=name))


def test_a_restored_disk_is_deleted_after_its_long_running_operation_and_again_is_done(azure, provider, volumes):
    disk_id = restored_disk(provider, volumes)
    azure.op_polls = 3
    operations_before = len(azure.requests_to("GET", "/operations/"))

    provider.delete_volume(disk_id)

    assert "restored-data" not in azure.disks()
    assert len(azure.requests_to("GET", "/operations/")) - operations_before == 3
    provider.delete_volume(disk_id)  # GET says 404 now
    assert len(azure.requests_to("DELETE")) == 1


def test_a_disk_that_vanishes_between_get_and_delete_is_done(azure, provider, volumes):
    disk_id = restored_disk(provider, volumes)
    azure.inject(Fault(404, method="DELETE", message="The Resource was not found."))

    provider.delete_volume(disk_id)

    assert azure.requests_to("DELETE")[-1].status == 404


@pytest.mark.parametrize("foreign_tags", [{}, {TAG_CLUSTER: "someone-else"}])
def test_a_disk_not_tagged_for_this_cluster_is_refused_and_survives(azure, provider, foreign_tags):
    disk_id = azure.add_disk(RG, "precious", tags=foreign_tags)

    with pytest.raises(ProviderError, match="refusing to delete azure disk precious"):
        provider.delete_volume(disk_id)

    assert "precious" in azure.disks() and not azure.requests_to("DELETE")


def test_an_attached_disk_is_refused_naming_the_vm_and_the_command(azure, provider):
    disk_id = azure.add_disk(RG, "in-use", tags={TAG_CLUSTER: provider.cluster}, managed_by="scratch-vm")

    with pytest.raises(ProviderError, match="attached to vm scratch-vm") as raised:
        provider.delete_volume(disk_id)

    assert "az vm disk detach" in raised.value.hint
    assert "in-use" in azure.disks() and not azure.requests_to("DELETE")


def test_an_attached_answer_from_arm_is_a_provider_error(azure, provider, volumes):
    disk_id = restored_disk(provider, volumes)
    # Attached by someone after our GET: ARM refuses the DELETE itself.
    azure.inject(Fault(409, method="DELETE", message="Disk restored-data is attached to VM x.",
                       extra={"code": "OperationNotAllowed"}))

    with pytest.raises(ProviderError, match="OperationNotAllowed: Disk restored-data is attached") as raised:
        provider.delete_volume(disk_id)
    assert "restored-data" in azure.disks()
    # The snapshot-rate hint that goes with a refused snapshot PUT would send the operator astray.
    assert "incremental snapshots" not in raised.value.hint and "detach" in raised.value.hint


def test_denied_delete_names_the_permission(azure, provider, volumes):
    disk_id = restored_disk(provider, volumes)
    azure.deny("Microsoft.Compute/disks/delete", method="DELETE")

    with pytest.raises(ProviderError, match="lack Microsoft.Compute/disks/delete"):
        provider.delete_volume(disk_id)


def test_a_disk_of_another_subscription_or_not_a_disk_is_refused(azure, provider):
    other = "/subscriptions/00000000-0000-4000-8000-00000000ffff/resourceGroups/rg/providers/Microsoft.Compute/disks/d"
    with pytest.raises(ProviderError, match="another subscription"):
        provider.delete_volume(other)
    with pytest.raises(BadInputError, match="is not an azure managed disk id"):
        provider.delete_volume("/tmp/restored/data")
    assert not azure.requests_to("GET", "/disks/")


def test_a_disk_restore_attached_is_detached_from_that_vm_then_deleted(azure, provider, volumes):
    azure.add_vm(RG, "scratch")
    ref = provider.snapshot(volumes, snapshot_tags(provider.cluster, "run-1", "n1"))[0]
    disk_id = provider.restore(ref, RestoreTarget(instance="scratch", name="restored-data"))
    assert azure.data_disks(RG, "scratch") == {0: "restored-data"}

    provider.delete_volume(disk_id)

    assert azure.data_disks(RG, "scratch") == {} and "restored-data" not in azure.disks()


def test_a_disk_restore_attached_that_another_vm_holds_is_refused(azure, provider):
    ours = azure.resource_id(RG, "virtualmachines", "scratch")
    disk_id = azure.add_disk(RG, "moved", tags={TAG_CLUSTER: provider.cluster, "snapctl-attached-to": ours},
                             managed_by="prod-db")

    with pytest.raises(ProviderError, match="attached to vm prod-db; snapctl did not attach it there"):
        provider.delete_volume(disk_id)

    assert "moved" in azure.disks() and not azure.requests_to("PATCH") and not azure.requests_to("DELETE")
