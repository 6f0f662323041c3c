"""A new EBS volume from a snapshot, in a chosen zone, optionally attached to an instance; and
its removal when a drill is done with it (detached first, if attached)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from snapctl.errors import BadInputError, Interrupted, ProviderError, ProviderThrottled, SnapctlError
from snapctl.providers import (
    GONE_HINT,
    TAG_CLUSTER,
    TAG_RESTORE_TOKEN,
    TAG_RESTORED_FROM,
    TAG_RESTORED_RUN,
    TAG_RUN,
    RestoreTarget,
    check_restore_options,
    stop_requested,
)
from snapctl.redact import redact
from snapctl_aws.client import DELETE, DESCRIBE, VOLUME
from snapctl_aws.errors import IncorrectState, VolumeInUse, VolumeNotFound, error_code, http_status
from snapctl_aws.snapshots import NOT_FOUND_GRACE_S, aws_tags, tag_filters

if TYPE_CHECKING:
    from snapctl_aws.provider import AwsProvider

log = logging.getLogger(__name__)

SNAPCTL_TAGS = "snapctl-"  # every tag snapctl sets starts so (a later snapctl's too)
# Volume options an operator may pass in RestoreTarget.extra, with the CreateVolume parameter each sets.
VOLUME_OPTIONS = {"volume_type": "VolumeType", "iops": "Iops", "throughput": "Throughput", "kms_key_id": "KmsKeyId"}


def check_restore_volume(snapshot: dict[str, Any], volume: str, target: RestoreTarget, node: str = "") -> str | None:
    """What ``restore_volume`` refuses before it makes anything: the target's settings and a
    snapshot that is not completed. Returns the device to attach at (None: no attach)."""
    snapshot_id = snapshot["SnapshotId"]
    if not target.zone:
        raise BadInputError(f"restoring {snapshot_id} needs an availability zone", hint="set restore.zone, e.g. us-east-1a")
    check_restore_options("aws", node, target.extra, ["devices", *VOLUME_OPTIONS])
    # A node's volumes go to one instance at distinct devices: `device` for one, `devices` per volume.
    devices = target.extra.get("devices") or {}
    if not isinstance(devices, Mapping):
        raise BadInputError(f"{'node ' + node + ': ' if node else ''}restore option devices must map each volume "
                            f"to a device, not {devices!r}", hint="e.g. options: {devices: {data: /dev/sdf}}, "
                                                                 "or restore.devices, as aws takes both")
    device = target.device or devices.get(volume)
    if target.instance and not device:
        raise BadInputError(f"attaching the restored volume {volume} to {target.instance} needs a device name",
                            hint="set restore.device (one volume) or restore.devices: {volume: /dev/sdf, ...}")
    who = f"node {node}: " if node else ""
    if snapshot.get("State") == "error":
        raise ProviderError(f"{who}snapshot {snapshot_id} of volume {volume} is in error state: "
                            f"{snapshot.get('StateMessage') or 'no reason given'}; it cannot be restored",
                            hint=GONE_HINT)
    if snapshot.get("State") != "completed":
        progress = f" ({snapshot['Progress']})" if snapshot.get("Progress") else ""
        raise ProviderError(f"{who}snapshot {snapshot_id} of volume {volume} is {snapshot.get('State')}{progress}, "
                            "not completed; it cannot be restored yet",
                            hint="EBS is still copying it: restore again once `snapctl verify RUN` says the run's "
                                 "snapshots are completed, or restore an older run (`snapctl list`)")
    return device


INSTANCE_NOT_FOUND = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
INSTANCE_GONE = frozenset({"shutting-down", "terminated"})


def check_restore_instance(provider: AwsProvider, instance: str, zone: str | None, volume: str, node: str) -> None:
    """The instance ``--attach`` attaches to, read (DescribeInstances, once a command): one that
    does not exist, is terminated or lies in another zone than the volume is made in is refused by
    AttachVolume only after the volume was made and waited for, and then deleted again."""
    who = f"node {node}: " if node else ""
    if instance not in provider._instances_read:
        try:
            answer = provider.ec2.call("describe_instances", DESCRIBE, InstanceIds=[instance])
        except ProviderError as exc:
            if error_code(exc.__cause__) not in INSTANCE_NOT_FOUND:
                raise
            raise BadInputError(f"{who}aws instance {instance} (restore.instance) not found in region "
                                f"{provider.settings.region}: {exc.message}",
                                hint="set restore.instance on the node to an instance of the provider's region "
                                     "(`aws ec2 describe-instances`), or restore without --attach") from exc
        found = [i for r in answer.get("Reservations", []) for i in r.get("Instances", [])]
        provider._instances_read[instance] = found[0] if found else {}
    described = provider._instances_read[instance]
    state = (described.get("State") or {}).get("Name")
    if not described or state in INSTANCE_GONE:
        raise BadInputError(f"{who}aws instance {instance} (restore.instance) is {state or 'not listed by EC2'}: "
                            f"volume {volume} could not be attached to it",
                            hint="set restore.instance on the node to a running instance, or restore without --attach")
    placed = (described.get("Placement") or {}).get("AvailabilityZone")
    if zone and placed and placed != zone:
        raise BadInputError(f"{who}aws instance {instance} (restore.instance) is in zone {placed}, and volume "
                            f"{volume} would be made in {zone}: EBS attaches a volume only in its own zone",
                            hint=f"set restore.zone (or --zone) to {placed}, or restore.instance to an instance of "
                                 f"{zone}")


def restore_volume(provider: AwsProvider, snapshot: dict[str, Any], volume: str, target: RestoreTarget,
                   node: str = "") -> str:
    """``volume`` is the snapshot's volume name, which picks its device from ``extra["devices"]``."""
    snapshot_id = snapshot["SnapshotId"]
    device = check_restore_volume(snapshot, volume, target, node)

    # Ours rather than botocore's: its retries send the same one, and the volume carries it.
    token = str(uuid.uuid4())
    tags = {**restored_volume_tags(provider.cluster, snapshot, target), TAG_RESTORE_TOKEN: token}
    options = {VOLUME_OPTIONS[key]: value for key, value in target.extra.items() if key in VOLUME_OPTIONS}
    stop = stop_requested()  # a drill's Ctrl-C or SIGTERM: checked at every poll
    made_at = provider._clock()
    try:
        volume_id = provider.ec2.call(
            "create_volume", VOLUME, ClientToken=token,
            SnapshotId=snapshot_id, AvailabilityZone=target.zone,
            TagSpecifications=[{"ResourceType": "volume", "Tags": aws_tags(tags)}], **options,
        )["VolumeId"]
    except BaseException as exc:  # Ctrl-C and SIGTERM too: a sending may have landed meanwhile
        if not _refused(exc):
            _discard_made_by(provider, token, exc, made_at, stop)
        raise
    try:
        _wait_volume(provider, volume_id, lambda v: v["State"] == "available", "available", stop=stop,
                     made_at=made_at)
        if target.instance:
            _attach(provider, volume_id, target.instance, device)
            _wait_volume(provider, volume_id, _attached_to(target.instance), f"attached to {target.instance}",
                         stop=stop, made_at=made_at)
    except BaseException:  # Ctrl-C and SIGTERM too: a half-made restore leaves no volume behind
        _discard(provider, volume_id, provider.cluster)
        raise
    return volume_id


