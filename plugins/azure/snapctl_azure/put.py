"""One snapshot PUT: its name, body and the ref it makes, the same whichever client sends it (the
sync one in ``snapshot``, the aio one in ``snapshot_async``)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from snapctl.providers import TAG_CLUSTER, TAG_NODE, TAG_VOLUME, SnapshotRef
from snapctl.timestamps import utc_text
from snapctl_azure.settings import AzureSettings, AzureVolume


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-_")[:limit].strip("-_") or "x"


def snapshot_name(cluster: str, node: str, volume: str) -> str:
    """Unique and at most 80 characters of [A-Za-z0-9_.-]: readable prefix, random tail."""
    return f"snapctl-{_slug(cluster, 22)}-{_slug(node, 20)}-{_slug(volume, 16)}-{uuid.uuid4().hex[:10]}"


def snapshot_id(settings: AzureSettings, name: str) -> str:
    return (f"/subscriptions/{settings.subscription_id}/resourceGroups/{settings.resource_group}"
            f"/providers/Microsoft.Compute/snapshots/{name}")


class SnapshotPut:
    def __init__(self, settings: AzureSettings, cluster: str, node: str, vol: AzureVolume,
                 tags: Mapping[str, str]) -> None:
        from azure.mgmt.compute.models import CreationData, Snapshot

        self.settings, self.node, self.vol = settings, node, vol
        self.name = snapshot_name(cluster, node, vol.name)
        self.action = f"create snapshot of disk {vol.disk_name}"
        self.tags = {**settings.tags, **tags, TAG_CLUSTER: cluster, TAG_NODE: tags.get(TAG_NODE, node),
                     TAG_VOLUME: vol.name}
        self.model = Snapshot(location=settings.location, tags=self.tags, incremental=True,
                              creation_data=CreationData(create_option="Copy", source_resource_id=vol.disk_id))
        self.operation = ""

    def remember_operation(self, pipeline_response: Any) -> None:
        """The SDK's raw_response_hook: the async operation URL, where a failed snapshot's reason is kept."""
        headers = pipeline_response.http_response.headers
        self.operation = headers.get("Azure-AsyncOperation") or headers.get("Location") or ""

    def ref(self) -> SnapshotRef:
        return SnapshotRef(
            provider="azure", snapshot_id=snapshot_id(self.settings, self.name), node=self.node, volume=self.vol.name,
            tags=self.tags, created_at=utc_text(datetime.now(UTC)),
            extra={"resource_group": self.settings.resource_group, "name": self.name, "disk_id": self.vol.disk_id,
                   "operation": self.operation or None},
        )
