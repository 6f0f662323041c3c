"""delete_volume against moto over HTTP: what a drill's teardown does with the volumes it restored.

moto refuses to delete an attached volume (VolumeInUse), as EC2 does, so a delete that succeeds
on an attached volume proves it was detached first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from snapctl.errors import ProviderError
from snapctl.providers import TAG_CLUSTER, RestoreTarget, snapshot_tags
from tests.providers.aws.conftest import CLUSTER, ZONE
from tests.providers.aws.faults import AcceptWithoutDetaching, FailFirst, inject


def restored_volume(provider, volume: str, target: RestoreTarget | None = None) -> str:
    volumes = provider.validate_volumes("n1", [{"volume": volume, "name": "data"}], base_dir=Path("."))
    [ref] = provider.snapshot(volumes, snapshot_tags(provider.cluster, "run-1", "n1"))
    return provider.restore(ref, target or RestoreTarget(zone=ZONE))


def volume_ids(ec2) -> set[str]:
    return {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}


def test_a_restored_volume_is_deleted_and_deleting_it_again_is_done(provider, ec2, volume):
    restored = restored_volume(provider, volume)
    assert restored in volume_ids(ec2)

    provider.delete_volume(restored)
    provider.delete_volume(restored)  # gone: done

    assert restored not in volume_ids(ec2) and volume in volume_ids(ec2)


def test_a_volume_that_never_existed_counts_as_deleted(provider, ec2):
    provider.delete_volume("vol-0123456789abcdef0")


def test_an_attached_restored_volume_is_detached_then_deleted(provider, ec2, machine, volume):
    restored = restored_volume(provider, volume, RestoreTarget(zone=ZONE, instance=machine.instance, device="/dev/sdh"))
    [described] = ec2.describe_volumes(VolumeIds=[restored])["Volumes"]
    assert [a["InstanceId"] for a in described["Attachments"]] == [machine.instance]

    provider.delete_volume(restored)

    assert restored not in volume_ids(ec2)
    [instance] = ec2.describe_instances(InstanceIds=[machine.instance])["Reservations"][0]["Instances"]
    devices = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"]}
    assert restored not in devices.values() and set(machine.data_volumes) <= set(devices.values())


def test_a_volume_of_another_cluster_or_untagged_is_refused_and_survives(make_provider, provider, ec2, volume):
    foreign = restored_volume(make_provider(cluster="staging"), volume)
    untagged = ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"]

    with pytest.raises(ProviderError, match=f"refusing to delete volume {foreign}.*belongs to cluster 'staging'"):
        provider.delete_volume(foreign)
    with pytest.raises(ProviderError, match=f"refusing to delete volume {untagged}: it lacks tag {TAG_CLUSTER}={CLUSTER}"):
        provider.delete_volume(untagged)

    assert {foreign, untagged} <= volume_ids(ec2)


def test_a_volume_stuck_detaching_fails_with_the_force_detach_hint_and_stays(make_provider, ec2, machine, volume):
    provider = make_provider(restore_timeout_s=0.2)
    restored = restored_volume(provider, volume, RestoreTarget(zone=ZONE, instance=machine.instance, device="/dev/sdh"))
    # EC2 accepts the detach but the instance never lets go (a mounted, busy filesystem).
    detach = inject(provider, "DetachVolume", AcceptWithoutDetaching(restored, machine.instance))

    with pytest.raises(ProviderError, match=f"{restored} is not detached from {machine.instance}") as raised:
        provider.delete_volume(restored)

    assert detach.calls == 1 and "detach-volume --force" in raised.value.hint
    assert restored in volume_ids(ec2)


def test_delete_volume_without_permission_names_the_permission(provider, ec2, volume):
    restored = restored_volume(provider, volume)
    inject(provider, "DeleteVolume", FailFirst(1, 403, "UnauthorizedOperation", "You are not authorized."))

    with pytest.raises(ProviderError, match="lack ec2:DeleteVolume"):
        provider.delete_volume(restored)
    assert restored in volume_ids(ec2)


class StillCreating:
    """EC2 while a new volume is being made from its snapshot: DescribeVolumes says ``creating``
    for the first ``polls`` calls, and DeleteVolume refuses the volume meanwhile (``IncorrectState``:
    EC2 deletes only an available volume). moto makes volumes available at once."""

    def __init__(self, polls: int) -> None:
        self.polls, self.describes, self.refused = polls, 0, 0

    @property
    def creating(self) -> bool:
        return self.describes < self.polls

    def describe(self, parsed, **_) -> None:
        self.describes += 1
        if self.creating or self.describes == self.polls:
            for volume in parsed.get("Volumes", []):
                volume["State"] = "creating" if self.creating else volume["State"]

    def delete(self, **_):
        from tests.providers.aws.faults import ec2_error

        if self.creating:
            self.refused += 1
            return ec2_error(400, "IncorrectState", "The volume is 'creating'.")
        return None


def test_a_restore_that_gives_up_on_a_volume_still_being_made_deletes_it_once_ec2_allows(make_provider, ec2, volume):
    """The restore timed out (or was interrupted) while the volume was still `creating`: its
    immediate delete was refused, only logged, and the volume stayed, unnamed anywhere."""
    provider = make_provider(restore_timeout_s=0.2, poll_interval_s=0.05)
    volumes = provider.validate_volumes("n1", [{"volume": volume, "name": "data"}], base_dir=Path("."))
    [ref] = provider.snapshot(volumes, snapshot_tags(provider.cluster, "run-1", "n1"))
    before = volume_ids(ec2)
    creating = StillCreating(polls=12)
    provider.client.meta.events.register("after-call.ec2.DescribeVolumes", creating.describe)
    provider.client.meta.events.register("before-send.ec2.DeleteVolume", creating.delete)

    with pytest.raises(ProviderError, match="is not available after"):
        provider.restore(ref, RestoreTarget(zone=ZONE))

    assert creating.refused == 0 and volume_ids(ec2) == before, "the half-made volume was left behind"
