"""GcpProvider with the real google-cloud-compute SDK against the local Compute API over HTTP."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from snapctl.errors import BadInputError, ProviderError, ProviderThrottled, ProviderUnavailable, ProviderUnreachable
from snapctl.providers import TAG_CLUSTER, TAG_RUN, TAG_VOLUME, RestoreTarget, SnapshotRef, snapshot_tags
from tests.fakes.json_http import Fault
from tests.fakes.serving import cut_short, serving
from tests.providers.gcp.conftest import deadline

ZONE = "europe-west1-b"  # where conftest's disks live
RUN = "20250101T000000Z.Run-7"


def tags(cluster: str = "Prod.EU", run: str = RUN, node: str = "n1") -> dict[str, str]:
    return snapshot_tags(cluster, run, node, extra={"Team": "Storage"})


def test_snapshot_labels_each_disk_and_returns_once_content_is_captured(gcp, provider, volumes):
    refs = provider.snapshot(volumes, tags())

    assert [r.volume for r in refs] == ["data", "wal"]
    for ref in refs:
        snap = gcp.snapshots[ref.snapshot_id]
        assert snap["status"] == "UPLOADING"  # captured, still uploading: the engine may be released
        assert snap["labels"][TAG_RUN] == "20250101_54000000_5a_2e_52un-7"
        assert snap["labels"]["snapctl-cluster"] == "_50rod_2e_45_55"
        assert snap["labels"]["k_k_54eam"] == "_53torage"
        assert ref.tags[TAG_RUN] == RUN and ref.tags[TAG_VOLUME] == ref.volume and ref.tags["Team"] == "Storage"
        assert ref.state == "pending" and ref.extra["zone"] == ZONE
    creates = gcp.requests_to("POST", "createSnapshot")
    assert len(creates) == 2 and all(c.query["requestId"] for c in creates)
    assert "guestFlush" not in creates[0].query


def test_guest_flush_and_storage_location_reach_the_api(gcp, make_provider):
    provider = make_provider(guest_flush=True, storage_locations=["eu"])
    volumes = provider.validate_volumes("n1", [{"disk": "data-disk", "zone": ZONE}], base_dir=Path("."))
    provider.snapshot(volumes, tags())

    (create,) = gcp.requests_to("POST", "createSnapshot")
    assert create.query["guestFlush"] == "true"
    assert create.body["storageLocations"] == ["eu"]


def test_wait_follows_status_to_ready_and_reports_progress(gcp, provider, volumes):
    refs = provider.snapshot(volumes, tags())
    seen: list[SnapshotRef] = []

    done = provider.wait(refs, deadline(), seen.append)

    assert [r.state for r in done] == ["completed", "completed"]
    assert all(r.progress == 100.0 and r.bytes for r in done)
    assert {r.snapshot_id for r in seen} == {r.snapshot_id for r in refs}
    assert all(gcp.snapshots[r.snapshot_id]["status"] == "READY" for r in done)


def test_a_snapshot_that_fails_raises_with_the_clouds_message(gcp, provider, volumes):
    gcp.op_running_polls = 50  # the create operation is still running when the snapshot fails
    gcp.fail_next_snapshot("Disk 'data-disk' could not be read: checksum mismatch on block 42")
    refs = provider.snapshot(volumes, tags())

    with pytest.raises(ProviderError, match="checksum mismatch on block 42"):
        provider.wait(refs, deadline())


def test_a_create_operation_that_fails_at_once_leaves_nothing_behind(gcp, provider, volumes):
    gcp.fail_next_snapshot("Quota 'SNAPSHOTS' exceeded. Limit: 5000.0 globally.", code="QUOTA_EXCEEDED", at_create=True)

    with pytest.raises(ProviderError, match="Quota 'SNAPSHOTS' exceeded") as err:
        provider.snapshot(volumes, tags())

    assert "quota" in err.value.hint
    assert gcp.snapshots == {}  # the other volume's snapshot was deleted again


def test_a_missing_disk_fails_the_node_and_deletes_what_was_made(gcp, provider):
    volumes = provider.validate_volumes("n1", [{"disk": "data-disk", "zone": ZONE}, {"disk": "gone", "zone": ZONE}],
                                        base_dir=Path("."))
    with pytest.raises(ProviderError, match="disks/gone' was not found"):
        provider.snapshot(volumes, tags())
    assert gcp.snapshots == {}


def test_throttled_create_is_retried_after_retry_after_with_the_same_request_id(gcp, provider, volumes):
    gcp.throttle(1, retry_after=1, path_contains="disks/data-disk/createSnapshot")

    refs = provider.snapshot(volumes, tags())

    attempts = gcp.requests_to("POST", "disks/data-disk/createSnapshot")
    assert [a.status for a in attempts] == [429, 200]
    assert attempts[0].query["requestId"] == attempts[1].query["requestId"]
    assert len(refs) == 2 and len(gcp.snapshots) == 2


def test_a_lost_response_is_retried_without_making_a_second_snapshot(gcp, provider, volumes):
    gcp.fail_after_commit(path_contains="disks/data-disk/createSnapshot")

    refs = provider.snapshot(volumes, tags())

    attempts = gcp.requests_to("POST", "disks/data-disk/createSnapshot")
    assert [a.status for a in attempts] == [503, 200]
    assert attempts[0].query["requestId"] == attempts[1].query["requestId"]
    assert sorted(gcp.snapshots) == sorted(r.snapshot_id for r in refs)


def test_an_operation_refused_as_too_frequent_is_retried_as_a_new_request(gcp, provider, volumes):
    gcp.fail_next_snapshot("Operation rate exceeded for resource 'data-disk'. Too frequent operations from the source "
                           "resource.", code="RESOURCE_OPERATION_RATE_EXCEEDED", at_create=True)

    refs = provider.snapshot(volumes, tags())

    assert len(refs) == 2 and len(gcp.snapshots) == 2
    request_ids = [a.query["requestId"] for a in gcp.requests_to("POST", "createSnapshot")]
    assert len(request_ids) == 3 and len(set(request_ids)) == 3


def test_throttling_beyond_max_retries_is_a_provider_throttled(gcp, make_provider, volumes):
    provider = make_provider(max_retries=1)
    gcp.throttle(5, retry_after=1, path_contains="createSnapshot")

    with pytest.raises(ProviderThrottled) as err:
        provider.snapshot(volumes, tags())
    assert err.value.retry_after == 1
    assert "create_rate" in err.value.hint


def test_a_read_throttled_past_the_retries_is_not_blamed_on_the_create_rate(gcp, make_provider, volumes):
    provider = make_provider(max_retries=1)
    gcp.throttle(5, retry_after=0.01, method="GET", path_contains="/global/snapshots")

    with pytest.raises(ProviderThrottled) as err:
        provider.find({TAG_RUN: RUN})
    assert "create_rate" not in err.value.hint and "max_retries" in err.value.hint


def test_a_read_whose_connection_drops_past_the_retries_is_unreachable_and_a_refusal_is_not(gcp, make_provider,
                                                                                            volumes):
    provider = make_provider(max_retries=1)
    refs = provider.snapshot(volumes, tags())
    gcp.drop(2, method="GET", path_contains="/global/snapshots/")
    with pytest.raises(ProviderUnreachable, match=r"no answer from the compute api \(ConnectionError\)"):
        provider.wait(refs, time.monotonic() + 30)

    gcp.deny("compute.snapshots.get", method="GET", path_contains="/global/snapshots/", times=2)
    with pytest.raises(ProviderError, match="lack compute.snapshots.get") as refused:
        provider.wait(refs, time.monotonic() + 30)
    assert not isinstance(refused.value, ProviderUnreachable)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_server_error_past_the_retries_is_unavailable(gcp, make_provider, volumes, status):
    """Compute Engine failing on its side is what a backup's wait rides out, as it does no answer."""
    provider = make_provider(max_retries=1)
    refs = provider.snapshot(volumes, tags())
    gcp.inject(Fault(status, times=2, method="GET", path_contains="/global/snapshots/", message="backend error"))

    with pytest.raises(ProviderUnavailable) as caught:
        provider.wait(refs, deadline())
    said = caught.value.message
    assert said.startswith(f"gcp get snapshot {refs[0].snapshot_id}: {status} ") and said.endswith(": backend error")
    assert "failing on its side" in caught.value.hint
    assert [r.status for r in gcp.requests_to("GET", "/global/snapshots/")][-2:] == [status, status]  # one retry


