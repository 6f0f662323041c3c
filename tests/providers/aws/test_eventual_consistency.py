"""EC2 is eventually consistent: for a while after a create, DescribeSnapshots may answer
InvalidSnapshot.NotFound for the snapshot it made (moto never does; ``NotListedYet`` answers so).
A snapshot made moments ago and not found is asked for again, and deleted anyway on rollback; an
older one not found is gone, at once, as before. Likewise a restore's new volume and
DescribeVolumes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from snapctl_aws.errors import VolumeNotFound
from snapctl_aws.snapshots import NOT_FOUND_GRACE_S

from snapctl.errors import SnapshotNotFound
from snapctl.providers import TAG_CLUSTER, RestoreTarget, snapshot_tags
from snapctl.timestamps import utc_text
from tests.providers.aws.conftest import ZONE
from tests.providers.aws.faults import FailFirst, NotListedYet, inject


def take(provider, volume_ids):
    volumes = provider.validate_volumes("n1", [{"volume": v} for v in volume_ids], base_dir=Path("."))
    return provider.snapshot(volumes, snapshot_tags(provider.cluster, "run-1", "n1"))


def made_long_ago(ref):
    """``ref`` as a manifest of a run an hour old records it."""
    return ref.model_copy(update={"created_at": utc_text(datetime.now(UTC) - timedelta(hours=1))})


def snapshot_ids(ec2) -> set[str]:
    return {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}


def count(provider, operation: str) -> FailFirst:
    return inject(provider, operation, FailFirst(0, 500, "unused"))  # fails none: counts the sendings


def test_the_wait_asks_again_for_a_snapshot_made_moments_ago_that_ec2_does_not_list_yet(provider, ec2, volume):
    second = ec2.create_volume(Size=4, AvailabilityZone=ZONE)["VolumeId"]
    refs = take(provider, [volume, second])
    unlisted = inject(provider, "DescribeSnapshots", NotListedYet(refs[0].snapshot_id, times=4))

    done = provider.wait(refs, time.monotonic() + 30)

    assert [r.state for r in done] == ["completed", "completed"]
    assert unlisted.calls == 4  # by id, then by filter, twice: then EC2 lists it
    assert snapshot_ids(ec2) == {r.snapshot_id for r in refs}


def test_the_wait_fails_at_once_for_an_older_snapshot_not_found(provider, ec2, volume):
    [ref] = take(provider, [volume])
    ec2.delete_snapshot(SnapshotId=ref.snapshot_id)
    slept: list[float] = []
    provider._sleep = slept.append

    with pytest.raises(SnapshotNotFound, match=f"no longer exists: {ref.snapshot_id} ") as caught:
        provider.wait([made_long_ago(ref)], time.monotonic() + 30)

    assert slept == [] and "deleted it outside snapctl" in caught.value.hint


def test_a_snapshot_made_moments_ago_and_deleted_fails_the_wait_once_the_grace_is_over(make_provider, ec2, volume):
    provider = make_provider(poll_interval_s=5)
    [ref] = take(provider, [volume])
    ec2.delete_snapshot(SnapshotId=ref.snapshot_id)
    elapsed = [0.0]  # the provider's clocks, moved on by its sleeps
    started = time.time()
    provider._clock = lambda: elapsed[0]
    provider._now = lambda: started + elapsed[0]
    provider._sleep = lambda seconds: elapsed.__setitem__(0, elapsed[0] + seconds)

    with pytest.raises(SnapshotNotFound, match="no longer exists"):
        provider.wait([ref], deadline=3600)

    assert NOT_FOUND_GRACE_S - 5 <= elapsed[0] <= NOT_FOUND_GRACE_S + 5


def test_a_rollback_deletes_a_snapshot_made_moments_ago_that_ec2_does_not_list_yet(provider, ec2, volume):
    [ref] = take(provider, [volume])
    inject(provider, "DescribeSnapshots", NotListedYet(ref.snapshot_id, times=1))

    provider.delete(ref)

    assert snapshot_ids(ec2) == set()


def test_a_snapshot_made_moments_ago_is_not_deleted_unseen_unless_its_ref_names_this_cluster(provider, ec2, volume):
    [ref] = take(provider, [volume])
    inject(provider, "DescribeSnapshots", NotListedYet(ref.snapshot_id, times=1))
    deletes = count(provider, "DeleteSnapshot")

    provider.delete(ref.model_copy(update={"tags": {k: v for k, v in ref.tags.items() if k != TAG_CLUSTER}}))

    assert deletes.calls == 0 and snapshot_ids(ec2) == {ref.snapshot_id}


def test_deleting_a_snapshot_gone_long_ago_sends_no_delete(provider, ec2, volume):
    [ref] = take(provider, [volume])
    ec2.delete_snapshot(SnapshotId=ref.snapshot_id)
    deletes = count(provider, "DeleteSnapshot")

    provider.delete(made_long_ago(ref))

    assert deletes.calls == 0


def test_deleting_a_snapshot_made_moments_ago_and_gone_is_done_on_the_deletes_own_not_found(provider, ec2, volume):
    [ref] = take(provider, [volume])
    ec2.delete_snapshot(SnapshotId=ref.snapshot_id)
    deletes = count(provider, "DeleteSnapshot")

    provider.delete(ref)

    assert deletes.calls == 1


def restored_volumes(ec2) -> list[str]:
    found = ec2.describe_volumes(Filters=[{"Name": "tag-key", "Values": ["snapctl-restored-from"]}])["Volumes"]
    return [v["VolumeId"] for v in found if v["State"] not in ("deleting", "deleted")]


def test_a_restore_polls_again_for_a_volume_ec2_does_not_list_yet(provider, ec2, volume):
    [ref] = take(provider, [volume])
    unlisted = inject(provider, "DescribeVolumes", FailFirst(2, 400, "InvalidVolume.NotFound", "does not exist"))

    made = provider.restore(ref, RestoreTarget(zone=ZONE))

    assert unlisted.calls == 3 and restored_volumes(ec2) == [made]


def test_a_restored_volume_not_listed_past_the_grace_fails_the_restore_and_is_deleted_anyway(make_provider, ec2,
                                                                                             volume):
    provider = make_provider(poll_interval_s=5)
    [ref] = take(provider, [volume])
    elapsed = [0.0]
    provider._clock = lambda: elapsed[0]
    provider._sleep = lambda seconds: elapsed.__setitem__(0, elapsed[0] + seconds)
    inject(provider, "DescribeVolumes", FailFirst(10**6, 400, "InvalidVolume.NotFound", "does not exist"))

    with pytest.raises(VolumeNotFound):
        provider.restore(ref, RestoreTarget(zone=ZONE))

    assert NOT_FOUND_GRACE_S <= elapsed[0] <= NOT_FOUND_GRACE_S + 5
    assert restored_volumes(ec2) == [], "the volume the restore made was left behind"
