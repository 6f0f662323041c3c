"""Completing the snapshots of a `backup --no-wait` run where nothing else would.

A cloud completes a snapshot on its own; a local one stays pending after `backup --no-wait`
until something fsyncs it (the provider's optional ``complete``, see snapctl.providers). Until
then retention cannot count its run. So retention completes such a run's snapshots when the
policy would keep it (snapctl.prune). A snapshot whose completion fails is failed for good by the
provider, and its run is treated like a failed one; nothing is deleted for it here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from snapctl.errors import SnapctlError, os_reason
from snapctl.providers import Provider, SnapshotRef
from snapctl.retention import SUCCEEDED

if TYPE_CHECKING:
    from snapctl.manifest import Manifest


def can_complete(provider: Provider) -> bool:
    """Whether the provider completes pending snapshots when asked (local), rather than on its own (a cloud)."""
    return callable(getattr(provider, "complete", None))


def complete_snapshots(provider: Provider, refs: list[SnapshotRef], deadline: float) -> str | None:
    """Complete ``refs`` now; None once all are, else why not (the provider's words)."""
    try:
        provider.complete(refs, deadline)  # type: ignore[attr-defined]
    except SnapctlError as exc:
        return exc.message
    except OSError as exc:  # the store's node lock or directory: nothing was marked
        return os_reason(exc)
    return None


def mark_snapshots_completed(manifest: Manifest) -> bool:
    """For ``Catalog.update``: the run's snapshots are known to be complete (asked once, never again)."""
    if manifest.status != SUCCEEDED or manifest.snapshots_completed:
        return False
    manifest.snapshots_completed = True
    return True