def test_permission_denied_names_the_permission(gcp, provider, volumes):
    gcp.deny("compute.disks.createSnapshot", path_contains="createSnapshot", times=2)

    with pytest.raises(ProviderError, match="lack compute.disks.createSnapshot") as err:
        provider.snapshot(volumes, tags())
    assert "grant compute.disks.createSnapshot" in err.value.hint


def test_delete_waits_for_the_global_operation(gcp, provider, volumes):
    gcp.op_running_polls = 3
    ref = provider.wait(provider.snapshot(volumes, tags()), deadline())[0]

    provider.delete(ref)

    assert ref.snapshot_id not in gcp.snapshots
    assert len(gcp.requests_to("POST", "/global/operations/")) == 3


def test_delete_of_a_missing_snapshot_is_done(gcp, provider, volumes):
    ref = provider.snapshot(volumes, tags())[0]
    provider.delete(ref)
    provider.delete(ref)  # GET says 404 now

    gcp.inject(Fault(404, method="DELETE", message="The resource was not found"))
    other = provider.snapshot(volumes, tags())[1]
    provider.delete(other)  # the DELETE itself says 404
    assert gcp.requests_to("DELETE")[-1].status == 404


@pytest.mark.parametrize("labels", [{}, {"snapctl-cluster": "someone-else"}])
def test_delete_refuses_a_snapshot_without_this_clusters_label(gcp, provider, labels):
    gcp.add_snapshot("foreign-snapshot", labels=labels)
    ref = SnapshotRef(provider="gcp", snapshot_id="foreign-snapshot", node="n1", volume="data")

    with pytest.raises(ProviderError, match="refusing to delete"):
        provider.delete(ref)
    assert "foreign-snapshot" in gcp.snapshots and not gcp.requests_to("DELETE")


