"""The catalog: manifests, an index, and the cluster's run lock, over a small blob store.

Layout (the same on every store), keys relative to the catalog root::

    <cluster>/manifests/<run_id>.json
    <cluster>/index.json
    <cluster>/lock.json
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class BlobStore(Protocol):
    """Bytes under string keys. Local directory by default; S3 for a shared catalog."""

    def read(self, key: str) -> bytes | None:
        """The blob, or None when it does not exist."""
        ...

    def write(self, key: str, data: bytes) -> None:
        """Replace atomically: a reader sees the old or the new blob, never a torn one."""
        ...

    def create(self, key: str, data: bytes) -> bool:
        """Write only if the key does not exist; True when this call created it. Safe under races."""
        ...

    def replace(self, key: str, data: bytes, expected: bytes) -> bool:
        """Write only if the current content equals ``expected``; True when replaced. Safe under races."""
        ...

    def delete(self, key: str) -> None:
        """Remove; a missing key is fine."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""
        ...

    def age_s(self, key: str) -> float | None:
        """Seconds since the blob was last written, on the store's clock, never on its writer's (a
        local file's mtime, which the kernel sets; S3's LastModified against the Date of its own
        answer); None when it does not exist."""
        ...

    def written_at(self, key: str) -> datetime | None:
        """When the blob was last written, aware UTC, on the store's clock (the mtime the kernel
        set, S3's LastModified), never on its writer's; None when it does not exist."""
        ...

    def check_writable(self, directory: str) -> bool:
        """Raise ``CatalogError`` where writing keys under ``directory`` would certainly fail, judged
        without writing (a dry run writes nothing); True where judged, False where the store cannot
        tell without writing (a dry run must not say it checked)."""
        ...

    def describe(self) -> str:
        """Where this store lives, for messages (no secrets)."""
        ...


# Implementations, re-exported for callers (imported last: they depend on BlobStore above).
from snapctl.catalog.catalog import Catalog  # noqa: E402
from snapctl.catalog.local import LocalBlobStore  # noqa: E402
from snapctl.catalog.lock import LockRecord, RunLock  # noqa: E402
from snapctl.catalog.stores import open_catalog  # noqa: E402

__all__ = ["BlobStore", "Catalog", "LocalBlobStore", "LockRecord", "RunLock", "open_catalog"]