def _refused(exc: BaseException) -> bool:
    """CreateVolume was answered no (4xx): it made nothing. Not throttling, which may follow a
    sending that landed, its answer lost (the retries send the same token)."""
    return (isinstance(exc, ProviderError) and not isinstance(exc, ProviderThrottled)
            and 400 <= http_status(exc.__cause__) < 500)


def _discard_made_by(provider: AwsProvider, token: str, exc: BaseException, made_at: float,
                     stop: threading.Event | None) -> None:
    """A CreateVolume that failed unrefused (an answer lost or late, a 5xx, throttling after a
    sending that landed, Ctrl-C while it ran) may have made a volume whose id nobody was told:
    found by its token tag and discarded. EC2 makes one per token; moto, which ignores the token,
    one per sending: all of them. One that cannot be deleted, a search that failed, was stopped
    or found nothing within the grace is named in ``exc`` (a SnapctlError; any other is only
    logged), so that the restore's error says what may be left. A second Ctrl-C ends the search
    (and the command) at once."""
    where = f"tag {TAG_RESTORE_TOKEN}={token}"
    find_it = (f"find it with `aws ec2 describe-volumes --filters Name=tag:{TAG_RESTORE_TOKEN},Values={token}` "
               "and delete it")
    try:
        made = _made_by(provider, token, made_at, stop)
    except KeyboardInterrupt:
        _name_left(exc, (f"the search for the volume CreateVolume may have made ({where}) was interrupted", find_it))
        raise
    except Interrupted:
        left = (f"the search for the volume CreateVolume may have made ({where}) was stopped (Ctrl-C or SIGTERM)",
                find_it)
    except Exception as lookup:  # noqa: BLE001 - the create's own error is the one to report
        left = (f"could not look for the volume CreateVolume may have made ({where}): {lookup}", find_it)
    else:
        if not made:
            left = (f"EC2 listed no volume CreateVolume may have made ({where}) within {NOT_FOUND_GRACE_S:.0f}s of "
                    "the call; one may still appear", find_it)
        else:
            kept = sorted(v["VolumeId"] for v in made
                          if v.get("State") not in GONE and not _discard(provider, v["VolumeId"], provider.cluster))
            if not kept:
                return
            left = (f"CreateVolume made {', '.join(kept)} ({where}), which could not be deleted",
                    f"delete {'each' if len(kept) > 1 else 'it'} once the cause is fixed: "
                    f"aws ec2 delete-volume --volume-id {kept[0]}")
    _name_left(exc, left)


