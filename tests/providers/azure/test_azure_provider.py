"""AzureProvider with the real azure-mgmt-compute SDK against the local ARM over HTTP."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from snapctl.errors import BadInputError, ProviderError, ProviderThrottled, ProviderUnavailable, ProviderUnreachable
from snapctl.providers import TAG_CLUSTER, TAG_RUN, TAG_VOLUME, RestoreTarget, SnapshotRef, snapshot_tags
from tests.fakes.azure_compute import StaticTokenCredential
from tests.fakes.json_http import Fault
from tests.fakes.serving import cut_short, serving

RUN = "20250101T000000Z.Run-7"
RG = "rg-snapctl"  # conftest's resource group


def tags(cluster: str = "Prod.EU", run: str = RUN, node: str = "n1") -> dict[str, str]:
    return snapshot_tags(cluster, run, node, extra={"Team": "Storage"})


def deadline(seconds: float = 30) -> float:
    return time.monotonic() + seconds


def test_snapshot_puts_tagged_incremental_copies_and_returns_once_accepted(azure, provider, volumes):
    refs = provider.snapshot(volumes, tags())

    assert [r.volume for r in refs] == ["data", "wal"]
    puts = azure.requests_to("PUT", "/snapshots/")
    assert len(puts) == 2
    for put, ref, disk_id in zip(puts, refs, azure.disk_ids):
        props = put.body["properties"]
        assert props["incremental"] is True
        assert props["creationData"] == {"createOption": "Copy", "sourceResourceId": disk_id}
        assert put.body["tags"] == {**tags(), TAG_VOLUME: ref.volume}
        assert put.body["location"] == "westeurope"
        assert ref.state == "pending" and ref.snapshot_id.endswith(put.path.rsplit("/", 1)[-1])
        assert "/operations/" in ref.extra["operation"]
    # Nothing waited for the operations: the point in time was fixed by the accepted PUT.
    assert not azure.requests_to("GET", "/operations/")
    assert {s["properties"]["provisioningState"] for s in azure.snapshots().values()} == {"Creating"}


def test_wait_follows_provisioning_and_completion_percent(azure, provider, volumes):
    azure.copy_polls = 2  # a background copy, as for Premium SSD v2 and Ultra disks
    refs = provider.snapshot(volumes, tags())
    seen: list[SnapshotRef] = []

    done = provider.wait(refs, deadline(), seen.append)

    assert [r.state for r in done] == ["completed", "completed"]
    assert [r.progress for r in seen if r.volume == "data"] == [0.0, 50.0, 100.0]
    assert all(r.extra["provisioning_state"] == "Succeeded" for r in done)


def test_a_snapshot_that_fails_raises_with_the_clouds_message(azure, provider, volumes):
    azure.fail_next_snapshot("The source disk pgdata is being detached: snapshot could not be taken.")
    refs = provider.snapshot(volumes, tags())

    with pytest.raises(ProviderError, match="InternalDiskManagementError: The source disk pgdata is being detached"):
        provider.wait(refs, deadline())


def test_throttled_put_is_retried_after_retry_after(azure, provider, volumes):
    azure.throttle(1, retry_after=1, method="PUT")

    refs = provider.snapshot(volumes, tags())

    attempts = azure.requests_to("PUT", "/snapshots/")
    assert [a.status for a in attempts] == [429, 202, 202]
    assert attempts[0].path == attempts[1].path  # the same name again: a retried PUT cannot duplicate
    assert len(refs) == 2 and len(azure.snapshots()) == 2


def test_throttling_beyond_max_retries_is_a_provider_throttled(azure, make_provider, volumes):
    provider = make_provider(max_retries=1)
    azure.throttle(5, retry_after=1, method="PUT")

    with pytest.raises(ProviderThrottled) as err:
        provider.snapshot(volumes, tags())
    assert err.value.retry_after == 1
    assert len(azure.requests_to("PUT")) == 2


def test_a_read_throttled_past_the_retries_is_not_blamed_on_the_create_rate(azure, make_provider, volumes):
    provider = make_provider(max_retries=1)
    refs = provider.snapshot(volumes, tags())
    azure.throttle(5, retry_after=0.01, method="GET")

    with pytest.raises(ProviderThrottled) as err:
        provider.wait(refs, deadline())
    assert "create_rate" not in err.value.hint and "max_retries" in err.value.hint


def test_a_read_whose_connection_drops_past_the_retries_is_unreachable_and_a_refusal_is_not(azure, make_provider,
                                                                                            volumes):
    provider = make_provider(max_retries=1)
    refs = provider.snapshot(volumes, tags())
    azure.drop(2, method="GET", path_contains="/snapshots/")
    with pytest.raises(ProviderUnreachable, match="no answer from azure resource manager") as caught:
        provider.wait(refs, deadline())
    assert "network access" in caught.value.hint

    azure.deny("Microsoft.Compute/snapshots/read", method="GET")
    with pytest.raises(ProviderError, match="lack Microsoft.Compute/snapshots/read") as refused:
        provider.wait(refs, deadline())
    assert not isinstance(refused.value, ProviderUnreachable)


@pytest.mark.parametrize("status", [500, 503])
def test_a_server_error_past_the_retries_is_unavailable(azure, make_provider, volumes, status):
    """ARM failing on its side is what a backup's wait rides out, as it does no answer."""
    provider = make_provider(max_retries=1)
    refs = provider.snapshot(volumes, tags())
    azure.inject(Fault(status, times=2, method="GET", path_contains="/snapshots/", message="try again later"))

    with pytest.raises(ProviderUnavailable) as caught:
        provider.wait(refs, deadline())
    name = refs[0].extra["name"]
    code = {500: "InternalServerError", 503: "ServiceUnavailable"}[status]
    assert caught.value.message == f"azure get snapshot {name}: {code}: try again later"
    assert "failing on its side" in caught.value.hint
    assert [r.status for r in azure.requests_to("GET", "/snapshots/")] == [status, status]


