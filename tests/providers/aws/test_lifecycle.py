"""wait, find, delete and restore against moto over HTTP; snapshot states are set in moto's backend."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from snapctl.errors import BadInputError, ProviderError, ProviderUnavailable, ProviderUnreachable, SnapshotNotFound
from snapctl.providers import TAG_CLUSTER, TAG_NODE, TAG_RUN, RestoreTarget, snapshot_tags
from tests.conftest import free_port
from tests.fakes.serving import cut_short, serving
from tests.providers.aws.conftest import CLUSTER, ZONE
from tests.providers.aws.faults import FailFirst, inject


def take(provider, volume_ids, run="run-1", node="n1"):
    volumes = provider.validate_volumes(node, [{"volume": v} for v in volume_ids], base_dir=Path("."))
    return provider.snapshot(volumes, snapshot_tags(provider.cluster, run, node))


def set_state(moto, snapshot_id, status, progress=None, message=None):
    moto.set_snapshot(snapshot_id, status=status, progress=progress, state_message=message)


def test_wait_follows_pending_to_completed_reporting_progress(provider, moto, ec2, volume):
    second = ec2.create_volume(Size=4, AvailabilityZone=ZONE)["VolumeId"]
    refs = take(provider, [volume, second])
    for ref in refs:
        set_state(moto, ref.snapshot_id, "pending", "37%")
    seen = []

    def progress(ref):
        seen.append((ref.snapshot_id, ref.state, ref.progress))
        if ref.state == "pending":  # the upload finishes after the first look
            set_state(moto, ref.snapshot_id, "completed", "100%")

    done = provider.wait(refs, time.monotonic() + 30, progress)

    assert [r.snapshot_id for r in done] == [r.snapshot_id for r in refs]
    assert all(r.state == "completed" and r.progress == 100.0 for r in done)
    assert (refs[0].snapshot_id, "pending", 37.0) in seen
    assert (refs[0].snapshot_id, "completed", 100.0) in seen


def test_recovering_counts_as_pending(provider, moto, volume):
    [ref] = take(provider, [volume])
    set_state(moto, ref.snapshot_id, "recovering", "80%")
    states = []

    def progress(r):
        states.append(r.state)
        set_state(moto, r.snapshot_id, "completed")

    [done] = provider.wait([ref], time.monotonic() + 30, progress)
    assert states[0] == "pending" and done.state == "completed"


def test_a_snapshot_in_error_fails_wait_with_the_clouds_message(provider, moto, volume):
    [ref] = take(provider, [volume])
    set_state(moto, ref.snapshot_id, "error", message="Snapshot creation failed: internal error")

    with pytest.raises(ProviderError, match="Snapshot creation failed: internal error") as caught:
        provider.wait([ref], time.monotonic() + 30)

    assert ref.snapshot_id in caught.value.message and "node n1" in caught.value.message
    assert not isinstance(caught.value, ProviderUnavailable)  # the snapshot's own answer: no wait rides it out


def test_wait_gives_up_at_the_deadline(provider, moto, volume):
    [ref] = take(provider, [volume])
    set_state(moto, ref.snapshot_id, "pending", "5%")

    with pytest.raises(ProviderError, match=r"still pending at the deadline: .*5\.0%"):
        provider.wait([ref], time.monotonic() + 0.05)


def test_a_wait_that_reaches_no_ec2_is_unreachable_and_a_refusal_is_not(make_provider, provider, moto, volume):
    """Unreachable is what a backup's wait rides out: never an answer EC2 gave."""
    [ref] = take(provider, [volume])
    nobody = make_provider(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1)
    with pytest.raises(ProviderUnreachable, match=r"no answer from EC2 \(EndpointConnectionError\)") as caught:
        nobody.wait([ref], time.monotonic() + 30)
    assert "network access" in caught.value.hint

    inject(provider, "DescribeSnapshots", FailFirst(1, 403, "UnauthorizedOperation", "not authorized"))
    with pytest.raises(ProviderError, match="permission denied") as refused:
        provider.wait([ref], time.monotonic() + 30)
    assert not isinstance(refused.value, ProviderUnreachable)


@pytest.mark.parametrize(("status", "code"), [(500, "InternalError"), (503, "Unavailable"),
                                            (503, "ServiceUnavailable"), (502, "BadGateway")])
def test_a_server_error_past_the_retries_is_unavailable(make_provider, volume, status, code):
    """EC2 failing on its side is what a backup's wait rides out, as it does no answer at all; a
    502 whose code EC2 never uses is one by its status."""
    provider = make_provider(max_attempts=2)
    [ref] = take(provider, [volume])
    fault = inject(provider, "DescribeSnapshots", FailFirst(2, status, code, "An internal error has occurred."))

    with pytest.raises(ProviderUnavailable) as caught:
        provider.wait([ref], time.monotonic() + 30)
    assert fault.calls == 2  # botocore's own retries came first
    assert caught.value.message == f"aws DescribeSnapshots: {code}: An internal error has occurred."
    assert "failing on its side" in caught.value.hint