SEARCH_POLL_S = 1.0  # the longest pause between searches for a lost create's volume


def _made_by(provider: AwsProvider, token: str, made_at: float, stop: threading.Event | None) -> list[dict[str, Any]]:
    """The volumes carrying ``token``. EC2 lists a new volume (and its tags) only after a while:
    while none is listed the search is made again, in short polls, until ``NOT_FOUND_GRACE_S``
    after the CreateVolume was sent (``made_at``); [] past that. ``Interrupted`` once ``stop`` is
    set: a drill's Ctrl-C must not wait out the grace."""
    while True:
        made = provider.ec2.pages("describe_volumes", DESCRIBE, "Volumes",
                                  Filters=tag_filters({TAG_RESTORE_TOKEN: token}))
        remaining = made_at + NOT_FOUND_GRACE_S - provider._clock()
        if made or remaining <= 0:
            return made
        if stop is not None and stop.is_set():
            raise Interrupted(f"the search for the volume made by a CreateVolume (tag {TAG_RESTORE_TOKEN}={token})")
        provider._sleep(min(provider.settings.poll_interval_s, SEARCH_POLL_S, remaining))


def _name_left(exc: BaseException, left: tuple[str, str]) -> None:
    """Warn of what a failed CreateVolume may have left (``left``: what, and the hint) and add it
    to ``exc``'s message and hint."""
    log.warning("restore: %s", left[0])
    if isinstance(exc, SnapctlError):  # in place: its type (unreachable, unavailable, throttled) stands
        exc.message = redact(f"{exc.message}; {left[0]}")
        exc.args = (exc.message,)
        exc.hint = redact(f"{exc.hint}; {left[1]}" if exc.hint else left[1])


