"""snapshot(): instance mode, volume mode, tags, retries and roll-back, against moto over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.retries.standard import ExponentialBackoff

from snapctl import __version__
from snapctl.errors import BadInputError, ProviderError, ProviderThrottled
from snapctl.providers import TAG_CLUSTER, TAG_NODE, TAG_RUN, TAG_VERSION, TAG_VOLUME, snapshot_tags
from tests.providers.aws.conftest import CLUSTER
from tests.providers.aws.faults import FailFirst, inject, throttle


def run_tags(run: str = "run-1", node: str = "n1") -> dict[str, str]:
    return snapshot_tags(CLUSTER, run, node)


def all_snapshots(ec2) -> dict[str, dict]:
    return {s["SnapshotId"]: s for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}


def tags_of(snapshot: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}


def test_instance_mode_snapshots_every_data_volume_and_skips_the_boot_volume(provider, machine, ec2):
    volumes = provider.validate_volumes("n1", [{"instance": machine.instance}], base_dir=Path("."))

    refs = provider.snapshot(volumes, run_tags())
    provider.after_release(refs)

    assert sorted(r.volume for r in refs) == sorted(machine.data_volumes)
    stored = all_snapshots(ec2)
    assert sorted(s["VolumeId"] for s in stored.values()) == sorted(machine.data_volumes)
    for ref in refs:
        assert ref.provider == "aws" and ref.node == "n1" and ref.snapshot_id in stored
        assert tags_of(stored[ref.snapshot_id])[TAG_VOLUME] == ref.volume == ref.tags[TAG_VOLUME]
        assert ref.extra["instance_id"] == machine.instance


def test_instance_mode_makes_one_call_in_the_hold_and_tags_the_volumes_after_the_release(provider, machine, moto, ec2):
    """Each snapshot's volume tag is a CreateTags of its own, paced at 10 a second past a burst of
    100 (a bucket the pre-hold pacer does not mirror): sent inside snapshot() they held the engine
    for ~70 s at 200 instances of 4 volumes. The point in time needs only the create."""
    volumes = provider.validate_volumes("n1", [{"instance": machine.instance}], base_dir=Path("."))

    with moto.recording() as held:
        refs = provider.snapshot(volumes, run_tags())
    assert [action for action, _ in held] == ["CreateSnapshots"]
    assert all(TAG_VOLUME not in tags_of(s) for s in all_snapshots(ec2).values())

    with moto.recording() as released:
        provider.after_release(refs)
    assert [action for action, _ in released] == ["CreateTags"] * len(machine.data_volumes)
    stored = all_snapshots(ec2)
    assert {ref.volume: tags_of(stored[ref.snapshot_id])[TAG_VOLUME] for ref in refs} == {
        v: v for v in machine.data_volumes}


def test_a_snapshot_whose_volume_tag_never_came_is_found_and_named_by_its_volume(provider, machine):
    """The process died between the create and the tag (or the tag failed: after_release only
    warns): find, and so gc, prune and a rollback's search, still name each by its volume."""
    volumes = provider.validate_volumes("n1", [{"instance": machine.instance}], base_dir=Path("."))
    refs = provider.snapshot(volumes, run_tags())

    found = provider.find({TAG_RUN: "run-1", TAG_NODE: "n1"})

    assert sorted((r.snapshot_id, r.volume) for r in found) == sorted((r.snapshot_id, r.volume) for r in refs)
    assert sorted(r.volume for r in found) == sorted(machine.data_volumes)


def test_a_volume_tag_refused_is_a_warning_not_a_failure(provider, machine, ec2, caplog):
    volumes = provider.validate_volumes("n1", [{"instance": machine.instance}], base_dir=Path("."))
    refs = provider.snapshot(volumes, run_tags())
    inject(provider, "CreateTags", FailFirst(1, 403, "UnauthorizedOperation", "not authorized"))

    provider.after_release(refs)

    stored = all_snapshots(ec2)
    assert sorted(stored) == sorted(r.snapshot_id for r in refs)  # kept: good snapshots
    assert sum(TAG_VOLUME in tags_of(s) for s in stored.values()) == len(refs) - 1
    assert f"could not tag snapshot {refs[0].snapshot_id} with {TAG_VOLUME}={refs[0].volume}" in caplog.text


def test_instance_mode_can_include_boot_and_exclude_chosen_volumes(provider, machine, ec2):
    entry = {"instance": machine.instance, "exclude_boot": False, "exclude": [machine.data_volumes[1]]}
    volumes = provider.validate_volumes("n1", [entry], base_dir=Path("."))

    refs = provider.snapshot(volumes, run_tags())

    expected = sorted([machine.boot_volume, machine.data_volumes[0]])
    assert sorted(r.volume for r in refs) == expected
    assert sorted(s["VolumeId"] for s in all_snapshots(ec2).values()) == expected