def test_a_retry_after_longer_than_allowed_fails_at_once(azure, make_provider, volumes):
    provider = make_provider(max_retry_wait_s=5)
    azure.throttle(1, retry_after=3600, method="PUT")

    with pytest.raises(ProviderThrottled) as err:
        provider.snapshot(volumes, tags())
    assert err.value.retry_after == 3600 and len(azure.requests_to("PUT")) == 1


def test_permission_denied_names_the_permission(azure, provider, volumes):
    azure.deny("Microsoft.Compute/snapshots/write", method="PUT")

    with pytest.raises(ProviderError, match="lack Microsoft.Compute/snapshots/write") as err:
        provider.snapshot(volumes, tags())
    assert "does not have authorization" in err.value.hint


def test_a_missing_disk_fails_the_node_and_deletes_what_was_made(azure, provider):
    gone = azure.resource_id(RG, "disks", "gone")
    volumes = provider.validate_volumes("n1", [{"disk_id": azure.disk_ids[0]}, {"disk_id": gone}], base_dir=Path("."))

    with pytest.raises(ProviderError, match=f"Resource {gone} not found") as err:
        provider.snapshot(volumes, tags())
    assert "resource_group" in err.value.hint
    assert azure.snapshots() == {}


def test_a_snapshot_put_refused_as_too_frequent_says_what_azure_allows(azure, provider, volumes):
    azure.inject(Fault(409, method="PUT", path_contains="/snapshots/", extra={"code": "OperationNotAllowed"},
                       message="Too many incremental snapshots were taken of this disk recently."))

    with pytest.raises(ProviderError, match="OperationNotAllowed: Too many incremental snapshots") as raised:
        provider.snapshot(volumes, tags())
    assert "7 incremental snapshots per disk per 5 minutes" in raised.value.hint


def test_delete_waits_for_the_long_running_operation(azure, provider, volumes):
    azure.op_polls = 3
    ref = provider.snapshot(volumes, tags())[0]

    provider.delete(ref)

    assert ref.extra["name"] not in azure.snapshots()
    assert len(azure.requests_to("GET", "/operations/")) == 3


def test_delete_of_a_missing_snapshot_is_done(azure, provider, volumes):
    first, second = provider.snapshot(volumes, tags())
    provider.delete(first)
    provider.delete(first)  # GET says 404 now

    azure.inject(Fault(404, method="DELETE", message="The Resource was not found."))
    provider.delete(second)  # the DELETE itself says 404
    assert azure.requests_to("DELETE")[-1].status == 404


@pytest.mark.parametrize("foreign_tags", [{}, {TAG_CLUSTER: "someone-else"}])
def test_delete_refuses_a_snapshot_without_this_clusters_tag(azure, provider, foreign_tags):
    snapshot_id = azure.add_snapshot(RG, "foreign", tags=foreign_tags)
    ref = SnapshotRef(provider="azure", snapshot_id=snapshot_id, node="n1", volume="data")

    with pytest.raises(ProviderError, match="refusing to delete"):
        provider.delete(ref)
    assert "foreign" in azure.snapshots() and not azure.requests_to("DELETE")


