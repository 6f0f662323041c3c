"""GcpProvider.delete_volume (a drill's teardown) with the real SDK against the local Compute API."""

from __future__ import annotations

import time

import pytest
from snapctl_gcp.labels import encode_label

from snapctl.errors import BadInputError, ProviderError
from snapctl.providers import RestoreTarget, snapshot_tags
from tests.fakes.json_http import Fault

RESTORE_ZONE = "europe-west1-c"


def restored_disk(provider, volumes, name: str = "restored-data") -> str:
    ref = provider.snapshot(volumes, snapshot_tags(provider.cluster, "run-1", "n1"))[0]
    provider.wait([ref], time.monotonic() + 30)
    return provider.restore(ref, RestoreTarget(zone=RESTORE_ZONE, name=name))


def test_a_restored_disk_is_deleted_after_its_zone_operation_and_again_is_done(gcp, provider, volumes):
    disk = restored_disk(provider, volumes)
    gcp.op_running_polls = 3

    provider.delete_volume(disk)

    assert (RESTORE_ZONE, "restored-data") not in gcp.disks
    assert gcp.requests_to("DELETE", f"/zones/{RESTORE_ZONE}/disks/restored-data")
    assert len(gcp.requests_to("POST", f"/zones/{RESTORE_ZONE}/operations/operation-")) >= 1
    provider.delete_volume(disk)  # GET says 404 now
    assert len(gcp.requests_to("DELETE")) == 1


def test_a_disk_that_vanishes_between_get_and_delete_is_done(gcp, provider, volumes):
    disk = restored_disk(provider, volumes)
    gcp.inject(Fault(404, method="DELETE", message="The resource was not found"))

    provider.delete_volume(disk)

    assert gcp.requests_to("DELETE")[-1].status == 404


def test_the_sdks_full_url_form_of_a_disk_is_accepted(gcp, provider, volumes):
    disk = restored_disk(provider, volumes)
    provider.delete_volume(f"https://www.googleapis.com/compute/v1/{disk}")
    assert (RESTORE_ZONE, "restored-data") not in gcp.disks


@pytest.mark.parametrize("labels", [None, {"snapctl-cluster": "someone-else"}])
def test_a_disk_not_labelled_for_this_cluster_is_refused_and_survives(gcp, provider, labels):
    gcp.add_disk(RESTORE_ZONE, "precious", labels=labels)

    with pytest.raises(ProviderError, match="refusing to delete gcp disk precious"):
        provider.delete_volume(f"projects/{gcp.project}/zones/{RESTORE_ZONE}/disks/precious")

    assert (RESTORE_ZONE, "precious") in gcp.disks and not gcp.requests_to("DELETE")


def test_an_attached_disk_is_refused_naming_the_instance_and_the_command(gcp, provider):
    gcp.add_disk(RESTORE_ZONE, "in-use", labels={"snapctl-cluster": encode_label(provider.cluster)}, users=["vm-1"])

    with pytest.raises(ProviderError, match="attached to vm-1") as raised:
        provider.delete_volume(f"projects/{gcp.project}/zones/{RESTORE_ZONE}/disks/in-use")

    assert "gcloud compute instances detach-disk" in raised.value.hint
    assert (RESTORE_ZONE, "in-use") in gcp.disks


def test_an_in_use_answer_from_the_api_is_a_provider_error(gcp, provider, volumes):
    disk = restored_disk(provider, volumes)
    # Attached by someone between our GET and the DELETE: the GET did not show it, the DELETE is refused.
    gcp.disks[(RESTORE_ZONE, "restored-data")]["users"] = [f"projects/{gcp.project}/zones/{RESTORE_ZONE}/instances/x"]
    original = gcp._get_disk

    def get_without_users(zone, disk, query, body):
        status, reply, headers = original(zone=zone, disk=disk, query=query, body=body)
        return status, {k: v for k, v in reply.items() if k != "users"}, headers

    gcp._get_disk = get_without_users
    with pytest.raises(ProviderError, match="already being used"):
        provider.delete_volume(disk)
    assert (RESTORE_ZONE, "restored-data") in gcp.disks


def test_denied_delete_names_the_permission(gcp, provider, volumes):
    disk = restored_disk(provider, volumes)
    gcp.deny("compute.disks.delete", method="DELETE")

    with pytest.raises(ProviderError, match="lack compute.disks.delete"):
        provider.delete_volume(disk)


def test_a_disk_of_another_project_or_not_a_disk_is_refused(gcp, provider):
    with pytest.raises(ProviderError, match="another project"):
        provider.delete_volume(f"projects/elsewhere/zones/{RESTORE_ZONE}/disks/d")
    with pytest.raises(BadInputError, match="is not a gcp disk"):
        provider.delete_volume("/tmp/restored/data")
    assert not gcp.requests_to("GET", "/disks/")


def test_a_disk_restore_attached_is_detached_from_that_instance_then_deleted(gcp, provider, volumes):
    gcp.add_instance(RESTORE_ZONE, "scratch")
    ref = provider.snapshot(volumes, snapshot_tags(provider.cluster, "run-1", "n1"))[0]
    disk = provider.restore(ref, RestoreTarget(zone=RESTORE_ZONE, instance="scratch", name="restored-data"))
    assert gcp.attached(RESTORE_ZONE, "scratch") == {"restored-data": "restored-data"}

    provider.delete_volume(disk)

    assert gcp.attached(RESTORE_ZONE, "scratch") == {} and (RESTORE_ZONE, "restored-data") not in gcp.disks
    assert [r.query["deviceName"] for r in gcp.requests_to("POST", "/detachDisk")] == ["restored-data"]


def test_a_disk_restore_attached_that_someone_also_attached_elsewhere_is_refused(gcp, provider):
    labels = {"snapctl-cluster": encode_label(provider.cluster), "snapctl-attached-to": "scratch"}
    gcp.add_disk(RESTORE_ZONE, "moved", labels=labels, users=["prod-db"])

    with pytest.raises(ProviderError, match="attached to prod-db; snapctl did not attach it there"):
        provider.delete_volume(f"projects/{gcp.project}/zones/{RESTORE_ZONE}/disks/moved")

    assert (RESTORE_ZONE, "moved") in gcp.disks and not gcp.requests_to("POST", "/detachDisk")