def test_volume_mode_snapshots_each_listed_volume_under_its_name(provider, ec2, volume):
    other = ec2.create_volume(Size=4, AvailabilityZone="us-east-1a")["VolumeId"]
    raw = [{"volume": volume, "name": "data"}, {"volume": other}]
    volumes = provider.validate_volumes("n1", raw, base_dir=Path("."))

    refs = provider.snapshot(volumes, run_tags())

    assert [r.volume for r in refs] == ["data", other]
    stored = all_snapshots(ec2)
    assert [stored[r.snapshot_id]["VolumeId"] for r in refs] == [volume, other]
    assert [tags_of(stored[r.snapshot_id])[TAG_VOLUME] for r in refs] == ["data", other]


def test_every_snapshot_carries_the_five_snapctl_tags_and_the_user_tags(make_provider, machine, ec2):
    provider = make_provider(tags={"team": "storage", "cost-center": "42"})
    volumes = provider.validate_volumes("db-2", [{"instance": machine.instance}], base_dir=Path("."))

    refs = provider.snapshot(volumes, {**run_tags("run-7", "db-2"), "env": "prod"})
    provider.after_release(refs)

    assert len(refs) == len(machine.data_volumes)
    stored = all_snapshots(ec2)
    for ref in refs:
        tags = tags_of(stored[ref.snapshot_id])
        assert tags == {
            TAG_CLUSTER: CLUSTER, TAG_RUN: "run-7", TAG_NODE: "db-2", TAG_VOLUME: ref.volume,
            TAG_VERSION: __version__, "team": "storage", "cost-center": "42", "env": "prod",
        }
        assert ref.tags == tags


def test_the_most_tags_the_inventory_check_lets_through_are_what_ec2_takes(make_provider, ec2, volume):
    # The inventory's tags and the provider's together are held to 45: with snapctl's five, EC2's 50.
    provider = make_provider(tags={f"u{i}": "v" for i in range(20)})
    volumes = provider.validate_volumes("n1", [{"volume": volume}], base_dir=Path("."))
    inventory_tags = {f"t{i}": "v" for i in range(25)}
    provider.settings.check_inventory_tags(inventory_tags)

    [ref] = provider.snapshot(volumes, snapshot_tags(CLUSTER, "run-1", "n1", extra=inventory_tags))
    assert len(tags_of(all_snapshots(ec2)[ref.snapshot_id])) == 50

    one_more = {**inventory_tags, "t25": "v"}
    with pytest.raises(BadInputError, match="make 46 tags on every snapshot, more than the 45 EC2 has room for"):
        provider.settings.check_inventory_tags(one_more)
    with pytest.raises(ProviderError, match="TagLimitExceeded"):  # what a backup met inside its hold
        provider.snapshot(volumes, snapshot_tags(CLUSTER, "run-2", "n1", extra=one_more))


def test_tags_for_another_cluster_are_refused(provider, volume):
    volumes = provider.validate_volumes("n1", [{"volume": volume}], base_dir=Path("."))
    with pytest.raises(BadInputError, match="cluster 'other'"):
        provider.snapshot(volumes, snapshot_tags("other", "run-1", "n1"))


def test_throttling_is_retried_by_botocore_then_succeeds(provider, volume, monkeypatch):
    # Real botocore backoff, scaled down so the test stays fast.
    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "throttling_base_scale", 0.01)
    fault = inject(provider, "CreateSnapshot", throttle(times=3))
    volumes = provider.validate_volumes("n1", [{"volume": volume}], base_dir=Path("."))

    refs = provider.snapshot(volumes, run_tags())

    assert fault.calls == 4 and len(refs) == 1


def test_throttling_past_max_attempts_raises_provider_throttled(make_provider, volume, ec2, monkeypatch):
    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "throttling_base_scale", 0.01)
    provider = make_provider(max_attempts=2)
    fault = inject(provider, "CreateSnapshot", throttle(times=100))
    volumes = provider.validate_volumes("n1", [{"volume": volume}], base_dir=Path("."))

    with pytest.raises(ProviderThrottled, match="RequestLimitExceeded") as caught:
        provider.snapshot(volumes, run_tags())

    assert fault.calls == 2
    assert caught.value.hint and "rate" in caught.value.hint
    assert all_snapshots(ec2) == {}
    # Other threads sharing the create bucket are held back too.
    assert provider.ec2.buckets["create"].available < 0