def restored_volume_tags(cluster: str, snapshot: dict[str, Any], target: RestoreTarget) -> dict[str, str]:
    """The snapshot's other tags (the inventory's `tags:`) travel with the volume; AWS-reserved
    keys cannot be set. snapctl's do not under their own names: a snapshot of the volume that
    copies its tags (Data Lifecycle Manager's CopyTags, the console's "copy tags from volume")
    would be one of that run's, for prune to delete with it. Where the volume came from goes
    under restored-volume names instead."""
    snapshot_tags = {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}
    tags = {key: value for key, value in snapshot_tags.items()
            if not key.lower().startswith(("aws:", SNAPCTL_TAGS))}
    tags[TAG_RESTORED_FROM] = snapshot["SnapshotId"]
    if snapshot_tags.get(TAG_RUN):
        tags[TAG_RESTORED_RUN] = snapshot_tags[TAG_RUN]
    tags.update(target.tags)
    if target.name:
        tags["Name"] = target.name
    # This cluster's, whatever the snapshot carries now (an operator may have removed or changed
    # its tag): delete_volume and find_restored go by it, so a drill's volume is never left behind.
    tags[TAG_CLUSTER] = cluster
    return tags


def find_restored_volumes(provider: AwsProvider, tags: Mapping[str, str]) -> list[str]:
    """The volumes of this cluster carrying ``tags`` and made by restore (not yet being deleted)."""
    wanted = {**tags, TAG_CLUSTER: provider.cluster}
    volumes = provider.ec2.pages("describe_volumes", DESCRIBE, "Volumes",
                                 Filters=[*tag_filters(wanted), {"Name": "tag-key", "Values": [TAG_RESTORED_FROM]}])
    return sorted(v["VolumeId"] for v in volumes if v.get("State") not in GONE)


def _attach(provider: AwsProvider, volume_id: str, instance: str, device: str) -> None:
    try:
        provider.ec2.call("attach_volume", VOLUME, VolumeId=volume_id, InstanceId=instance, Device=device)
    except VolumeInUse:
        # AttachVolume takes no idempotency token: botocore sends it again when the answer to a
        # sending that attached the volume was a 5xx or came too late, and EC2 refuses the second.
        # The volume is new, so attached where it was asked to be means that first sending did it.
        attachments = _describe_volume(provider, volume_id).get("Attachments", [])
        if not any(a.get("InstanceId") == instance and a.get("Device") == device
                   and a.get("State") in ("attaching", "attached") for a in attachments):
            raise
        log.info("volume %s: EC2 answered an AttachVolume sent again that the volume is in use; it is attached to "
                 "%s at %s, as asked", volume_id, instance, device)


def _detach(provider: AwsProvider, volume_id: str, instance: str, device: str) -> None:
    try:
        provider.ec2.call("detach_volume", VOLUME, VolumeId=volume_id, InstanceId=instance, Device=device)
    except IncorrectState:
        # DetachVolume sent again by botocore (a 5xx or a late answer to a sending that took
        # effect) is refused by EC2 with the volume detaching or already available.
        volume = _describe_volume(provider, volume_id)
        if volume.get("State") != "available" and not any(
                a.get("InstanceId") == instance and a.get("State") in ("detaching", "detached")
                for a in volume.get("Attachments", [])):
            raise
        log.info("volume %s: EC2 answered a DetachVolume sent again that the volume is in an incorrect state; it "
                 "is %s, as asked", volume_id, "available" if volume.get("State") == "available" else "detaching")


def _attached_to(instance: str):
    def check(volume: dict[str, Any]) -> bool:
        return any(a.get("InstanceId") == instance and a.get("State") == "attached" for a in volume.get("Attachments", []))

    return check


def delete_restored_volume(provider: AwsProvider, volume_id: str) -> None:
    """A volume restore made, by its cluster tag (refused without it): detached, then deleted."""
    try:
        volume = _describe_volume(provider, volume_id)
        if volume.get("State") in GONE:
            return
        tags = {t["Key"]: t["Value"] for t in volume.get("Tags", [])}
        if tags.get(TAG_CLUSTER) != provider.cluster:
            raise ProviderError(
                f"refusing to delete volume {volume_id}: it lacks tag {TAG_CLUSTER}={provider.cluster}"
                + (f" (it belongs to cluster {tags[TAG_CLUSTER]!r})" if TAG_CLUSTER in tags else ""),
                hint="snapctl only deletes volumes it restored for this cluster",
            )
        _detach_and_delete(provider, volume_id, volume)
    except VolumeNotFound:
        return


