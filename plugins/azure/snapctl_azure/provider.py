"""AzureProvider: incremental snapshots of managed disks (azure-mgmt-compute).

An incremental snapshot's content is fixed when ARM accepts the PUT (200/202), so snapshot()
returns right after the initial response (``polling=False``: no poller thread left behind) and
wait() follows ``provisioning_state`` and, for background copies, ``completion_percent`` and
``snapshot_access_state``. A failed snapshot keeps its reason in the PUT's async operation, whose
URL the ref carries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from snapctl.errors import BadInputError, ProviderError
from snapctl.providers import (
    BEING_DELETED,
    TAG_CLUSTER,
    TAG_NODE,
    TAG_VOLUME,
    Capabilities,
    NodeVolumes,
    ProgressFn,
    SnapshotRef,
    check_cluster_tag,
    discard_partial_snapshots,
)
from snapctl.ratelimit import TokenBucket
from snapctl.timestamps import utc_text
from snapctl_azure.aio import ASYNC_SDK_MODULES, AsyncArm, import_async_sdk
from snapctl_azure.client import AzureApi
from snapctl_azure.disks import TAG_RESTORED_FROM, RestoredDisks
from snapctl_azure.errors import translate
from snapctl_azure.put import SnapshotPut, snapshot_id
from snapctl_azure.settings import (
    SNAPSHOT_ID,
    AzureSettings,
    AzureVolume,
    parse_volumes,
)

log = logging.getLogger(__name__)

PERM_CREATE = "Microsoft.Compute/snapshots/write"
PERM_READ = "Microsoft.Compute/snapshots/read"
PERM_DELETE = "Microsoft.Compute/snapshots/delete"


class AzureProvider(RestoredDisks):
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

    @property
    def create_bucket(self) -> TokenBucket:
        """The create calls' bucket, paused on a 429's Retry-After: snapctl's per-node pacer reads it."""
        return self.api.create_bucket

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
