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

from snapctl.errors import ProviderError, SnapctlError
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
from snapctl_gcp.client import GcpApi
from snapctl_gcp.disks import TAG_RESTORED_FROM, RestoredDisks
from snapctl_gcp.errors import RATE_OPERATION_CODES, operation_error, operation_hint
from snapctl_gcp.labels import (
    decode_label,
    description_for,
    encode_key,
    encode_label,
    filter_for,
    labels_for,
    snapshot_name,
    tags_of,
)
from snapctl_gcp.settings import GcpSettings, GcpVolume, parse_volumes

log = logging.getLogger(__name__)

PERM_CREATE = "compute.disks.createSnapshot"
PERM_GET = "compute.snapshots.get"
PERM_LIST = "compute.snapshots.list"
PERM_DELETE = "compute.snapshots.delete"
CAPTURED = frozenset({"UPLOADING", "READY"})
# DELETING is no step towards READY: a snapshot on its way out is as unusable as a failed one.
STATES = {"READY": "completed", "FAILED": "error", "DELETING": "error"}


class GcpProvider(RestoredDisks):
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

    @property
    def create_bucket(self) -> TokenBucket:
        """The create calls' bucket, paused on a 429's Retry-After: snapctl's per-node pacer reads it."""
        return self.api.create_bucket

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
                                hint=operation_hint(code))
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
                          created_at=utc_text(datetime.now(timezone.utc)),
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
                    raise ProviderError(f"{where} failed: {message}", hint=operation_hint(code))
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
            # One carrying snapctl-restored-from was made of a restored disk, copying its labels (which
            # include this cluster's): someone else's snapshot, never snapctl's, so no run's and no
            # orphan. By raw tag and by label: the raw tags come from a snapctl description before
            # the labels, so either may lack it.
            if TAG_RESTORED_FROM in raw or encode_key(TAG_RESTORED_FROM) in snap.labels:
                continue
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

    def _finish(self, op: Any, zone: str | None, action: str, deadline: float, *, gone_ok: bool = False,
                stop: threading.Event | None = None) -> None:
        """Wait for ``op`` and raise what it failed with; ``gone_ok``: a resource already gone is done;
        ``stop``: ``Interrupted`` once set (``GcpApi.wait_operation``)."""
        op = self.api.wait_operation(op, zone=zone, action=action, deadline=deadline, stop=stop)
        failure = operation_error(op)
        if failure and not (gone_ok and failure[0] in ("RESOURCE_NOT_FOUND", "404")):
            raise ProviderError(f"gcp {action} failed: {failure[1]}", hint=operation_hint(failure[0]))


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


class _Named:
    """An operation known only by name (what a SnapshotRef keeps)."""

    def __init__(self, name: str) -> None:
        self.name = name