def test_find_returns_this_clusters_snapshots_with_the_given_tags(gcp, make_provider, volumes):
    ours, theirs = make_provider(), make_provider(cluster="other")
    first = ours.snapshot(volumes, tags(run="run.1"))
    ours.snapshot(volumes, tags(run="run.2"))
    theirs.snapshot(volumes, tags(cluster="other", run="run.1"))

    found = ours.find({TAG_RUN: "run.1"})

    assert sorted(r.snapshot_id for r in found) == sorted(r.snapshot_id for r in first)
    assert all(r.tags[TAG_CLUSTER] == "Prod.EU" and r.tags[TAG_RUN] == "run.1" for r in found)
    assert {r.volume for r in found} == {"data", "wal"} and {r.node for r in found} == {"n1"}
    assert len(ours.find({})) == 4


def test_find_skips_a_snapshot_made_of_a_restored_disk_by_its_label_or_its_raw_tag(gcp, provider, volumes):
    from snapctl_gcp.labels import description_for, labels_for

    ours = provider.snapshot(volumes, tags())
    cluster, restored = {TAG_CLUSTER: "Prod.EU"}, {TAG_CLUSTER: "Prod.EU", "snapctl-restored-from": "snap-1"}
    # The description is read before the labels: each copy carries the tag only where the other does not look.
    gcp.add_snapshot("copy-labelled", labels=labels_for(restored), description=description_for(cluster))
    gcp.add_snapshot("copy-described", labels=labels_for(cluster), description=description_for(restored))

    assert sorted(r.snapshot_id for r in provider.find({})) == sorted(r.snapshot_id for r in ours)


