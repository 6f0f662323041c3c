"""The restore side of the GCP provider: disks made from snapshots, attached to an instance when
asked, found again by their labels, and deleted (detached first from where restore attached them).

A mixin of ``GcpProvider``: it uses the provider's ``api``, ``settings``, ``cluster``, ``wait``,
``_get`` and ``_finish``.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from snapctl.errors import BadInputError, ProviderError, SnapshotNotFound
from snapctl.providers import (
    BEING_DELETED,
    GONE_HINT,
    TAG_ATTACHED_TO,
    TAG_CLUSTER,
    TAG_RESTORED_FROM,
    RestoreTarget,
    SnapshotRef,
    check_restore_options,
    discard_restored_volume,
    stop_requested,
)
from snapctl_gcp.errors import is_throttle
from snapctl_gcp.labels import decode_label, encode_key, encode_label, filter_for, labels_for, restored_disk_name
from snapctl_gcp.settings import RESOURCE_NAME

if TYPE_CHECKING:
    from snapctl_gcp.client import GcpApi
    from snapctl_gcp.settings import GcpSettings

PERM_RESTORE = "compute.disks.create"
PERM_DISK_GET = "compute.disks.get"
PERM_DISK_DELETE = "compute.disks.delete"
PERM_DISK_LIST = "compute.disks.list"
PERM_ATTACH = "compute.instances.attachDisk"  # and compute.disks.use on the disk
PERM_DETACH = "compute.instances.detachDisk"
PERM_INSTANCE_GET = "compute.instances.get"
DISK_PATH = re.compile(r"(?:^|/)projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/disks/(?P<disk>[^/]+)$")
INSTANCE_PATH = re.compile(r"^(?:(?:.*/)?projects/(?P<project>[^/]+)/)?(?:zones/(?P<zone>[^/]+)/instances/)?"
                           r"(?P<instance>[^/]+)$")
DEVICE_PREFIX = "/dev/disk/by-id/google-"
DISCARD_WAIT_S = 60.0  # how long a half-restored disk's insert still running is waited for, to delete it
RESTORE_OPTIONS = ("disk_type", "size_gb")  # what restore.options may set on the new disk


class RestoredDisks:
    api: GcpApi
    settings: GcpSettings
    cluster: str

    def restore(self, ref: SnapshotRef, target: RestoreTarget) -> str:
        """A new disk from the snapshot in ``target.zone`` (default: the zone of ``target.instance``
        when it names one, else the source disk's). ``target.extra`` may carry ``disk_type`` (e.g.
        pd-ssd) and ``size_gb``. With ``target.instance`` the disk is attached to it, as device
        ``target.device`` (default: the disk's name). A restore that fails once the insert was sent
        (the insert, its operation or the attach; Ctrl-C and SIGTERM too) deletes the disk."""
        _check_options(ref, target)
        instance, zone, name, device = self._restore_place(ref, target)
        deadline = time.monotonic() + self.settings.operation_timeout_s
        self.wait([ref], deadline)  # a disk can only be made from a READY snapshot
        types, disks = self.api.types, self.api.client("disks")
        tags = {**target.tags, TAG_CLUSTER: self.cluster, TAG_RESTORED_FROM: ref.snapshot_id}
        if instance:
            tags[TAG_ATTACHED_TO] = instance[1]  # what delete_volume may detach it from, and nothing else
        labels = labels_for(tags, self.settings.labels)
        disk = types.Disk(name=name, labels=labels,
                          source_snapshot=f"projects/{self.api.project}/global/snapshots/{ref.snapshot_id}")
        if target.extra.get("disk_type"):
            disk.type_ = f"zones/{zone}/diskTypes/{target.extra['disk_type']}"
        if target.extra.get("size_gb"):
            disk.size_gb = target.extra["size_gb"]
        request = types.InsertDiskRequest(project=self.api.project, zone=zone, disk_resource=disk,
                                          request_id=str(uuid.uuid4()))
        action, timeout = f"create disk {name} from snapshot {ref.snapshot_id}", self.settings.request_timeout_s
        made, op = f"projects/{self.api.project}/zones/{zone}/disks/{name}", None
        stop = stop_requested()  # a drill's Ctrl-C or SIGTERM: looked at while the disk is made
        try:
            op = self.api.call(action, PERM_RESTORE, deadline=deadline,
                               fn=lambda: disks.insert_unary(request=request, retry=None, timeout=timeout))
            self._finish(op, zone, action, deadline, stop=stop)
            if instance:
                assert device is not None
                self._attach(zone, instance[1], name, device, deadline, stop=stop)
        except BaseException as exc:  # Ctrl-C and SIGTERM too: a half-made restore leaves no disk behind
            if op is not None or not _refused(exc):
                self._discard(made, zone, op)
            raise
        return made

    def _discard(self, made: str, zone: str, op: Any) -> None:
        """A disk half-restored is only a cost; remove it so a retry starts clean. Its insert may
        have landed whatever the error said (an answer lost, a timeout, Ctrl-C while it ran), and
        one still running is waited for, briefly, first: until it is done the disk is in the
        making. A disk that never came to be is found gone: nothing to do."""
        if op is not None:
            with contextlib.suppress(Exception):  # the delete below says what stands in its way
                self.api.wait_operation(op, zone=zone, action=f"wait for the insert of {made}",
                                        deadline=time.monotonic() + DISCARD_WAIT_S)
        discard_restored_volume(self, made)

    def check_restore(self, ref: SnapshotRef, target: RestoreTarget) -> None:
        """What ``restore`` would refuse, making nothing: `snapctl restore` asks for every volume
        of a run first, so that a snapshot gone or failed is not found after other disks were made."""
        _check_options(ref, target)
        instance, zone, _, _ = self._restore_place(ref, target)
        # The disk attaches in its own zone: an instance not there fails only once the disk is made.
        if instance and self._get_instance(zone, instance[1]) is None:
            raise BadInputError(f"node {ref.node}: gcp instance {instance[1]} not found in zone {zone}, where the "
                                f"disk of volume {ref.volume} would be made",
                                hint="restore.instance names an instance of the provider's project in the disk's "
                                     "zone: set restore.zone (or --zone) to its zone, or give zones/ZONE/instances/NAME")
        snap = self._get(ref.snapshot_id)
        if snap is None:
            raise SnapshotNotFound(f"node {ref.node}: gcp snapshot {ref.snapshot_id} of volume {ref.volume} no longer "
                                   "exists", hint=GONE_HINT)
        if snap.status in ("FAILED", "DELETING"):
            why = "is FAILED" if snap.status == "FAILED" else BEING_DELETED.removeprefix("the snapshot ")
            raise ProviderError(f"node {ref.node}: gcp snapshot {ref.snapshot_id} of volume {ref.volume} {why}; "
                                "it cannot be restored", hint=GONE_HINT)
        size = target.extra.get("size_gb")
        if size and snap.disk_size_gb and size < snap.disk_size_gb:  # GCP refuses it too, but only at the insert
            raise BadInputError(f"node {ref.node}: gcp restore option size_gb {size} is smaller than the "
                                f"{snap.disk_size_gb} GB disk snapshot {ref.snapshot_id} of volume {ref.volume} "
                                "was taken of", hint=f"set size_gb to {snap.disk_size_gb} or more, or leave it "
                                                     "out (the disk then has the snapshot's size)")

    def _restore_place(self, ref: SnapshotRef, target: RestoreTarget) -> tuple[tuple[str | None, str] | None, str, str,
                                                                               str | None]:
        """(instance, zone, disk name, device name) of a restore, or what is wrong with the target."""
        instance = _instance_location(target.instance, self.api.project) if target.instance else None
        zone = target.zone or (instance[0] if instance else None) or ref.extra.get("zone")
        if not zone:
            raise BadInputError(f"gcp restore of {ref.snapshot_id}: no zone to create the disk in",
                                hint="give the restore target a zone, e.g. europe-west1-b")
        if instance and instance[0] and instance[0] != zone:
            raise BadInputError(f"gcp restore: instance {instance[1]} is in {instance[0]}, the disk would be in {zone}",
                                hint="a disk attaches only to an instance in its own zone: make restore.zone the "
                                     "instance's zone")
        name = target.name or restored_disk_name(ref.snapshot_id)
        if not re.match(RESOURCE_NAME, name):
            raise BadInputError(f"gcp restore: {name!r} is not a valid disk name",
                                hint="lowercase letters, digits and '-', at most 63")
        device = _device_name(target.device, default=name) if instance else None
        return instance, zone, name, device

    def _attach(self, zone: str, instance: str, disk: str, device: str, deadline: float, *,
                stop: threading.Event | None = None) -> None:
        types, instances = self.api.types, self.api.client("instances")
        attached = types.AttachedDisk(source=f"projects/{self.api.project}/zones/{zone}/disks/{disk}",
                                      device_name=device, mode="READ_WRITE", auto_delete=False)
        request = types.AttachDiskInstanceRequest(project=self.api.project, zone=zone, instance=instance,
                                                  attached_disk_resource=attached, request_id=str(uuid.uuid4()))
        action, timeout = f"attach disk {disk} to instance {instance} in {zone}", self.settings.request_timeout_s
        op = self.api.call(action, PERM_ATTACH, deadline=deadline,
                           fn=lambda: instances.attach_disk_unary(request=request, retry=None, timeout=timeout))
        self._finish(op, zone, action, deadline, stop=stop)

    def find_restored(self, tags: Mapping[str, str], places: Sequence[str] = ()) -> list[str]:
        """Disks restore made for this cluster carrying ``tags``, in any zone (as ``restore`` names them)."""
        wanted = labels_for({**tags, TAG_CLUSTER: self.cluster})
        request = self.api.types.AggregatedListDisksRequest(project=self.api.project, filter=filter_for(
            {**tags, TAG_CLUSTER: self.cluster}))
        disks, timeout = self.api.client("disks"), self.settings.request_timeout_s
        scopes = self.api.call("list disks", PERM_DISK_LIST,
                               fn=lambda: list(disks.aggregated_list(request=request, retry=None, timeout=timeout)))
        return sorted(f"projects/{self.api.project}/{scope}/disks/{disk.name}" for scope, listed in scopes or []
                      for disk in listed.disks if all(disk.labels.get(k) == v for k, v in wanted.items())
                      and encode_key(TAG_RESTORED_FROM) in disk.labels)

    def delete_volume(self, volume_id: str) -> None:
        """Delete a disk ``restore`` made (``projects/P/zones/Z/disks/NAME``). One it attached is
        detached from that instance first; a disk in use by any other instance is someone else's
        to detach, and is refused."""
        zone, name = self._disk_location(volume_id)
        disk = self._get_disk(zone, name)
        if disk is None:
            return
        if disk.labels.get(TAG_CLUSTER) != encode_label(self.cluster):
            raise ProviderError(f"refusing to delete gcp disk {name} in {zone}: "
                                f"it is not labelled {TAG_CLUSTER}={self.cluster}",
                                hint="snapctl deletes only disks it restored for this cluster")
        deadline = time.monotonic() + self.settings.operation_timeout_s
        users = [user.rsplit("/", 1)[-1] for user in disk.users]
        ours = decode_label(disk.labels.get(TAG_ATTACHED_TO, "")) or None
        if users and set(users) == {ours}:
            assert ours is not None
            self._detach(zone, ours, name, deadline)
            users = []
        if users:
            instances = ", ".join(users)
            raise ProviderError(f"gcp disk {name} in {zone} is attached to {instances}; snapctl did not attach it "
                                "there and will not detach it",
                                hint=f"gcloud compute instances detach-disk INSTANCE --disk {name} --zone {zone}, "
                                "then delete it again")
        request = self.api.types.DeleteDiskRequest(project=self.api.project, zone=zone, disk=name,
                                                   request_id=str(uuid.uuid4()))
        action, timeout = f"delete disk {name} in {zone}", self.settings.request_timeout_s
        disks = self.api.client("disks")
        op = self.api.call(action, PERM_DISK_DELETE, deadline=deadline, missing_ok=True,
                           fn=lambda: disks.delete_unary(request=request, retry=None, timeout=timeout))
        if op is not None:
            self._finish(op, zone, action, deadline, gone_ok=True)

    def _get_disk(self, zone: str, name: str) -> Any:
        disks, timeout = self.api.client("disks"), self.settings.request_timeout_s
        return self.api.call(f"get disk {name} in {zone}", PERM_DISK_GET, missing_ok=True,
                             fn=lambda: disks.get(project=self.api.project, zone=zone, disk=name, retry=None,
                                                  timeout=timeout))

    def _get_instance(self, zone: str, name: str, deadline: float | None = None) -> Any:
        instances, timeout = self.api.client("instances"), self.settings.request_timeout_s
        return self.api.call(f"get instance {name} in {zone}", PERM_INSTANCE_GET, deadline=deadline, missing_ok=True,
                             fn=lambda: instances.get(project=self.api.project, zone=zone, instance=name, retry=None,
                                                      timeout=timeout))

    def _detach(self, zone: str, instance: str, disk: str, deadline: float) -> None:
        """Detach the disk from the instance restore attached it to: by its device name there."""
        instances, timeout = self.api.client("instances"), self.settings.request_timeout_s
        found = self._get_instance(zone, instance, deadline)
        devices = [d.device_name for d in (found.disks if found is not None else [])
                   if re.search(rf"/zones/{re.escape(zone)}/disks/{re.escape(disk)}$", d.source or "")]
        if not devices:
            return  # detached meanwhile, or the instance is gone
        request = self.api.types.DetachDiskInstanceRequest(project=self.api.project, zone=zone, instance=instance,
                                                           device_name=devices[0], request_id=str(uuid.uuid4()))
        action = f"detach disk {disk} from instance {instance} in {zone}"
        op = self.api.call(action, PERM_DETACH, deadline=deadline, missing_ok=True,
                           fn=lambda: instances.detach_disk_unary(request=request, retry=None, timeout=timeout))
        if op is not None:
            self._finish(op, zone, action, deadline, gone_ok=True)

    def _disk_location(self, volume_id: str) -> tuple[str, str]:
        match = DISK_PATH.search(volume_id)
        if not match:
            raise BadInputError(f"{volume_id!r} is not a gcp disk", hint="expected projects/P/zones/Z/disks/NAME")
        if match["project"] != self.api.project:
            raise ProviderError(f"gcp disk {volume_id} is in another project than {self.api.project}",
                                hint="use an inventory whose provider has that project")
        return match["zone"], match["disk"]


def _instance_location(instance: str, project: str) -> tuple[str | None, str]:
    """(zone or None, name) of ``NAME``, ``zones/Z/instances/NAME`` or ``projects/P/zones/Z/instances/NAME``."""
    match = INSTANCE_PATH.match(instance)
    if not match or not re.match(RESOURCE_NAME, match["instance"]):
        raise BadInputError(f"{instance!r} is not a gcp instance",
                            hint="restore.instance takes NAME, zones/ZONE/instances/NAME or "
                                 "projects/PROJECT/zones/ZONE/instances/NAME")
    if match["project"] and match["project"] != project:
        raise BadInputError(f"gcp instance {instance} is in another project than {project}",
                            hint="attach to an instance of the provider's project")
    return match["zone"], match["instance"]


def _check_options(ref: SnapshotRef, target: RestoreTarget) -> None:
    """The node's restore.options, before anything is made: a key mistyped would restore with the
    default disk type or size without a word, and a value the insert refuses would be said by the
    API without the option's name."""
    check_restore_options("gcp", ref.node, target.extra, RESTORE_OPTIONS)
    disk_type, size = target.extra.get("disk_type"), target.extra.get("size_gb")
    if disk_type is not None and not (isinstance(disk_type, str) and re.match(RESOURCE_NAME, disk_type)):
        raise BadInputError(f"node {ref.node}: gcp restore option disk_type {disk_type!r} is not a disk type's name",
                            hint="e.g. disk_type: pd-ssd (or pd-balanced, pd-standard, hyperdisk-balanced): "
                                 "the name alone, not a diskTypes/ path")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise BadInputError(f"node {ref.node}: gcp restore option size_gb {size!r} is not a positive whole number",
                            hint="the new disk's size in GB, e.g. size_gb: 200; leave it out for the snapshot's size")


def _refused(exc: BaseException) -> bool:
    """The insert was answered no (4xx): it made nothing, and a 409 names a disk that was there
    before, not this restore's to delete. Not a throttle: one may follow an attempt that landed,
    its answer lost (the retries send the same request id)."""
    from google.api_core import exceptions as gexc

    cause = exc.__cause__
    return isinstance(cause, gexc.ClientError) and not is_throttle(cause)


def _device_name(device: str | None, *, default: str) -> str:
    """The attached disk's device name (the guest sees /dev/disk/by-id/google-NAME)."""
    name = (device or default).removeprefix(DEVICE_PREFIX)
    if not re.match(RESOURCE_NAME, name):
        raise BadInputError(f"gcp restore: {device!r} is not a device name",
                            hint=f"lowercase letters, digits and '-', at most 63, or {DEVICE_PREFIX}NAME; "
                                 "unset, the disk's name")
    return name
