"""Completing the snapshots of a `backup --no-wait` run where nothing else would.

A cloud completes a snapshot on its own; a local one stays pending after `backup --no-wait`
until something fsyncs it (the provider's optional ``complete``, see snapctl.providers). Until
then retention cannot count its run, and the next backup cannot hard-link unchanged files from
it. So retention completes such a run's snapshots when the policy would keep it
(snapctl.prune), and a backup completes the newest backup's before it holds any node
(``complete_newest_backup``). A snapshot whose completion fails is failed for good by the
provider, and its run is treated like a failed one; nothing is deleted for it here.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from snapctl.errors import SnapctlError, os_reason
from snapctl.providers import Provider, SnapshotRef
from snapctl.retention import SUCCEEDED

if TYPE_CHECKING:
    from snapctl.catalog import Catalog
    from snapctl.events import Reporter
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


async def complete_newest_backup(catalog: Catalog, provider: Provider, reporter: Reporter, timeout_s: float) -> None:
    """Before a backup holds any node: when the newest backup did not wait for its snapshots
    (`backup --no-wait`) and the provider completes snapshots when asked, complete them now, so
    that they are what this backup links unchanged files from (the local provider links only from
    completed snapshots: a linked file is never fsynced again) and retention counts that run. Here
    the fsyncs hold nothing up but this backup's start; inside the hold they would freeze the
    engine. A failure is reported and the backup goes on, copying what they hold again."""
    if not can_complete(provider):
        return
    try:
        newest = await asyncio.to_thread(_newest_unconfirmed, catalog, provider)
    except SnapctlError:
        return  # no backup yet, or none readable: nothing to link from either way
    if newest is None:
        return
    refs = newest.snapshot_refs()
    reporter.step("complete", f"completing the {len(refs)} pending snapshots of run {newest.run_id} "
                              "(backup --no-wait) before any node is held")
    why = await asyncio.to_thread(complete_snapshots, provider, refs, time.monotonic() + timeout_s)
    if why is not None:
        reporter.step("complete", f"could not complete the snapshots of run {newest.run_id}: {why}; this backup "
                                  "copies what they hold again, and retention treats that run like a failed one")
        return
    try:
        catalog.update(newest.run_id, mark_snapshots_completed)
    except SnapctlError as exc:  # a later prune asks the provider, finds them complete and records it
        reporter.step("complete", f"could not record that the snapshots of run {newest.run_id} completed: "
                                  f"{exc.message}")


def _newest_unconfirmed(catalog: Catalog, provider: Provider) -> Manifest | None:
    """The newest succeeded run's manifest when it is this provider's and its snapshots are not
    known to be complete; else None."""
    newest = catalog.load(catalog.resolve("latest"))
    if newest.snapshots_completed or newest.provider != provider.name or not newest.snapshot_refs():
        return None
    return newest