def test_a_zone_out_of_capacity_is_a_refusal_naming_the_remedy_not_an_outage_to_wait_out(make_provider, volume):
    # EC2 answers InsufficientVolumeCapacity with a 503 too: "failing on its side, look for an
    # outage" sent the operator the wrong way, when another zone is the fix.
    provider = make_provider(max_attempts=1)
    [ref] = take(provider, [volume])
    inject(provider, "DescribeSnapshots", FailFirst(1, 503, "InsufficientVolumeCapacity", "There is not enough "
                                                    "capacity to fulfill your request."))
    with pytest.raises(ProviderError) as caught:
        provider.wait([ref], time.monotonic() + 30)
    assert not isinstance(caught.value, ProviderUnavailable)
    assert caught.value.message.startswith("aws DescribeSnapshots: InsufficientVolumeCapacity: There is not enough")
    assert "another zone" in caught.value.hint


def test_an_answer_cut_short_is_unreachable_on_one_line_not_an_untranslated_parser_error(make_provider, provider,
                                                                                          volume):
    # A link that cuts EC2's answer short gives botocore an empty body: its ResponseParserError is no
    # BotoCoreError, escaped the plugin as it was, and a backup's wait rolled back good snapshots.
    [ref] = take(provider, [volume])

    with serving(cut_short(truncated=False)) as url:
        cut = make_provider(endpoint_url=url, max_attempts=1)
        with pytest.raises(ProviderUnreachable) as caught:
            cut.wait([ref], time.monotonic() + 30)
    assert caught.value.message.startswith("aws: no whole answer from EC2 (ResponseParserError): Unable to parse")
    assert "\n" not in caught.value.message and "network access" in caught.value.hint


def test_wait_reports_a_snapshot_deleted_underneath(provider, ec2, moto, volume):
    [ref] = take(provider, [volume])
    set_state(moto, ref.snapshot_id, "pending")
    ec2.delete_snapshot(SnapshotId=ref.snapshot_id)
    # Made a minute ago or more: one made moments ago may just not be listed yet
    # (test_eventual_consistency.py).
    ref = ref.model_copy(update={"created_at": "2026-01-01T00:00:00.000000Z"})

    with pytest.raises(SnapshotNotFound, match="no longer exists"):
        provider.wait([ref], time.monotonic() + 30)


def test_find_returns_this_clusters_snapshots_matching_the_tags(make_provider, ec2, volume):
    mine = make_provider()
    other = make_provider(cluster="staging")
    first = take(mine, [volume], run="run-1")
    second = take(mine, [volume], run="run-2", node="n2")
    take(other, [volume], run="run-1")
    ec2.create_snapshot(VolumeId=volume)  # untagged: never ours

    assert {r.snapshot_id for r in mine.find({})} == {r.snapshot_id for r in first + second}
    [found] = mine.find({TAG_RUN: "run-2"})
    assert found.snapshot_id == second[0].snapshot_id
    assert (found.node, found.volume, found.state) == ("n2", volume, "completed")
    assert found.tags[TAG_CLUSTER] == CLUSTER and found.tags[TAG_NODE] == "n2"
    assert mine.find({TAG_RUN: "run-9"}) == []
    with pytest.raises(BadInputError):
        mine.find({TAG_CLUSTER: "staging"})


def test_delete_removes_the_snapshot_and_not_found_counts_as_done(provider, ec2, volume):
    [ref] = take(provider, [volume])

    provider.delete(ref)
    provider.delete(ref)  # already gone: done

    assert ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []


def test_delete_refuses_a_snapshot_without_this_clusters_tag(make_provider, provider, ec2, volume):
    [foreign] = take(make_provider(cluster="staging"), [volume])
    untagged = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]

    with pytest.raises(ProviderError, match="refusing to delete .*belongs to cluster 'staging'"):
        provider.delete(foreign)
    with pytest.raises(ProviderError, match=f"refusing to delete snapshot {untagged}"):
        provider.delete(foreign.model_copy(update={"snapshot_id": untagged}))

    remaining = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert remaining == {foreign.snapshot_id, untagged}


def test_delete_without_permission_names_the_permission(provider, volume):
    [ref] = take(provider, [volume])
    inject(provider, "DeleteSnapshot", FailFirst(1, 403, "UnauthorizedOperation", "You are not authorized."))

    with pytest.raises(ProviderError, match="lack ec2:DeleteSnapshot"):
        provider.delete(ref)