def test_find_returns_this_clusters_snapshots_with_the_given_tags_across_pages(azure, make_provider, volumes):
    azure.page_size = 2
    ours, theirs = make_provider(), make_provider(cluster="other")
    first = ours.snapshot(volumes, tags(run="run.1"))
    ours.snapshot(volumes, tags(run="run.2"))
    theirs.snapshot(volumes, tags(cluster="other", run="run.1"))

    found = ours.find({TAG_RUN: "run.1"})

    assert sorted(r.snapshot_id for r in found) == sorted(r.snapshot_id for r in first)
    assert all(r.tags[TAG_CLUSTER] == "Prod.EU" and r.tags["Team"] == "Storage" for r in found)
    assert {r.volume for r in found} == {"data", "wal"} and {r.node for r in found} == {"n1"}
    assert len(ours.find({})) == 4
    assert len(azure.requests_to("GET", "/snapshots")) >= 3  # followed nextLink


def test_restore_makes_a_disk_from_the_snapshot(azure, provider, volumes):
    ref = provider.snapshot(volumes, tags())[0]  # restore waits for completion itself

    disk_id = provider.restore(ref, RestoreTarget(zone="2", name="restored-data", extra={"sku": "Premium_LRS"}))

    assert disk_id == azure.resource_id(RG, "disks", "restored-data")
    made = azure.disks()["restored-data"]
    assert made["properties"]["creationData"] == {"createOption": "Copy", "sourceResourceId": ref.snapshot_id}
    assert made["properties"]["provisioningState"] == "Succeeded"
    assert made["zones"] == ["2"] and made["sku"]["name"] == "Premium_LRS"
    assert made["tags"] == {TAG_CLUSTER: "Prod.EU", "snapctl-restored-from": ref.snapshot_id}


@pytest.mark.parametrize("options, refusal", [
    ({"sku": "Premium_LRS", "disk_type": "Premium_LRS"},
     r"^node n1: unknown restore option\(s\) for azure: disk_type \(hint: valid: sku\)$"),
    ({"sku": ""}, r"^node n1: azure restore option sku '' is not a disk sku name"),
    ({"sku": 3}, r"^node n1: azure restore option sku 3 is not a disk sku name"),
], ids=["unknown key", "empty sku", "sku a number"])
def test_restore_options_it_cannot_use_are_refused_before_any_disk_is_made(azure, provider, volumes, options, refusal):
    ref = provider.snapshot(volumes, tags())[0]
    target = RestoreTarget(zone="2", name="restored-data", extra=options)

    for call in (provider.check_restore, provider.restore):
        with pytest.raises(BadInputError, match=refusal):
            call(ref, target)

    assert azure.requests_to("PUT", "/disks/") == [] and "restored-data" not in azure.disks()


def test_restore_attaches_the_disk_to_the_vm_at_a_free_lun_in_the_vms_zone(azure, provider, volumes):
    vm_id = azure.add_vm(RG, "scratch", zones=["3"])
    data, wal = provider.snapshot(volumes, tags())

    first = provider.restore(data, RestoreTarget(instance="scratch", name="r-data"))
    second = provider.restore(wal, RestoreTarget(instance=vm_id, name="r-wal", device="lun5"))

    assert azure.data_disks(RG, "scratch") == {0: "r-data", 5: "r-wal"}
    made = azure.disks()
    assert made["r-data"]["zones"] == ["3"] and made["r-data"]["managedBy"] == vm_id
    assert made["r-wal"]["tags"]["snapctl-attached-to"] == vm_id
    assert (first, second) == (azure.resource_id(RG, "disks", "r-data"), azure.resource_id(RG, "disks", "r-wal"))


def test_an_attach_that_fails_deletes_the_disk_it_made(azure, provider, volumes):
    azure.add_vm(RG, "scratch")
    ref = provider.snapshot(volumes, tags())[0]
    azure.deny("Microsoft.Compute/virtualMachines/write", method="PATCH")

    with pytest.raises(ProviderError, match="lack Microsoft.Compute/virtualMachines/write"):
        provider.restore(ref, RestoreTarget(instance="scratch", name="r-data"))

    assert "r-data" not in azure.disks() and azure.data_disks(RG, "scratch") == {}