def test_restore_makes_a_disk_from_the_snapshot(gcp, provider, volumes):
    gcp.op_running_polls = 3
    ref = provider.snapshot(volumes, tags())[0]  # restore waits for READY itself

    target = RestoreTarget(zone="europe-west1-c", name="restored-data", extra={"disk_type": "pd-ssd"})
    disk = provider.restore(ref, target)

    assert disk == f"projects/{gcp.project}/zones/europe-west1-c/disks/restored-data"
    made = gcp.disks[("europe-west1-c", "restored-data")]
    assert made["sourceSnapshot"].endswith(f"/global/snapshots/{ref.snapshot_id}") and made["status"] == "READY"
    assert made["type"] == "zones/europe-west1-c/diskTypes/pd-ssd"
    assert len(gcp.requests_to("POST", "/zones/europe-west1-c/operations/")) == 3


@pytest.mark.parametrize("options, refusal", [
    ({"disk_typ": "pd-ssd"},
     r"^node n1: unknown restore option\(s\) for gcp: disk_typ \(hint: valid: disk_type, size_gb\)$"),
    ({"size_gb": "200"}, r"^node n1: gcp restore option size_gb '200' is not a positive whole number"),
    ({"size_gb": 0}, r"^node n1: gcp restore option size_gb 0 is not a positive whole number"),
    ({"size_gb": True}, r"^node n1: gcp restore option size_gb True is not a positive whole number"),
    ({"disk_type": "zones/europe-west1-b/diskTypes/pd-ssd"},
     r"^node n1: gcp restore option disk_type 'zones/europe-west1-b/diskTypes/pd-ssd' is not a disk type's name"),
], ids=["unknown key", "size as text", "size zero", "size true", "type as a path"])
def test_restore_options_it_cannot_use_are_refused_before_any_disk_is_made(gcp, provider, volumes, options, refusal):
    ref = provider.wait([provider.snapshot(volumes, tags())[0]], deadline())[0]
    target = RestoreTarget(zone=ZONE, name="restored-data", extra=options)

    for call in (provider.check_restore, provider.restore):
        with pytest.raises(BadInputError, match=refusal):
            call(ref, target)

    assert [r for r in gcp.requests_to("POST") if r.path.endswith("/disks")] == []


def test_a_size_below_the_snapshots_disk_is_refused_up_front_and_one_above_it_is_the_new_disks(gcp, provider, volumes):
    ref = provider.wait([provider.snapshot(volumes, tags())[0]], deadline())[0]  # of a 20 GB disk

    with pytest.raises(BadInputError, match=rf"^node n1: gcp restore option size_gb 10 is smaller than the 20 GB disk "
                                            rf"snapshot {ref.snapshot_id} of volume data was taken of") as caught:
        provider.check_restore(ref, RestoreTarget(zone=ZONE, extra={"size_gb": 10}))
    assert caught.value.hint.startswith("set size_gb to 20 or more")

    target = RestoreTarget(zone=ZONE, name="bigger", extra={"size_gb": 30})
    provider.check_restore(ref, target)
    provider.restore(ref, target)
    assert gcp.disks[(ZONE, "bigger")]["sizeGb"] == "30"


def test_restore_defaults_to_the_source_zone(gcp, provider, volumes):
    ref = provider.snapshot(volumes, tags())[0]
    disk = provider.restore(ref, RestoreTarget())
    assert disk.startswith(f"projects/{gcp.project}/zones/{ZONE}/disks/snapctl-")


def test_restore_attaches_the_disk_to_the_instance_in_the_instances_zone(gcp, provider, volumes):
    gcp.add_instance("europe-west1-c", "scratch")
    data, wal = provider.snapshot(volumes, tags())

    first = provider.restore(data, RestoreTarget(instance="zones/europe-west1-c/instances/scratch", name="r-data"))
    second = provider.restore(wal, RestoreTarget(zone="europe-west1-c", instance="scratch", name="r-wal",
                                                 device="/dev/disk/by-id/google-wal"))

    assert first == f"projects/{gcp.project}/zones/europe-west1-c/disks/r-data"  # the instance's zone, not the source's
    assert second == f"projects/{gcp.project}/zones/europe-west1-c/disks/r-wal"
    assert gcp.attached("europe-west1-c", "scratch") == {"r-data": "r-data", "wal": "r-wal"}
    assert gcp.disks[("europe-west1-c", "r-data")]["labels"]["snapctl-attached-to"] == "scratch"
    assert len({r.query["requestId"] for r in gcp.requests_to("POST", "/attachDisk")}) == 2


