"""GcpProvider: Compute Engine persistent-disk snapshots (google-cloud-compute, REST transport).

snapshot() returns once every disk's content is captured: GCP documents that writes may resume
when a snapshot leaves CREATING (status UPLOADING), not when the create call is accepted, so that
is the moment the engine may be released. wait() then follows UPLOADING -> READY | FAILED.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from snapctl.errors import BadInputError, ProviderError, SnapctlError, SnapshotNotFound
from snapctl.providers import (
    BEING_DELETED,
    GONE_HINT,
    TAG_CLUSTER,
    TAG_NODE,
    TAG_VOLUME,
    Capabilities,
    NodeVolumes,
    ProgressFn,
    RestoreTarget,
    SnapshotRef,
    check_cluster_tag,
    discard_partial_snapshots,
    discard_restored_volume,
)
from snapctl_gcp.client import GcpApi
from snapctl_gcp.errors import RATE_OPERATION_CODES, operation_error
from snapctl_gcp.labels import (
    decode_label,
    description_for,
    encode_key,
    encode_label,
    filter_for,
    labels_for,
    restored_disk_name,
    snapshot_name,
    tags_of,
)
from snapctl_gcp.settings import RESOURCE_NAME, GcpSettings, GcpVolume, parse_volumes

log = logging.getLogger(__name__)

PERM_CREATE = "compute.disks.createSnapshot"
PERM_GET = "compute.snapshots.get"
PERM_LIST = "compute.snapshots.list"
PERM_DELETE = "compute.snapshots.delete"
PERM_RESTORE = "compute.disks.create"
PERM_DISK_GET = "compute.disks.get"
PERM_DISK_DELETE = "compute.disks.delete"
PERM_DISK_LIST = "compute.disks.list"
PERM_ATTACH = "compute.instances.attachDisk"  # and compute.disks.use on the disk
PERM_DETACH = "compute.instances.detachDisk"
PERM_INSTANCE_GET = "compute.instances.get"
DISK_PATH = re.compile(r"(?:^|/)projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/disks/(?P<disk>[^/]+)$")
TAG_RESTORED_FROM = "snapctl-restored-from"
TAG_ATTACHED_TO = "snapctl-attached-to"  # on a restored disk: the instance restore attached it to
INSTANCE_PATH = re.compile(r"^(?:(?:.*/)?projects/(?P<project>[^/]+)/)?(?:zones/(?P<zone>[^/]+)/instances/)?"
                           r"(?P<instance>[^/]+)$")
DEVICE_PREFIX = "/dev/disk/by-id/google-"
CAPTURED = frozenset({"UPLOADING", "READY"})
# DELETING is no step towards READY: a snapshot on its way out is as unusable as a failed one.
STATES = {"READY": "completed", "FAILED": "error", "DELETING": "error"}


class GcpProvider:
    name = "gcp"
    settings_model = GcpSettings
    restore_makes_cloud_volumes = True  # a drill needs a scratch agent on the instance they are attached to
    restore_place_optional = True  # a restore without a zone goes to the source disk's zone
    # What warm_up imports: the provider worker imports it once, before it forks (snapctl.providers).
    sdk_modules = ("google.auth", "google.auth.transport.requests", "google.api_core.client_options",
                   "google.api_core.exceptions", "google.cloud.compute_v1")

    def __init__(self, settings: GcpSettings, *, cluster: str, base_dir: Path, api: GcpApi | None = None) -> None:
        self.settings = settings
        self.cluster = cluster
        self.api = api or GcpApi(settings)  # builds no SDK client until the first call
        self.capabilities = Capabilities(crash_consistent_group=False, incremental=True, instant=False,
                                         max_creates_per_s=settings.create_rate, create_burst=settings.create_burst)

    def validate_volumes(self, node: str, raw: list[Any], *, base_dir: Path) -> NodeVolumes:
        return NodeVolumes(node, parse_volumes(node, raw))

    def warm_up(self) -> None:
        # google-cloud-compute's import is 1.6-1.8 s of CPU: never inside a hold.
        self.api.warm_up()

    # --- snapshot ----------------------------------------------------------------------------
    def snapshot(self, volumes: NodeVolumes, tags: Mapping[str, str]) -> list[SnapshotRef]:
        check_cluster_tag(self.cluster, volumes.node, tags)
        created: list[SnapshotRef] = []
        lock = threading.Lock()
        workers = max(1, min(8, len(volumes.volumes)))
        with ThreadPoolExecutor(workers, thread_name_prefix="gcp-snapshot") as pool:
            futures = [pool.submit(self._snapshot_volume, volumes.node, vol, tags, created, lock)
                       for vol in volumes.volumes]
        outcomes: list[Any] = [f.exception() or f.result() for f in futures]
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            discard_partial_snapshots(self, volumes.node, created, tags)
            first = failures[0]
            if isinstance(first, SnapctlError):
                raise first
            raise ProviderError(f"gcp snapshot of node {volumes.node}: {type(first).__name__}: {first}") from first
        return outcomes

    def _snapshot_volume(self, node: str, vol: GcpVolume, tags: Mapping[str, str], created: list[SnapshotRef],
                         lock: threading.Lock) -> SnapshotRef:
        raw_tags = {**tags, TAG_CLUSTER: self.cluster, TAG_NODE: tags.get(TAG_NODE, node), TAG_VOLUME: vol.name}
        deadline = time.monotonic() + self.settings.capture_timeout_s
        for attempt in itertools.count():
            ref, op = self._create(node, vol, raw_tags, deadline)
            with lock:
                created.append(ref)
            failure = self._await_capture(ref, op, deadline)
            if failure is None:
                return ref
            code, message = failure
            wait = self.api.backoff(attempt)
            retry = attempt < self.settings.max_retries and time.monotonic() + wait < deadline
            if code in RATE_OPERATION_CODES and retry:
                # Refused as too frequent: nothing was captured, so a new create (new request id) may pass.
                log.info("gcp snapshot of %s refused (%s), retrying in %.1fs", vol.disk, code, wait)
                self.api.sleep(wait)
                continue
            raise ProviderError(f"gcp snapshot of disk {vol.disk} ({node}/{vol.name}) failed: {message}",
                                hint=_hint_for(code))
        raise AssertionError("unreachable")

    def _create(self, node: str, vol: GcpVolume, raw_tags: dict[str, str], deadline: float) -> tuple[SnapshotRef, Any]:
        types, disks = self.api.types, self.api.client("disks")
        name = snapshot_name(self.cluster, node, vol.name)
        resource = types.Snapshot(name=name, labels=labels_for(raw_tags, self.settings.labels),
                                  description=description_for(raw_tags),
                                  storage_locations=self.settings.storage_locations)
        # One request id for every retry of this create: GCP then acts on it once.
        request = types.CreateSnapshotDiskRequest(project=self.api.project, zone=vol.zone, disk=vol.disk,
                                                  snapshot_resource=resource, request_id=str(uuid.uuid4()))
        if self.settings.guest_flush:
            request.guest_flush = True
        timeout = self.settings.request_timeout_s
        op = self.api.call(f"create snapshot of disk {vol.disk} in {vol.zone}", PERM_CREATE, deadline=deadline,
                           bucket=self.api.create_bucket,
                           fn=lambda: disks.create_snapshot_unary(request=request, retry=None, timeout=timeout))
        ref = SnapshotRef(provider=self.name, snapshot_id=name, node=node, volume=vol.name, tags=raw_tags,
                          created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          extra={"project": self.api.project, "zone": vol.zone, "disk": vol.disk,
                                 "operation": op.name, "request_id": request.request_id})
        return ref, op

    def _await_capture(self, ref: SnapshotRef, op: Any, deadline: float) -> tuple[str, str] | None:
        """None once the disk content is captured; (code, message) when the create failed."""
        done, zone = self.api.types.Operation.Status.DONE, ref.extra["zone"]
        status = "CREATING"
        while True:
            if op.status != done:
                op = self.api.poll_operation(op, zone=zone, action=f"snapshot {ref.snapshot_id}")
            failure = operation_error(op) if op.status == done else None
            if failure:
                return failure
            snap = self._get(ref.snapshot_id, deadline)
            status = snap.status if snap is not None else "CREATING"
            if status in CAPTURED:
                return None
            if status == "FAILED":
                return self._failure(ref) or ("FAILED", "the snapshot ended FAILED")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProviderError(f"gcp snapshot {ref.snapshot_id}: disk content not captured within "
                                    f"{self.settings.capture_timeout_s:g}s (status {status})",
                                    hint="raise the provider's capture_timeout_s; GCP may be busy with this disk")
            self.api.sleep(min(self.settings.poll_interval_s, remaining))

    # --- wait --------------------------------------------------------------------------------
    def wait(self, refs: list[SnapshotRef], deadline: float, progress: ProgressFn | None = None) -> list[SnapshotRef]:
        current = list(refs)
        pending = {i for i, ref in enumerate(current) if ref.state != "completed"}
        while True:
            for index in sorted(pending):
                ref = current[index]
                snap = self._get(ref.snapshot_id, deadline)
                where = f"gcp snapshot {ref.snapshot_id} ({ref.node}/{ref.volume})"
                if snap is None or snap.status == "DELETING":
                    raise ProviderError(f"{where} no longer exists" if snap is None else f"{where}: {BEING_DELETED}",
                                        hint="it was deleted while snapctl waited for it")
                if snap.status == "FAILED":
                    code, message = self._failure(ref) or ("FAILED", "the snapshot ended FAILED")
                    raise ProviderError(f"{where} failed: {message}", hint=_hint_for(code))
                updated = self._refresh(ref, snap)
                if updated != ref:
                    current[index] = updated
                    if progress is not None:
                        progress(updated)
                if updated.state == "completed":
                    pending.discard(index)
            if not pending:
                return current
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                ids = ", ".join(current[i].snapshot_id for i in sorted(pending))
                raise ProviderError(f"gcp: snapshots not READY by the deadline: {ids}",
                                    hint="they keep uploading; raise policy.wait_timeout_s or check them later")
            self.api.sleep(min(self.settings.poll_interval_s, remaining))

    def _refresh(self, ref: SnapshotRef, snap: Any) -> SnapshotRef:
        ready = snap.status == "READY"
        return ref.model_copy(update={
            "state": STATES.get(snap.status, "pending"),
            "progress": 100.0 if ready else ref.progress,
            "bytes": int(snap.storage_bytes) if ready and snap.storage_bytes else ref.bytes,
            "extra": {**ref.extra, "status": snap.status},
        })

    def _failure(self, ref: SnapshotRef) -> tuple[str, str] | None:
        """The failed create operation's error: GCP keeps the reason there, not on the snapshot."""
        name, zone = ref.extra.get("operation"), ref.extra.get("zone")
        if not name or not zone:
            return None
        op = self.api.poll_operation(_Named(name), zone=zone, action=f"read the error of snapshot {ref.snapshot_id}")
        return operation_error(op)

    def _get(self, name: str, deadline: float | None = None) -> Any:
        snapshots, timeout = self.api.client("snapshots"), self.settings.request_timeout_s
        return self.api.call(f"get snapshot {name}", PERM_GET, deadline=deadline, missing_ok=True,
                             fn=lambda: snapshots.get(project=self.api.project, snapshot=name, retry=None,
                                                      timeout=timeout))

    # --- delete, find ------------------------------------------------------------------------
    def delete(self, ref: SnapshotRef) -> None:
        name = ref.snapshot_id
        snap = self._get(name)
        if snap is None:
            return
        if snap.labels.get(TAG_CLUSTER) != encode_label(self.cluster):
            raise ProviderError(f"refusing to delete gcp snapshot {name}: "
                                f"it is not labelled {TAG_CLUSTER}={self.cluster}",
                                hint="snapctl deletes only snapshots it made for this cluster")
        deadline = time.monotonic() + self.settings.operation_timeout_s
        request = self.api.types.DeleteSnapshotRequest(project=self.api.project, snapshot=name,
                                                       request_id=str(uuid.uuid4()))
        snapshots, timeout = self.api.client("snapshots"), self.settings.request_timeout_s
        op = self.api.call(f"delete snapshot {name}", PERM_DELETE, deadline=deadline, missing_ok=True,
                           fn=lambda: snapshots.delete_unary(request=request, retry=None, timeout=timeout))
        if op is not None:
            self._finish(op, None, f"delete snapshot {name}", deadline, gone_ok=True)

    def find(self, tags: Mapping[str, str]) -> list[SnapshotRef]:
        wanted = {**tags, TAG_CLUSTER: self.cluster}
        request = self.api.types.ListSnapshotsRequest(project=self.api.project, filter=filter_for(wanted),
                                                      max_results=500)
        snapshots, timeout = self.api.client("snapshots"), self.settings.request_timeout_s
        items = self.api.call("list snapshots", PERM_LIST,
                              fn=lambda: list(snapshots.list(request=request, retry=None, timeout=timeout)))
        refs = []
        for snap in items or []:
            raw = tags_of(snap.description, snap.labels)
            if all(raw.get(k) == v for k, v in wanted.items()):  # labels may be digests: confirm on raw tags
                refs.append(self._ref_from(snap, raw))
        return refs

    def describe(self, refs: Sequence[SnapshotRef]) -> list[SnapshotRef]:
        found = []
        for ref in refs:
            snap = self._get(ref.snapshot_id)
            if snap is not None:
                found.append(self._ref_from(snap, _as_labelled(snap)))
        return found

    def _ref_from(self, snap: Any, raw: dict[str, str]) -> SnapshotRef:
        source = re.search(r"zones/([^/]+)/disks/([^/]+)$", snap.source_disk or "")
        extra: dict[str, Any] = {"project": self.api.project, "status": snap.status}
        if source:
            extra.update(zone=source[1], disk=source[2])
        return SnapshotRef(provider=self.name, snapshot_id=snap.name, node=raw.get(TAG_NODE, ""),
                           volume=raw.get(TAG_VOLUME, ""), state=STATES.get(snap.status, "pending"),
                           progress=100.0 if snap.status == "READY" else None,
                           bytes=int(snap.storage_bytes) if snap.storage_bytes else None,
                           created_at=snap.creation_timestamp or None, tags=raw, extra=extra,
                           error=BEING_DELETED if snap.status == "DELETING" else None)

    # --- restore -----------------------------------------------------------------------------
    def restore(self, ref: SnapshotRef, target: RestoreTarget) -> str:
        """A new disk from the snapshot in ``target.zone`` (default: the zone of ``target.instance``
        when it names one, else the source disk's). ``target.extra`` may carry ``disk_type`` (e.g.
        pd-ssd) and ``size_gb``. With ``target.instance`` the disk is attached to it, as device
        ``target.device`` (default: the disk's name); an attach that fails deletes the disk."""
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
            disk.size_gb = int(target.extra["size_gb"])
        request = types.InsertDiskRequest(project=self.api.project, zone=zone, disk_resource=disk,
                                          request_id=str(uuid.uuid4()))
        action, timeout = f"create disk {name} from snapshot {ref.snapshot_id}", self.settings.request_timeout_s
        op = self.api.call(action, PERM_RESTORE, deadline=deadline,
                           fn=lambda: disks.insert_unary(request=request, retry=None, timeout=timeout))
        self._finish(op, zone, action, deadline)
        made = f"projects/{self.api.project}/zones/{zone}/disks/{name}"
        if instance:
            assert device is not None
            try:
                self._attach(zone, instance[1], name, device, deadline)
            except BaseException:  # Ctrl-C and SIGTERM too: a disk attached nowhere is only a cost
                discard_restored_volume(self, made)
                raise
        return made

    def check_restore(self, ref: SnapshotRef, target: RestoreTarget) -> None:
        """What ``restore`` would refuse, making nothing: `snapctl restore` asks for every volume
        of a run first, so that a snapshot gone or failed is not found after other disks were made."""
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

    def _attach(self, zone: str, instance: str, disk: str, device: str, deadline: float) -> None:
        types, instances = self.api.types, self.api.client("instances")
        attached = types.AttachedDisk(source=f"projects/{self.api.project}/zones/{zone}/disks/{disk}",
                                      device_name=device, mode="READ_WRITE", auto_delete=False)
        request = types.AttachDiskInstanceRequest(project=self.api.project, zone=zone, instance=instance,
                                                  attached_disk_resource=attached, request_id=str(uuid.uuid4()))
        action, timeout = f"attach disk {disk} to instance {instance} in {zone}", self.settings.request_timeout_s
        op = self.api.call(action, PERM_ATTACH, deadline=deadline,
                           fn=lambda: instances.attach_disk_unary(request=request, retry=None, timeout=timeout))
        self._finish(op, zone, action, deadline)

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

    def _finish(self, op: Any, zone: str | None, action: str, deadline: float, *, gone_ok: bool = False) -> None:
        """Wait for ``op`` and raise what it failed with; ``gone_ok``: a resource already gone is done."""
        op = self.api.wait_operation(op, zone=zone, action=action, deadline=deadline)
        failure = operation_error(op)
        if failure and not (gone_ok and failure[0] in ("RESOURCE_NOT_FOUND", "404")):
            raise ProviderError(f"gcp {action} failed: {failure[1]}", hint=_hint_for(failure[0]))

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