def test_restore_creates_a_volume_in_the_zone_and_attaches_it(provider, ec2, machine, volume):
    [ref] = take(provider, [volume])
    target = RestoreTarget(zone=ZONE, instance=machine.instance, device="/dev/sdh", name="n1-restored")

    restored = provider.restore(ref, target)

    [described] = ec2.describe_volumes(VolumeIds=[restored])["Volumes"]
    assert described["SnapshotId"] == ref.snapshot_id
    assert described["AvailabilityZone"] == ZONE
    assert [(a["InstanceId"], a["Device"]) for a in described["Attachments"]] == [(machine.instance, "/dev/sdh")]
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert tags["snapctl-restored-from"] == ref.snapshot_id
    assert tags[TAG_CLUSTER] == CLUSTER and tags["Name"] == "n1-restored"


def test_restore_without_an_instance_leaves_the_volume_available(provider, ec2, volume):
    [ref] = take(provider, [volume])

    restored = provider.restore(ref, RestoreTarget(zone="us-east-1b", extra={"volume_type": "gp3"}))

    [described] = ec2.describe_volumes(VolumeIds=[restored])["Volumes"]
    assert (described["State"], described["AvailabilityZone"], described["VolumeType"]) == ("available", "us-east-1b", "gp3")
    assert described.get("Attachments", []) == []


def test_restore_picks_each_volumes_device_from_devices(provider, ec2, machine, volume):
    second = ec2.create_volume(Size=4, AvailabilityZone=ZONE)["VolumeId"]
    volumes = provider.validate_volumes("n1", [{"volume": volume, "name": "data"}, {"volume": second, "name": "wal"}],
                                        base_dir=Path("."))
    refs = provider.snapshot(volumes, snapshot_tags(CLUSTER, "run-1", "n1"))
    target = RestoreTarget(zone=ZONE, instance=machine.instance, extra={"devices": {"data": "/dev/sdh", "wal": "/dev/sdi"}})

    restored = {ref.volume: provider.restore(ref, target) for ref in refs}

    attached = {v["VolumeId"]: v["Attachments"][0]["Device"] for v in ec2.describe_volumes(VolumeIds=list(restored.values()))["Volumes"]}
    assert {name: attached[vid] for name, vid in restored.items()} == {"data": "/dev/sdh", "wal": "/dev/sdi"}


@pytest.mark.parametrize("target, problem", [
    (RestoreTarget(), "availability zone"),
    (RestoreTarget(zone=ZONE, instance="i-0123456789abcdef0"), "device"),
    (RestoreTarget(zone=ZONE, instance="i-0123456789abcdef0", extra={"devices": {"wal": "/dev/sdf"}}), "device"),
    (RestoreTarget(zone=ZONE, extra={"size": 5}), "unknown restore option"),
    (RestoreTarget(zone=ZONE, instance="i-0123456789abcdef0", extra={"devices": "/dev/sdf"}),
     "restore option devices must map each volume to a device"),  # was an AttributeError's traceback
])
def test_restore_refuses_an_incomplete_target(provider, volume, target, problem):
    [ref] = take(provider, [volume])
    with pytest.raises(BadInputError, match=problem):
        provider.restore(ref, target)


def test_a_failed_attach_deletes_the_new_volume(provider, ec2, volume):
    [ref] = take(provider, [volume])
    before = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}

    with pytest.raises(ProviderError, match="InvalidInstanceID.NotFound") as refused:
        provider.restore(ref, RestoreTarget(zone=ZONE, instance="i-0123456789abcdef0", device="/dev/sdh"))

    assert {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]} == before
    # The instance is restore.instance's, not one of the volumes: block's (the hint said that block).
    assert refused.value.hint == "check the node's restore.instance and the provider's region"


def test_a_restore_interrupted_while_the_volume_is_made_deletes_it(provider, ec2, volume, monkeypatch):
    import snapctl_aws.restore

    [ref] = take(provider, [volume])
    before = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}

    def interrupted(*args, **kwargs):  # Ctrl-C, or SIGTERM through snapctl's handler, while it waits
        raise KeyboardInterrupt

    monkeypatch.setattr(snapctl_aws.restore, "_wait_volume", interrupted)
    with pytest.raises(KeyboardInterrupt):
        provider.restore(ref, RestoreTarget(zone=ZONE))

    assert {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]} == before


def test_a_drill_stopped_while_its_volume_is_made_deletes_it(provider, ec2, volume):
    import threading

    from snapctl.errors import Interrupted
    from snapctl.providers import stoppable_by

    [ref] = take(provider, [volume])
    before = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
    stop = threading.Event()
    stop.set()  # the drill was interrupted once the volume was asked for: its first poll sees it
    with stoppable_by(stop), pytest.raises(Interrupted, match=r"restore of volume vol-\w+ \(waiting until it is "
                                                              r"available\) was interrupted"):
        provider.restore(ref, RestoreTarget(zone=ZONE))

    assert {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]} == before
    provider.restore(ref, RestoreTarget(zone=ZONE))  # outside a stopped drill, the same restore works