def test_an_attach_that_fails_deletes_the_disk_it_made(gcp, provider, volumes):
    gcp.add_instance("europe-west1-c", "scratch")
    ref = provider.snapshot(volumes, tags())[0]
    gcp.deny("compute.instances.attachDisk", path_contains="/attachDisk")

    with pytest.raises(ProviderError, match="lack compute.instances.attachDisk"):
        provider.restore(ref, RestoreTarget(zone="europe-west1-c", instance="scratch", name="r-data"))

    assert ("europe-west1-c", "r-data") not in gcp.disks and gcp.attached("europe-west1-c", "scratch") == {}


@pytest.mark.parametrize("instance, device, message", [
    ("zones/europe-west1-d/instances/scratch", None, "instance scratch is in europe-west1-d, the disk would be in"),
    ("projects/elsewhere/zones/europe-west1-c/instances/scratch", None, "in another project"),
    ("Scratch VM", None, "is not a gcp instance"),
    ("scratch", "/dev/sdf", "'/dev/sdf' is not a device name"),
])
def test_an_attach_that_cannot_work_is_refused_before_a_disk_is_made(gcp, provider, volumes, instance, device,
                                                                     message):
    ref = provider.snapshot(volumes, tags())[0]
    with pytest.raises(BadInputError, match=message):
        provider.restore(ref, RestoreTarget(zone="europe-west1-c", instance=instance, device=device))
    assert not [r for r in gcp.requests_to("POST") if r.path.endswith("/disks")]


def test_a_403_rate_limit_counts_as_throttling_and_is_retried(gcp, provider, volumes):
    gcp.inject(Fault(403, path_contains="disks/data-disk/createSnapshot", message="Rate Limit Exceeded",
                     extra={"reason": "rateLimitExceeded"}))

    provider.snapshot(volumes, tags())

    assert [a.status for a in gcp.requests_to("POST", "disks/data-disk/createSnapshot")] == [403, 200]


def test_a_create_whose_answer_never_came_is_found_and_deleted_when_the_node_fails(gcp, make_provider, volumes):
    provider = make_provider(max_retries=0)
    gcp.fail_after_commit(path_contains="disks/data-disk/createSnapshot")

    with pytest.raises(ProviderError, match="unavailable"):
        provider.snapshot(volumes, tags())

    assert gcp.requests_to("POST", "disks/data-disk/createSnapshot")[0].status == 503
    assert gcp.snapshots == {}  # the snapshot made behind the lost answer too


def test_tags_for_another_cluster_are_refused(gcp, provider, volumes):
    with pytest.raises(BadInputError, match="tags name cluster 'other'"):
        provider.snapshot(volumes, tags(cluster="other"))
    assert not gcp.requests_to("POST")


@pytest.mark.parametrize("truncated", [False, True], ids=["empty", "truncated"])
def test_an_answer_cut_short_is_unreachable_not_a_refusal(make_provider, truncated):
    # An empty body (ParseError) or a connection closed mid-body (ChunkedEncodingError) was a plain
    # ProviderError: a backup's wait rolled back, deleting good snapshots, instead of asking again.
    ref = SnapshotRef(provider="gcp", snapshot_id="snap1", node="n1", volume="data",
                      extra={"zone": "europe-west1-b"})
    with serving(cut_short(truncated=truncated)) as url:
        with pytest.raises(ProviderUnreachable) as caught:
            make_provider(api_endpoint=url, max_retries=1).wait([ref], deadline())
    assert re.fullmatch(r"gcp get snapshot snap1: no whole answer from the compute api "
                        r"\((ParseError|ChunkedEncodingError)\)", caught.value.message), caught.value.message
    assert "network access" in caught.value.hint