def _as_labelled(snap: Any) -> dict[str, str]:
    """A snapshot's tags as ``find`` matches them, by label: its description keeps the tags it was
    made with, whatever was relabelled or unlabelled since."""
    raw = {}
    for key, value in tags_of(snap.description, snap.labels).items():
        label = snap.labels.get(encode_key(key))
        if label == encode_label(value):
            raw[key] = value
        elif label is not None and (now := decode_label(label)) is not None:
            raw[key] = now
    return raw


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


def _device_name(device: str | None, *, default: str) -> str:
    """The attached disk's device name (the guest sees /dev/disk/by-id/google-NAME)."""
    name = (device or default).removeprefix(DEVICE_PREFIX)
    if not re.match(RESOURCE_NAME, name):
        raise BadInputError(f"gcp restore: {device!r} is not a device name",
                            hint=f"lowercase letters, digits and '-', at most 63, or {DEVICE_PREFIX}NAME; "
                                 "unset, the disk's name")
    return name


class _Named:
    """An operation known only by name (what a SnapshotRef keeps)."""

    def __init__(self, name: str) -> None:
        self.name = name


def _hint_for(code: str) -> str | None:
    if code in RATE_OPERATION_CODES:
        return "GCP limits how often one disk may be snapshotted; wait a few minutes before the next run"
    if code == "QUOTA_EXCEEDED":
        return "a project quota (e.g. SNAPSHOTS) is exhausted; delete old snapshots or ask for more quota"
    return None
