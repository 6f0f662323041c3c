"""AzureProvider: incremental snapshots of managed disks (azure-mgmt-compute).

An incremental snapshot's content is fixed when ARM accepts the PUT (200/202), so snapshot()
returns right after the initial response (``polling=False``: no poller thread left behind) and
wait() follows ``provisioning_state`` and, for background copies, ``completion_percent`` and
``snapshot_access_state``. A failed snapshot keeps its reason in the PUT's async operation, whose
URL the ref carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from snapctl.errors import BadInputError, ProviderError, SnapshotNotFound
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
    stop_requested,
)
from snapctl.timestamps import utc_text
from snapctl_azure.aio import ASYNC_SDK_MODULES, AsyncArm, import_async_sdk
from snapctl_azure.client import AzureApi
from snapctl_azure.errors import refused_before_landing, translate
from snapctl_azure.put import SnapshotPut, snapshot_id
from snapctl_azure.settings import (
    DISK_ID,
    RESOURCE_NAME,
    SNAPSHOT_ID,
    VM_ID,
    AzureSettings,
    AzureVolume,
    parse_volumes,
)

log = logging.getLogger(__name__)

PERM_CREATE = "Microsoft.Compute/snapshots/write"
PERM_READ = "Microsoft.Compute/snapshots/read"
PERM_DELETE = "Microsoft.Compute/snapshots/delete"
PERM_RESTORE = "Microsoft.Compute/disks/write"
PERM_DISK_READ = "Microsoft.Compute/disks/read"
PERM_DISK_DELETE = "Microsoft.Compute/disks/delete"
PERM_VM_READ = "Microsoft.Compute/virtualMachines/read"
PERM_VM_WRITE = "Microsoft.Compute/virtualMachines/write"
TAG_RESTORED_FROM = "snapctl-restored-from"
DISKS = "providers/Microsoft.Compute/disks"
TAG_ATTACHED_TO = "snapctl-attached-to"  # on a restored disk: the vm restore attached it to


class AzureProvider:
    name = "azure"
    settings_model = AzureSettings
    restore_makes_cloud_volumes = True  # a drill needs a scratch agent on the instance they are attached to
    restore_place_optional = True  # a restore without a zone goes to the provider's location, zoneless
    # What warm_up imports: the provider worker imports it once, before it forks (snapctl.providers).
    sdk_modules = ("azure.identity", "azure.core.rest", "azure.core.pipeline.policies", "azure.mgmt.compute",
                   "azure.mgmt.compute.models", *ASYNC_SDK_MODULES)

    def __init__(self, settings: AzureSettings, *, cluster: str, base_dir: Path, credential: Any | None = None) -> None:
        self.settings = settings
        self.cluster = cluster
        self.api = AzureApi(settings, credential)  # builds no SDK client until the first call
        self._aio = AsyncArm(self.api)  # nor this one (a backup's creates, on snapctl's event loop)
        self.capabilities = Capabilities(crash_consistent_group=False, incremental=True, instant=False,
                                         max_creates_per_s=settings.create_rate, create_burst=settings.create_burst)

    def validate_volumes(self, node: str, raw: list[Any], *, base_dir: Path) -> NodeVolumes:
        return NodeVolumes(node, parse_volumes(node, raw))

    def warm_up(self) -> None:
        # The SDK's import, its models and the credential chain (which may probe the instance
        # metadata service or run the az CLI): never inside a hold.
        from azure.mgmt.compute.models import CreationData, Snapshot  # noqa: F401 - what SnapshotPut imports

        import_async_sdk()  # here, in a thread: snapshot_async must import nothing on the loop
        _ = self._snapshots
        self.api.warm_up()

    # --- snapshot ----------------------------------------------------------------------------
    def snapshot(self, volumes: NodeVolumes, tags: Mapping[str, str]) -> list[SnapshotRef]:
        check_cluster_tag(self.cluster, volumes.node, tags)
        created: list[SnapshotRef] = []
        try:
            # One after another: each PUT returns as soon as ARM accepted it.
            for vol in volumes.volumes:
                created.append(self._create(volumes.node, vol, tags))
        except BaseException:
            discard_partial_snapshots(self, volumes.node, created, tags)
            raise
        return created

    def _create(self, node: str, vol: AzureVolume, tags: Mapping[str, str]) -> SnapshotRef:
        put = SnapshotPut(self.settings, self.cluster, node, vol, tags)
        self.api.create_bucket.acquire()
        # A retried PUT of the same name is idempotent: no duplicate snapshot can come of it.
        rg, snapshots = self.settings.resource_group, self._snapshots
        self.api.call(put.action, PERM_CREATE, lambda: snapshots.begin_create_or_update(
            rg, put.name, put.model, polling=False, raw_response_hook=put.remember_operation))
        return put.ref()

    # --- snapshot on snapctl's event loop (aio.py says why) ----------------------------------
    async def warm_up_async(self) -> None:
        client = await self._aio.client()
        if self._aio.asked:
            return
        # Its first request sets up the async client's own TLS context, proxy and connection: one
        # read that changes nothing (the first page of the resource group's snapshots), rather than
        # the first create call with every node held.
        try:
            async for _ in client.snapshots.list_by_resource_group(self.settings.resource_group).by_page():
                break
        except Exception as exc:  # translated here, whatever the SDK raised
            raise translate(exc, "list snapshots", PERM_READ) from exc
        self._aio.asked = True

    async def snapshot_async(self, volumes: NodeVolumes, tags: Mapping[str, str]) -> list[SnapshotRef]:
        """``snapshot`` with the aio client: no blocking call on the loop (a failed node's
        leftovers are deleted by the sync client, in a thread)."""
        check_cluster_tag(self.cluster, volumes.node, tags)
        created: list[SnapshotRef] = []
        try:
            for vol in volumes.volumes:
                created.append(await self._create_async(volumes.node, vol, tags))
        except BaseException:
            await asyncio.to_thread(discard_partial_snapshots, self, volumes.node, created, tags)
            raise
        return created

    async def _create_async(self, node: str, vol: AzureVolume, tags: Mapping[str, str]) -> SnapshotRef:
        put = SnapshotPut(self.settings, self.cluster, node, vol, tags)
        client = await self._aio.client()
        wait = self.api.create_bucket.reserve()
        if wait:
            await asyncio.sleep(wait)
        try:
            await client.snapshots.begin_create_or_update(self.settings.resource_group, put.name, put.model,
                                                          polling=False, raw_response_hook=put.remember_operation)
        except Exception as exc:  # translated here, whatever the SDK raised
            raise translate(exc, put.action, PERM_CREATE) from exc
        return put.ref()

    async def aclose(self) -> None:
        await self._aio.close()

    @property
    def _snapshots(self) -> Any:
        return self.api.client.snapshots

    def _snapshot_id(self, name: str) -> str:
        return snapshot_id(self.settings, name)

    def _locate(self, ref: SnapshotRef) -> tuple[str, str]:
        match = SNAPSHOT_ID.match(ref.snapshot_id)
        if not match:
            raise BadInputError(f"{ref.snapshot_id!r} is not an azure snapshot id")
        if match["sub"].lower() != self.settings.subscription_id.lower():
            raise ProviderError(f"azure snapshot {ref.snapshot_id} is in another subscription",
                                hint="use an inventory whose provider has that subscription_id")
        return match["rg"], match["name"]

    # --- wait --------------------------------------------------------------------------------
    def wait(self, refs: list[SnapshotRef], deadline: float, progress: ProgressFn | None = None) -> list[SnapshotRef]:
        current = list(refs)
        pending = {i for i, ref in enumerate(current) if ref.state != "completed"}
        while True:
            for index in sorted(pending):
                ref = current[index]
                snap = self._get(ref)
                where = f"azure snapshot {ref.extra.get('name') or ref.snapshot_id} ({ref.node}/{ref.volume})"
                if snap is None or snap.provisioning_state == "Deleting":
                    raise ProviderError(f"{where} no longer exists" if snap is None else f"{where}: {BEING_DELETED}",
                                        hint="it was deleted while snapctl waited for it")
                if snap.provisioning_state == "Failed":
                    raise ProviderError(f"{where} failed: {self._failure(ref)}")
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
                ids = ", ".join(current[i].snapshot_id.rsplit("/", 1)[-1] for i in sorted(pending))
                raise ProviderError(f"azure: snapshots not complete by the deadline: {ids}",
                                    hint="they keep copying; raise policy.wait_timeout_s or check them later")
            time.sleep(min(self.settings.polling_interval_s, remaining))

    def _refresh(self, ref: SnapshotRef, snap: Any) -> SnapshotRef:
        percent = snap.completion_percent
        done = (snap.provisioning_state == "Succeeded" and (percent is None or percent >= 100)
                and (snap.snapshot_access_state or "") != "Pending")
        deleting = snap.provisioning_state == "Deleting"  # no step towards complete: as unusable as failed
        failed = snap.provisioning_state == "Failed" or deleting
        return ref.model_copy(update={
            "state": "completed" if done else ("error" if failed else "pending"),
            "error": BEING_DELETED if deleting else ref.error,
            "progress": float(percent) if percent is not None else (100.0 if done else ref.progress),
            "bytes": snap.disk_size_bytes if done and snap.disk_size_bytes else ref.bytes,
            "extra": {**ref.extra, "provisioning_state": snap.provisioning_state},
        })

    def _failure(self, ref: SnapshotRef) -> str:
        """The cloud's reason, from the PUT's async operation (the snapshot itself only says Failed)."""
        url = ref.extra.get("operation")
        for _ in range(3 if url else 0):  # the operation may trail the resource by a moment
            body = self.api.get_json(url, f"read the error of snapshot {ref.extra.get('name')}", PERM_READ) or {}
            error = body.get("error") or {}
            if error.get("message"):
                return f"{error.get('code') or 'Failed'}: {error['message']}"
            if body.get("status") != "InProgress":
                break
            time.sleep(self.settings.polling_interval_s)
        return "provisioning state Failed (azure gave no reason)"

    def _get(self, ref: SnapshotRef) -> Any:
        rg, name = self._locate(ref)
        return self.api.call(f"get snapshot {name}", PERM_READ, lambda: self._snapshots.get(rg, name), missing_ok=True)

    # --- delete, find ------------------------------------------------------------------------
    def delete(self, ref: SnapshotRef) -> None:
        rg, name = self._locate(ref)
        snap = self._get(ref)
        if snap is None:
            return
        if (snap.tags or {}).get(TAG_CLUSTER) != self.cluster:
            raise ProviderError(f"refusing to delete azure snapshot {name}: "
                                f"it is not tagged {TAG_CLUSTER}={self.cluster}",
                                hint="snapctl deletes only snapshots it made for this cluster")
        action = f"delete snapshot {name}"
        poller = self.api.call(action, PERM_DELETE, lambda: self._snapshots.begin_delete(rg, name), missing_ok=True)
        if poller is None:
            return
        timeout = self.settings.operation_timeout_s
        self.api.call(action, PERM_DELETE, lambda: poller.result(timeout=timeout), missing_ok=True)
        if not poller.done():
            raise ProviderError(f"azure {action}: still running after {self.settings.operation_timeout_s:g}s",
                                hint="raise the provider's operation_timeout_s; the delete goes on in Azure")

    def find(self, tags: Mapping[str, str]) -> list[SnapshotRef]:
        wanted = {**tags, TAG_CLUSTER: self.cluster}
        rg = self.settings.resource_group
        # ARM's list has no tag filter for snapshots: filter here (one resource group, paged).
        items = self.api.call("list snapshots", PERM_READ, lambda: list(self._snapshots.list_by_resource_group(rg)))
        # One carrying snapctl-restored-from was made of a restored disk, copying its tags (which
        # include this cluster's): someone else's snapshot, never snapctl's, so no run's and no orphan.
        return [self._ref_from(s) for s in items or [] if TAG_RESTORED_FROM not in (s.tags or {})
                and all((s.tags or {}).get(k) == v for k, v in wanted.items())]

    def describe(self, refs: Sequence[SnapshotRef]) -> list[SnapshotRef]:
        return [self._ref_from(snap) for ref in refs if (snap := self._get(ref)) is not None]

    def _ref_from(self, snap: Any) -> SnapshotRef:
        tags = dict(snap.tags or {})
        # The id as _create records it, not as ARM spells it: ids are case-insensitive and the
        # Compute provider often answers the resource group in capitals, which compared as a
        # string with the manifest's would make every snapshot missing to verify, an orphan to gc.
        ref = SnapshotRef(provider=self.name, snapshot_id=self._snapshot_id(snap.name), node=tags.get(TAG_NODE, ""),
                          volume=tags.get(TAG_VOLUME, ""), tags=tags,
                          created_at=utc_text(snap.time_created) if snap.time_created else None,
                          extra={"resource_group": self.settings.resource_group, "name": snap.name,
                                 "disk_id": getattr(snap.creation_data, "source_resource_id", None)})
        return self._refresh(ref, snap)

    # --- restore -----------------------------------------------------------------------------
    def restore(self, ref: SnapshotRef, target: RestoreTarget) -> str:
        """A new managed disk from the snapshot in the provider's resource group and location, in
        availability zone ``target.zone`` (default: the zone of ``target.instance``, if it has one;
        else none); ``target.extra`` may carry ``sku``. With ``target.instance`` (a VM name in the
        provider's resource group, or a VM resource id) the disk is attached to it at LUN
        ``target.device`` (default: the lowest free one). A restore that fails once the PUT was
        sent (its answer lost, its operation past the timeout, the attach; Ctrl-C and SIGTERM too)
        deletes the disk."""
        from azure.mgmt.compute.models import CreationData, Disk, DiskSku

        vm_group, vm_name = self._vm_location(target.instance) if target.instance else (None, None)
        lun = _lun(target.device) if target.instance else None
        name = target.name or f"{ref.snapshot_id.rsplit('/', 1)[-1][:70]}-r{uuid.uuid4().hex[:6]}"
        if not RESOURCE_NAME.match(name):
            raise BadInputError(f"azure restore: {name!r} is not a valid disk name",
                                hint="letters, digits, _ . -, at most 80")
        zone, vm_id = target.zone, None
        if vm_name:
            vm = self._get_vm(vm_group, vm_name)
            vm_id, zone = vm.id, zone or next(iter(vm.zones or []), None)
        deadline = time.monotonic() + self.settings.operation_timeout_s
        self.wait([ref], deadline)  # a disk can only be copied from a complete snapshot
        tags = {**target.tags, TAG_CLUSTER: self.cluster, TAG_RESTORED_FROM: ref.snapshot_id}
        if vm_id:
            tags[TAG_ATTACHED_TO] = vm_id  # what delete_volume may detach it from, and nothing else
        disk = Disk(location=self.settings.location, tags=tags,
                    creation_data=CreationData(create_option="Copy", source_resource_id=ref.snapshot_id))
        if zone:
            disk.zones = [zone]
        if target.extra.get("sku"):
            disk.sku = DiskSku(name=target.extra["sku"])
        rg, disks = self.settings.resource_group, self.api.client.disks
        # A PUT to a disk that exists changes it: a name given must be free, so that a disk found
        # by it after a failure below is this restore's to delete.
        if target.name and self.api.call(f"get disk {name}", PERM_DISK_READ, lambda: disks.get(rg, name),
                                         missing_ok=True) is not None:
            raise BadInputError(f"azure restore: a disk named {name} already exists in resource group {rg}",
                                hint="give the restore another name, or delete that disk if it is a leftover")
        action = f"create disk {name} from snapshot {ref.snapshot_id.rsplit('/', 1)[-1]}"
        made_id, poller = f"/subscriptions/{self.settings.subscription_id}/resourceGroups/{rg}/{DISKS}/{name}", None
        try:
            poller = self.api.call(action, PERM_RESTORE, lambda: disks.begin_create_or_update(rg, name, disk))
            made = self.api.result(poller, action, PERM_RESTORE, deadline, stop=stop_requested())
            if not poller.done() or made is None:
                raise ProviderError(f"azure {action}: still running after {self.settings.operation_timeout_s:g}s",
                                    hint="raise the provider's operation_timeout_s; the disk is still being made")
            made_id = made.id
            if vm_name:
                self._attach(vm_group, vm_name, made_id, lun, deadline)
        except BaseException as exc:  # Ctrl-C and SIGTERM too: a half-made restore leaves no disk behind
            if poller is not None:  # the disk is in the making until its PUT is done: waited for, briefly
                with contextlib.suppress(Exception):  # the delete says what stands in its way
                    poller.result(timeout=DISCARD_WAIT_S)
            if poller is not None or not refused_before_landing(exc):  # one refused made nothing to look for
                discard_restored_volume(self, made_id)  # a PUT that never landed: found gone, nothing to do
            raise
        return made_id

    def check_restore(self, ref: SnapshotRef, target: RestoreTarget) -> None:
        """What ``restore`` would refuse, making nothing: `snapctl restore` asks for every volume
        of a run first, so that a snapshot gone or failed is not found after other disks were made."""
        if target.instance:
            _lun(target.device)
            self._get_vm(*self._vm_location(target.instance))  # not found: refused before any disk is made
        snap = self._get(ref)
        name = ref.extra.get("name") or ref.snapshot_id.rsplit("/", 1)[-1]
        if snap is None:
            raise SnapshotNotFound(f"node {ref.node}: azure snapshot {name} of volume {ref.volume} no longer exists",
                                   hint=GONE_HINT)
        if snap.provisioning_state in ("Failed", "Deleting"):
            why = "failed" if snap.provisioning_state == "Failed" else BEING_DELETED.removeprefix("the snapshot ")
            raise ProviderError(f"node {ref.node}: azure snapshot {name} of volume {ref.volume} {why}; it cannot be "
                                "restored", hint=GONE_HINT)

    def _vm_location(self, instance: str) -> tuple[str, str]:
        """(resource group, name) of a VM given by name (in the provider's group) or resource id."""
        match = VM_ID.match(instance)
        if match:
            if match["sub"].lower() != self.settings.subscription_id.lower():
                raise BadInputError(f"azure vm {instance} is in another subscription",
                                    hint="attach to a vm of the provider's subscription")
            return match["rg"], match["name"]
        if not RESOURCE_NAME.match(instance):
            raise BadInputError(f"{instance!r} is not an azure vm",
                                hint="restore.instance takes a vm name (in the provider's resource_group) or its "
                                     "resource id /subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/"
                                     "virtualMachines/NAME")
        return self.settings.resource_group, instance

    def _get_vm(self, rg: str, name: str, *, missing_ok: bool = False) -> Any:
        vms = self.api.client.virtual_machines
        vm = self.api.call(f"get vm {name}", PERM_VM_READ, lambda: vms.get(rg, name), missing_ok=True)
        if vm is None and not missing_ok:
            raise ProviderError(f"azure vm {name} not found in resource group {rg}",
                                hint="restore.instance names the vm to attach restored disks to")
        return vm

    def _set_data_disks(self, rg: str, name: str, data_disks: list[Any], action: str, deadline: float) -> None:
        from azure.mgmt.compute.models import StorageProfile, VirtualMachineUpdate

        vms = self.api.client.virtual_machines
        update = VirtualMachineUpdate(storage_profile=StorageProfile(data_disks=data_disks))
        poller = self.api.call(action, PERM_VM_WRITE, lambda: vms.begin_update(rg, name, update))
        remaining = max(1.0, deadline - time.monotonic())
        self.api.call(action, PERM_VM_WRITE, lambda: poller.result(timeout=remaining))
        if not poller.done():
            raise ProviderError(f"azure {action}: still running after {self.settings.operation_timeout_s:g}s",
                                hint="raise the provider's operation_timeout_s; the vm is still being updated")

    def _attach(self, rg: str, name: str, disk_id: str, lun: int | None, deadline: float) -> None:
        from azure.mgmt.compute.models import DataDisk, ManagedDiskParameters

        # A VM's data disks are one list, read and written whole: one change at a time per VM
        # (a drill attaches its nodes' disks in parallel; they may share a scratch VM).
        with _vm_lock(rg, name):
            data_disks = list(self._get_vm(rg, name).storage_profile.data_disks or [])
            used = {d.lun for d in data_disks}
            if lun is None:
                lun = next((n for n in range(MAX_LUNS) if n not in used), None)
                if lun is None:
                    raise ProviderError(f"azure vm {name} has no free lun for disk {disk_id.rsplit('/', 1)[-1]}",
                                        hint="detach a data disk from it, or attach to another vm")
            elif lun in used:
                raise BadInputError(f"azure vm {name}: lun {lun} is in use",
                                    hint="set another restore.device/devices lun, or leave it unset for a free one")
            data_disks.append(DataDisk(lun=lun, create_option="Attach", managed_disk=ManagedDiskParameters(id=disk_id)))
            self._set_data_disks(rg, name, data_disks, f"attach disk {disk_id.rsplit('/', 1)[-1]} to vm {name}",
                                 deadline)

    def _detach(self, vm_id: str, disk_id: str, deadline: float) -> None:
        match = VM_ID.match(vm_id)
        if not match:
            return
        rg, name = match["rg"], match["name"]
        with _vm_lock(rg, name):
            vm = self._get_vm(rg, name, missing_ok=True)
            data_disks = list(vm.storage_profile.data_disks or []) if vm is not None else []
            kept = [d for d in data_disks
                    if ((d.managed_disk.id if d.managed_disk else "") or "").lower() != disk_id.lower()]
            if len(kept) == len(data_disks):
                return  # detached meanwhile, or the vm is gone
            self._set_data_disks(rg, name, kept, f"detach disk {disk_id.rsplit('/', 1)[-1]} from vm {name}", deadline)

    def find_restored(self, tags: Mapping[str, str], places: Sequence[str] = ()) -> list[str]:
        """Managed disks restore made for this cluster carrying ``tags``, in the provider's resource group."""
        wanted = {**tags, TAG_CLUSTER: self.cluster}
        rg, disks = self.settings.resource_group, self.api.client.disks
        items = self.api.call("list disks", PERM_DISK_READ, lambda: list(disks.list_by_resource_group(rg)))
        return sorted(d.id for d in items or [] if TAG_RESTORED_FROM in (d.tags or {})
                      and all((d.tags or {}).get(k) == v for k, v in wanted.items()))

    def delete_volume(self, volume_id: str) -> None:
        """Delete a managed disk ``restore`` made, by its resource id. One it attached is detached
        from that vm first; a disk held by any other vm is someone else's to detach, and is refused."""
        match = DISK_ID.match(volume_id)
        if not match:
            raise BadInputError(f"{volume_id!r} is not an azure managed disk id",
                                hint="expected /subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/disks/NAME")
        if match["sub"].lower() != self.settings.subscription_id.lower():
            raise ProviderError(f"azure disk {volume_id} is in another subscription",
                                hint="use an inventory whose provider has that subscription_id")
        rg, name, disks = match["rg"], match["name"], self.api.client.disks
        disk = self.api.call(f"get disk {name}", PERM_DISK_READ, lambda: disks.get(rg, name), missing_ok=True)
        if disk is None:
            return
        tags = disk.tags or {}
        if tags.get(TAG_CLUSTER) != self.cluster:
            raise ProviderError(f"refusing to delete azure disk {name}: it is not tagged {TAG_CLUSTER}={self.cluster}",
                                hint="snapctl deletes only disks it restored for this cluster")
        deadline = time.monotonic() + self.settings.operation_timeout_s
        holders = list(dict.fromkeys(v for v in [disk.managed_by, *(disk.managed_by_extended or [])] if v))
        ours = tags.get(TAG_ATTACHED_TO, "")
        if holders and {h.lower() for h in holders} == {ours.lower()}:
            self._detach(ours, disk.id or volume_id, deadline)
            holders = []
        vms = [v.rsplit("/", 1)[-1] for v in holders]
        if vms:
            raise ProviderError(f"azure disk {name} is attached to vm {', '.join(vms)}; snapctl did not attach it "
                                "there and will not detach it",
                                hint=f"az vm disk detach -g GROUP --vm-name {vms[0]} --name {name}, then delete it again")
        action = f"delete disk {name}"
        poller = self.api.call(action, PERM_DISK_DELETE, lambda: disks.begin_delete(rg, name), missing_ok=True)
        if poller is None:
            return
        timeout = max(1.0, deadline - time.monotonic())
        self.api.call(action, PERM_DISK_DELETE, lambda: poller.result(timeout=timeout), missing_ok=True)
        if not poller.done():
            raise ProviderError(f"azure {action}: still running after {self.settings.operation_timeout_s:g}s",
                                hint="raise the provider's operation_timeout_s; the delete goes on in Azure")


MAX_LUNS = 64
DISCARD_WAIT_S = 60.0  # how long a half-restored disk's PUT still running is waited for, to delete it
_LUN = re.compile(r"^(?:/dev/disk/azure/scsi1/)?(?:lun)?(\d{1,2})$")
_vm_locks: dict[str, threading.Lock] = {}
_vm_locks_lock = threading.Lock()


def _vm_lock(rg: str, name: str) -> threading.Lock:
    with _vm_locks_lock:
        return _vm_locks.setdefault(f"{rg}/{name}".lower(), threading.Lock())


def _lun(device: str | None) -> int | None:
    """The LUN a restored disk is attached at (the guest sees /dev/disk/azure/scsi1/lunN); None: a free one."""
    if device is None:
        return None
    match = _LUN.match(str(device).strip())
    if not match or int(match[1]) >= MAX_LUNS:
        raise BadInputError(f"azure restore: {device!r} is not a lun",
                            hint="restore.device/devices take a lun 0-63 (or lunN, /dev/disk/azure/scsi1/lunN); "
                                 "unset, the vm's lowest free lun")
    return int(match[1])