def _detach_and_delete(provider: AwsProvider, volume_id: str, volume: dict[str, Any]) -> None:
    """Detach the volume from every instance it is attached to, wait until it is available, delete it."""
    try:
        attachments = volume.get("Attachments", [])
        for attachment in attachments:
            if attachment.get("State") in ("attaching", "attached", "busy"):
                _detach(provider, volume_id, attachment["InstanceId"], attachment["Device"])
        if attachments:
            instances = ", ".join(sorted({a["InstanceId"] for a in attachments}))
            _wait_volume(provider, volume_id, _detached, f"detached from {instances}",
                         hint="unmount it on the instance, or force-detach it: aws ec2 detach-volume --force")
        provider.ec2.call("delete_volume", DELETE, VolumeId=volume_id)
    except VolumeNotFound:
        return


GONE = frozenset({"deleting", "deleted"})


def _detached(volume: dict[str, Any]) -> bool:
    return volume.get("State") in GONE or (volume.get("State") == "available" and not volume.get("Attachments"))


def _describe_volume(provider: AwsProvider, volume_id: str) -> dict[str, Any]:
    found = provider.ec2.call("describe_volumes", DESCRIBE, VolumeIds=[volume_id]).get("Volumes", [])
    if not found:
        raise VolumeNotFound(f"volume {volume_id} not found")
    return found[0]


def _wait_volume(provider: AwsProvider, volume_id: str, done, what: str,
                 hint: str = "raise the provider's restore_timeout_s", stop: threading.Event | None = None,
                 made_at: float | None = None) -> None:
    """Poll until ``done(volume)``. With ``made_at`` (``provider._clock()`` when its CreateVolume
    was sent): a NotFound within ``NOT_FOUND_GRACE_S`` of it is EC2 not listing the new volume
    yet (it is eventually consistent), polled again; later, or without it, the volume is gone."""
    deadline = provider._clock() + provider.settings.restore_timeout_s
    while True:
        if stop is not None and stop.is_set():
            raise Interrupted(f"restore of volume {volume_id} (waiting until it is {what})")
        try:
            volume = _describe_volume(provider, volume_id)
        except VolumeNotFound:
            if made_at is None or provider._clock() - made_at >= NOT_FOUND_GRACE_S:
                raise
            volume = {}  # not listed yet: not done
        if volume.get("State") == "error":
            raise ProviderError(f"restored volume {volume_id} went into error state")
        if volume and done(volume):
            return
        remaining = deadline - provider._clock()
        if remaining <= 0:
            raise ProviderError(f"restored volume {volume_id} is not {what} after {provider.settings.restore_timeout_s:.0f}s",
                                hint=hint)
        provider._sleep(min(provider.settings.poll_interval_s, remaining))


DISCARD_WAIT_S = 60.0  # how long a half-restored volume still `creating` is waited for, to delete it


def _discard(provider: AwsProvider, volume_id: str, cluster: str | None) -> bool:
    """A volume half-restored is only a cost; remove it so a retry starts clean. EC2 deletes only
    a volume that is available (or in error): one still `creating` (a restore that timed out or
    was interrupted meanwhile) is waited for, briefly, first; one attached part-way is detached.
    False when it is left (a warning names it)."""
    try:
        deadline = provider._clock() + DISCARD_WAIT_S
        try:
            while (volume := _describe_volume(provider, volume_id)).get("State") == "creating":
                if provider._clock() >= deadline:
                    break  # the delete below says why, and the warning names the volume
                provider._sleep(provider.settings.poll_interval_s)
        except VolumeNotFound:
            # Maybe not listed yet (EC2 is eventually consistent): deleted anyway, since this
            # restore made it; the delete's own NotFound is done.
            volume = {}
        if volume.get("State") not in GONE:
            _detach_and_delete(provider, volume_id, volume)  # ours: made by this call, whatever its tags
    except Exception as exc:  # noqa: BLE001 - the restore's own error is the one to report
        log.warning("could not delete half-restored volume %s (cluster %s): %s", volume_id, cluster, exc)
        return False
    return True