def test_retry_after_from_ec2_is_honoured_and_reported(make_provider, volume, monkeypatch):
    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "throttling_base_scale", 0.01)
    provider = make_provider(max_attempts=1)
    inject(provider, "CreateSnapshot", FailFirst(1, 503, "RequestLimitExceeded", "slow down", {"Retry-After": "30"}))
    volumes = provider.validate_volumes("n1", [{"volume": volume}], base_dir=Path("."))

    with pytest.raises(ProviderThrottled) as caught:
        provider.snapshot(volumes, run_tags())

    assert caught.value.retry_after == 30
    bucket = provider.ec2.buckets["create"]
    assert bucket.available <= -29 * bucket.rate


def test_per_volume_rate_limit_is_waited_out_and_retried(provider, volume):
    fault = inject(provider, "CreateSnapshot", FailFirst(2, 400, "SnapshotCreationPerVolumeRateExceeded",
                                                          "The maximum per volume CreateSnapshot request rate has been exceeded."))
    waits: list[float] = []
    provider.ec2._sleep = waits.append
    volumes = provider.validate_volumes("n1", [{"volume": volume}], base_dir=Path("."))

    refs = provider.snapshot(volumes, run_tags())

    assert fault.calls == 3 and len(refs) == 1
    assert waits == [0.01, 0.01]


def test_per_volume_rate_limit_gives_up_after_its_retries(make_provider, volume):
    provider = make_provider(per_volume_retries=1)
    inject(provider, "CreateSnapshot", FailFirst(100, 400, "SnapshotCreationPerVolumeRateExceeded", "too many"))
    volumes = provider.validate_volumes("n1", [{"volume": volume}], base_dir=Path("."))

    with pytest.raises(ProviderThrottled, match="SnapshotCreationPerVolumeRateExceeded: too many") as caught:
        provider.snapshot(volumes, run_tags())
    # Its retries wait inside the hold: more of them alone would only meet the freeze budget.
    assert "further apart" in caught.value.hint and "policy.max_freeze_s" in caught.value.hint


def test_a_failure_part_way_deletes_what_the_call_created(provider, ec2, volume):
    second = ec2.create_volume(Size=4, AvailabilityZone="us-east-1a")["VolumeId"]
    third = ec2.create_volume(Size=4, AvailabilityZone="us-east-1a")["VolumeId"]
    # The first create goes through; the second is refused.
    inject(provider, "CreateSnapshot", _FailNth(2, FailFirst(1, 400, "IncorrectState", "volume is busy")))
    raw = [{"volume": volume}, {"volume": second}, {"volume": third}]
    volumes = provider.validate_volumes("n1", raw, base_dir=Path("."))

    with pytest.raises(ProviderError, match="IncorrectState: volume is busy"):
        provider.snapshot(volumes, run_tags())

    assert all_snapshots(ec2) == {}


def test_permission_denied_names_the_permission(provider, volume):
    inject(provider, "CreateSnapshot", FailFirst(1, 403, "UnauthorizedOperation",
                                                 "You are not authorized to perform this operation."))
    volumes = provider.validate_volumes("n1", [{"volume": volume}], base_dir=Path("."))

    with pytest.raises(ProviderError, match="lack ec2:CreateSnapshot") as caught:
        provider.snapshot(volumes, run_tags())

    assert "ec2:CreateSnapshot" in caught.value.hint and "ec2:CreateTags" in caught.value.hint


@pytest.mark.parametrize("code", ["AuthFailure", "ExpiredToken"])
def test_credentials_aws_rejects_stop_the_warm_up_before_any_hold(make_provider, ec2, code):
    """boto3 finds a deactivated access key or an expired session as readily as a good one: only
    AWS can say, so the warm-up asks once, else the first create in the hold would be the first to."""
    provider = make_provider()
    rejected = inject(provider, "DescribeSnapshots", FailFirst(1, 401, code, "AWS was not able to validate the "
                                                                "provided access credentials"))

    with pytest.raises(ProviderError, match=rf"credentials rejected \({code}\)") as caught:
        provider.warm_up()
    assert "aws sso login" in caught.value.hint and "testing" not in caught.value.message + caught.value.hint

    provider.warm_up()  # accepted now, and asked once: calling it again asks nothing
    provider.warm_up()
    assert rejected.calls == 2


def test_unknown_volume_is_a_provider_error_with_a_hint(provider):
    volumes = provider.validate_volumes("n1", [{"volume": "vol-0123456789abcdef0"}], base_dir=Path("."))
    with pytest.raises(ProviderError, match="InvalidVolume.NotFound") as caught:
        provider.snapshot(volumes, run_tags())
    assert "volumes:" in caught.value.hint


class _FailNth:
    """Let calls through except the ``n``-th (1-based), which gets ``fault``'s answer."""

    def __init__(self, n: int, fault: FailFirst) -> None:
        self.n, self.fault, self.calls = n, fault, 0

    def __call__(self, **kwargs):
        self.calls += 1
        return self.fault(**kwargs) if self.calls == self.n else None
