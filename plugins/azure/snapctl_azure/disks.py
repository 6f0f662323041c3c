"""The restore side of the Azure provider: managed disks made from snapshots, attached to a VM
when asked, found again by their tags, and deleted (detached first from the VM restore attached
them to).

A mixin of ``AzureProvider``: it uses the provider's ``api``, ``settings``, ``cluster``, ``wait``
and ``_get``.
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
from snapctl_azure.errors import refused_before_landing
from snapctl_azure.settings import COMPUTE_ID, DISK_ID, MAX_TAG_VALUE, RESOURCE_NAME, VM_ID

if TYPE_CHECKING:
    from snapctl_azure.client import AzureApi
    from snapctl_azure.settings import AzureSettings

PERM_RESTORE = "Microsoft.Compute/disks/write"
PERM_DISK_READ = "Microsoft.Compute/disks/read"
PERM_DISK_DELETE = "Microsoft.Compute/disks/delete"
PERM_VM_READ = "Microsoft.Compute/virtualMachines/read"
PERM_VM_WRITE = "Microsoft.Compute/virtualMachines/write"
DISKS = "providers/Microsoft.Compute/disks"


class RestoredDisks:
    api: AzureApi
    settings: AzureSettings
    cluster: str

    def restore(self, ref: SnapshotRef, target: RestoreTarget) -> str:
        """A new managed disk from the snapshot in the provider's resource group and location, in
        availability zone ``target.zone`` (default: the zone of ``target.instance``, if it has one;
        else none); ``target.extra`` may carry ``sku``. With ``target.instance`` (a VM name in the
        provider's resource group, or a VM resource id) the disk is attached to it at LUN
        ``target.device`` (default: the lowest free one). A restore that fails once the PUT was
        sent (its answer lost, its operation past the timeout, the attach; Ctrl-C and SIGTERM too)
        deletes the disk."""
        from azure.mgmt.compute.models import CreationData, Disk, DiskSku

        _check_options(ref, target)
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
        sub = self.settings.subscription_id
        tags = {**target.tags, TAG_CLUSTER: self.cluster, TAG_RESTORED_FROM: id_as_tag(ref.snapshot_id, sub)}
        if vm_id:
            tags[TAG_ATTACHED_TO] = id_as_tag(vm_id, sub)  # what delete_volume may detach it from, and nothing else
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
        _check_options(ref, target)
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
        ours = id_from_tag(tags.get(TAG_ATTACHED_TO, ""), self.settings.subscription_id, "virtualMachines")
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


def id_as_tag(arm_id: str, subscription: str) -> str:
    """A resource id as a tag value: whole when it fits ARM's 256 characters; else ``rg/name`` in the
    provider's subscription, ``subscription/rg/name`` in another (at most 208 characters). A VM's id
    reaches 266 (a resource group takes 90, a name 64), a snapshot's 276, and ARM refuses the
    disk's PUT over a longer value."""
    if len(arm_id) <= MAX_TAG_VALUE:
        return arm_id
    match = COMPUTE_ID.match(arm_id)
    if match is None:  # no id ARM gives: snapctl made none
        return arm_id[-MAX_TAG_VALUE:]
    short = f"{match['rg']}/{match['name']}"
    return short if match["sub"].lower() == subscription.lower() else f"{match['sub']}/{short}"


def id_from_tag(value: str, subscription: str, kind: str) -> str:
    """The resource id a tag ``id_as_tag`` wrote names, whichever form it took (``kind``: e.g.
    ``virtualMachines``); a value of neither form as it is."""
    parts = value.split("/")
    if value.startswith("/") or not 2 <= len(parts) <= 3 or not all(parts):
        return value
    sub, rg, name = [subscription, *parts] if len(parts) == 2 else parts
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/{kind}/{name}"


MAX_LUNS = 64
DISCARD_WAIT_S = 60.0  # how long a half-restored disk's PUT still running is waited for, to delete it
_LUN = re.compile(r"^(?:/dev/disk/azure/scsi1/)?(?:lun)?(\d{1,2})$")
RESTORE_OPTIONS = ("sku",)  # what restore.options may set on the new disk
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


def _check_options(ref: SnapshotRef, target: RestoreTarget) -> None:
    """The node's restore.options, before anything is made: a key mistyped would restore with the
    default SKU without a word."""
    check_restore_options("azure", ref.node, target.extra, RESTORE_OPTIONS)
    sku = target.extra.get("sku")
    # Its name is ARM's to judge: a list here would refuse a SKU newer than this plugin.
    if sku is not None and not (isinstance(sku, str) and sku.strip()):
        raise BadInputError(f"node {ref.node}: azure restore option sku {sku!r} is not a disk sku name",
                            hint="e.g. sku: Premium_LRS (or Standard_LRS, StandardSSD_LRS, Premium_ZRS, "
                                 "StandardSSD_ZRS, PremiumV2_LRS, UltraSSD_LRS)")