@pytest.mark.parametrize("instance, device, error, message", [
    ("absent", None, ProviderError, "azure vm absent not found in resource group rg-snapctl"),
    ("/subscriptions/00000000-0000-4000-8000-00000000dead/resourceGroups/g/providers/Microsoft.Compute/"
     "virtualMachines/v", None, BadInputError, "in another subscription"),
    ("scratch", "/dev/sdf", BadInputError, "'/dev/sdf' is not a lun"),
])
def test_an_attach_that_cannot_work_is_refused_before_a_disk_is_made(azure, provider, volumes, instance, device,
                                                                     error, message):
    azure.add_vm(RG, "scratch")
    ref = provider.snapshot(volumes, tags())[0]
    with pytest.raises(error, match=message):
        provider.restore(ref, RestoreTarget(instance=instance, device=device))
    assert not azure.requests_to("PUT", "/disks/")


def test_missing_credentials_say_where_they_are_looked_for(azure, make_provider, volumes):
    from azure.identity import CredentialUnavailableError

    class NoCredential:
        def get_token(self, *scopes, **kwargs):
            raise CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token from the included "
                                             "credentials.")

    provider = make_provider()
    provider.api._credential = NoCredential()
    with pytest.raises(ProviderError, match="no usable credentials") as err:
        provider.snapshot(volumes, tags())
    assert "az login" in err.value.hint and not azure.requests_to("PUT")


def test_rejected_credentials_are_reported_as_such(azure, provider, volumes):
    azure.inject(Fault(401, method="PUT", message="The access token is invalid."))
    with pytest.raises(ProviderError, match="credentials rejected"):
        provider.snapshot(volumes, tags())


def test_a_create_whose_answer_never_came_is_found_and_deleted_when_the_node_fails(azure, make_provider, volumes):
    provider = make_provider(max_retries=0)
    azure.inject(Fault(503, method="PUT", path_contains="/snapshots/", after_commit=True, message="try later"))

    with pytest.raises(ProviderError, match="try later"):
        provider.snapshot(volumes, tags())

    assert azure.requests_to("PUT")[0].status == 503
    assert azure.snapshots() == {}  # the snapshot made behind the lost answer too


def test_tags_for_another_cluster_are_refused(azure, provider, volumes):
    with pytest.raises(BadInputError, match="tags name cluster 'other'"):
        provider.snapshot(volumes, tags(cluster="other"))
    assert not azure.requests_to("PUT")


class _CountingCredential(StaticTokenCredential):
    def __init__(self, error: Exception | None = None) -> None:
        self.scopes: list[tuple[str, ...]] = []
        self.error = error

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        self.scopes.append(scopes)
        if self.error is not None:
            raise self.error
        return super().get_token(*scopes, **kwargs)


def _with_credential(provider, credential):
    from snapctl_azure.client import AzureApi

    provider.api = AzureApi(provider.settings, credential)
    return provider


def test_warm_up_gets_the_token_before_any_request_and_the_snapshot_calls_then_send(azure, provider, volumes):
    credential = _CountingCredential()
    provider = _with_credential(provider, credential)
    provider.warm_up()
    assert credential.scopes == [("https://management.azure.com/.default",)]
    assert azure.requests == []  # a token, and no request to the cloud: warm_up changes nothing there
    refs = provider.snapshot(volumes, snapshot_tags("Prod.EU", "r1", "n1"))
    assert len(refs) == 2 and len(azure.requests_to("PUT")) == 2


def test_warm_up_without_usable_credentials_fails_before_any_hold(azure, provider):
    from azure.core.exceptions import ClientAuthenticationError

    provider = _with_credential(provider, _CountingCredential(
        ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token from the included credentials.")))
    with pytest.raises(ProviderError) as caught:
        provider.warm_up()
    assert caught.value.message.startswith("azure get an access token: no usable credentials: DefaultAzureCredential")
    assert caught.value.hint
    assert azure.requests == []


@pytest.mark.parametrize("truncated", [False, True], ids=["empty", "truncated"])
def test_an_answer_cut_short_is_unreachable_not_a_refusal(make_provider, azure, volumes, truncated):
    # An empty body (JSONDecodeError) or azure-core's IncompleteReadError (an HttpResponseError) was a plain
    # ProviderError, and a backup's wait rolled back good snapshots instead of asking again.
    refs = make_provider().snapshot(volumes, tags())
    with serving(cut_short(truncated=truncated)) as url:
        with pytest.raises(ProviderUnreachable) as caught:
            make_provider(base_url=url, max_retries=0).wait(refs, deadline())
    assert re.fullmatch(r"azure get snapshot \S+: no whole answer from azure resource manager "
                        r"\((JSONDecodeError|IncompleteReadError)\)", caught.value.message), caught.value.message
    assert "network access" in caught.value.hint

