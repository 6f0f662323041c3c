"""Completing the snapshots of a `backup --no-wait` run where nothing else would.

A cloud completes a snapshot on its own; a local one stays pending after `backup --no-wait`
until something fsyncs it (the provider's optional ``complete``, see snapctl.providers). Until
then retention cannot count its run, and the next backup cannot hard-link unchanged files from
it. So retention completes such a run's snapshots when the policy would keep it
(snapctl.prune_plan), and a backup completes the newest backup's before it holds any node
(``complete_newest_backup``). A run whose snapshot is in error after a failed completion (its
fsync failed) is treated like a failed one; one merely not completed (the deadline, a busy store)
is neither counted nor deleted. Nothing is deleted here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from snapctl.errors import SnapctlError, os_reason
from snapctl.providers import Provider, SnapshotRef
from snapctl.retention import SUCCEEDED

if TYPE_CHECKING:
    from snapctl.catalog import Catalog
    from snapctl.catalog.catalog import CatalogLook
    from snapctl.events import Reporter
    from snapctl.manifest import Manifest


def can_complete(provider: Provider) -> bool:
    """Whether the provider completes pending snapshots when asked (local), rather than on its own (a cloud)."""
    return callable(getattr(provider, "complete", None))


@dataclass(frozen=True)
class CompletionBudget:
    """What a prune may spend completing pending snapshots: until ``deadline`` (time.monotonic()),
    with ``checked`` called before each snapshot (it raises to stop: Ctrl-C, a lost lock)."""

    deadline: float
    checked: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class NotCompleted:
    """Why a run's pending snapshots were not all completed, and whether that is for good (one is
    in error now: its fsync failed, or it was made before the host restarted) or only not yet (the
    deadline, a busy store, the store's lock file): a run that is not yet must be neither counted
    nor deleted, as its snapshots may be whole."""

    why: str
    failed: bool


def complete_snapshots(provider: Provider, refs: list[SnapshotRef], deadline: float,
                       before_each: Callable[[], None] | None = None) -> NotCompleted | None:
    """Complete ``refs`` now, one at a time; None once all are. ``before_each`` is called before
    each and may raise to stop: at most the snapshot under way is finished after that."""
    for ref in refs:
        if before_each is not None:
            before_each()
        try:
            provider.complete([ref], deadline)  # type: ignore[attr-defined]
        except SnapctlError as exc:
            return NotCompleted(exc.message, failed=_in_error_now(provider, ref))
        except OSError as exc:  # the store's node lock or directory: nothing was marked
            return NotCompleted(os_reason(exc), failed=False)
    return None


def _in_error_now(provider: Provider, ref: SnapshotRef) -> bool:
    """After a failed completion: whether the provider now says the snapshot is in error. Not
    found, or no answer, is no proof: the run is then left for the next prune to ask again."""
    try:
        found = provider.describe([ref])
    except SnapctlError:
        return False
    return any(r.snapshot_id == ref.snapshot_id and r.state == "error" for r in found)


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
    newest = await _newest_to_complete(catalog, provider)
    if newest is None:
        return
    refs = newest.snapshot_refs()
    reporter.step("complete", f"completing the {len(refs)} pending snapshots of run {newest.run_id} "
                              "(backup --no-wait) before any node is held")
    stop = threading.Event()

    def before_each() -> None:
        if stop.is_set():
            raise _Stopped()

    def work() -> NotCompleted | None:
        try:
            return complete_snapshots(provider, refs, time.monotonic() + timeout_s, before_each)
        except _Stopped:
            return NotCompleted("interrupted", failed=False)

    worker = asyncio.get_running_loop().run_in_executor(None, work)
    try:
        missed = await asyncio.shield(worker)
    except asyncio.CancelledError:
        stop.set()  # Ctrl-C or SIGTERM: the snapshot under way is finished, no other begins
        raise
    if missed is not None:
        reporter.step("complete", f"could not complete the snapshots of run {newest.run_id}: {missed.why}; this "
                                  "backup copies what they hold again"
                                  + (", and retention treats that run like a failed one" if missed.failed else ""))
        return
    try:
        catalog.update(newest.run_id, mark_snapshots_completed)
    except SnapctlError as exc:  # a later prune asks the provider, finds them complete and records it
        reporter.step("complete", f"could not record that the snapshots of run {newest.run_id} completed: "
                                  f"{exc.message}")


class _Stopped(Exception):
    """The backup was interrupted while it completed the newest backup's snapshots."""


def would_complete(look: CatalogLook, catalog: Catalog, provider: Provider, reporter: Reporter) -> None:
    """For a dry run: say what ``complete_newest_backup`` would complete before the holds, from the
    runs its ``look`` listed (which read the newest backup's manifest): not listed again."""
    newest = next((e for e in look.entries or [] if e.status == SUCCEEDED), None)
    if not can_complete(provider) or newest is None:
        return
    manifest = _to_complete(catalog.unconfirmed(newest.run_id), provider)
    if manifest is not None:
        reporter.step("complete", f"the run would first complete the {len(manifest.snapshot_refs())} pending "
                                  f"snapshots of run {manifest.run_id} (backup --no-wait), before any node is held")


async def _newest_to_complete(catalog: Catalog, provider: Provider) -> Manifest | None:
    """The newest succeeded run's manifest when this provider completes snapshots when asked, the
    run is its, and its snapshots are not known to be complete; else None (also when there is no
    backup yet, or none readable: nothing to link from either way)."""
    if not can_complete(provider):
        return None
    try:
        return await asyncio.to_thread(_newest_unconfirmed, catalog, provider)
    except SnapctlError:
        return None


def _newest_unconfirmed(catalog: Catalog, provider: Provider) -> Manifest | None:
    return _to_complete(catalog.load(catalog.resolve("latest")), provider)


def _to_complete(newest: Manifest | None, provider: Provider) -> Manifest | None:
    """``newest`` when it is this provider's and its snapshots are not known to be complete."""
    if newest is None or newest.snapshots_completed or newest.provider != provider.name or not newest.snapshot_refs():
        return None
    return newest
