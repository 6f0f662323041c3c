"""Retention applied: `snapctl prune`, and step 8 of every backup (`snapctl gc` is snapctl.gc).

Prune, under the cluster lock:
1. plan: the policy (snapctl.retention) over every readable manifest, where a run made with
   `backup --no-wait` that it would keep counts only once the provider says its snapshots are
   complete (and is recorded so, once the lock is held); where the provider completes pending
   snapshots only when asked (local), the prune asks it first (snapctl.completion; a dry run
   only says it would); a run already marked
   ``pruning`` by an earlier, interrupted prune is in the plan whatever the policy says; a run a
   restore or drill is restoring is kept (they take no lock: they would wait for, and hold up,
   backups; each is on record in the catalog while it runs instead);
2. mark every doomed run first (status ``pruning``, the old status kept in ``extra.pruning``), so
   from here on no restore or ``latest`` picks it, and a prune killed at any later point is
   finished by the next one (one stopped by Ctrl-C or SIGTERM unmarks those it had not begun);
3. delete each doomed run's snapshots (those its manifest names plus any tagged with its run id),
   oldest run first, then its manifest; a run a restore or drill began on meanwhile is unmarked
   and kept instead. Providers refuse snapshots without this cluster's tag;
   such a run stays marked and is reported.

Step 1, the plan (all a dry run does), is snapctl.prune_plan; the restores and drills that keep a
run, snapctl.prune_in_use; the marks, snapctl.prune_marks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from snapctl.abandoned_runs import close_abandoned_runs
from snapctl.catalog import Catalog, open_catalog
from snapctl.catalog.lock import ThreadLockKeeper
from snapctl.completion import mark_snapshots_completed
from snapctl.errors import Interrupted, SnapctlError
from snapctl.gc import GcResult, find_orphans, gc  # noqa: F401  # importable from here, as before the split
from snapctl.gc import delete_snapshot as _delete_snapshot
from snapctl.gc import forget_emptied_runs as _forget_emptied_runs
from snapctl.providers import TAG_CLUSTER, Provider, open_provider
from snapctl.prune_in_use import in_use_records
from snapctl.prune_marks import mark_pruning, stopped_prune, unmark_pruning
from snapctl.prune_plan import PruneResult, RunVerdict, plan, spared_while_in_use
from snapctl.prune_refs import Owners, by_run, doomed_refs
from snapctl.redact import redact
from snapctl.timestamps import utc_text

if TYPE_CHECKING:
    from snapctl.config import Inventory, Retention
    from snapctl.events import Reporter
    from snapctl.manifest import Manifest

StillLocked = Callable[[], None]  # raises when the cluster lock is no longer ours


def prune(inventory: Inventory, *, dry_run: bool = False) -> PruneResult:
    """`snapctl prune`: take the cluster lock (not for a dry run), plan, mark, delete."""
    catalog = open_catalog(inventory)
    provider = open_provider(inventory)
    drill_timeout_s = inventory.drill.timeout_s
    if dry_run:
        return plan(catalog, provider, inventory.retention, drill_timeout_s)
    with ThreadLockKeeper(catalog, inventory.policy.lock_ttl_s, "prune") as locked:
        # As a backup does: holding the lock proves no run still marked running is alive. Closed,
        # one killed in its wait counts as the backup it is, and the others are judged as failed.
        close_abandoned_runs(catalog, locked.run_id)
        planned = plan(catalog, provider, inventory.retention, drill_timeout_s,
                       complete_within=inventory.policy.wait_timeout_s, checked=locked.check)
        return apply(planned, catalog, provider, locked.check, drill_timeout_s)


def apply(planned: PruneResult, catalog: Catalog, provider: Provider, still_locked: StillLocked,
          drill_timeout_s: float) -> PruneResult:
    """Mark every doomed run, then delete their snapshots and manifests, oldest first."""
    if planned.dry_run and planned.completed:  # what it decided rests on snapshots it never completed
        raise SnapctlError(f"refusing to apply a dry run's plan: it counts runs whose snapshots it did not complete "
                           f"({', '.join(planned.completed)})", hint="plan with complete_within to apply the plan")
    result = PruneResult(planned.cluster, False, planned.retention, list(planned.kept), [],
                         list(planned.unfinished), planned.problems, list(planned.warnings), list(planned.confirmed),
                         list(planned.completed))
    for run_id in planned.confirmed:
        still_locked()
        try:
            catalog.update(run_id, mark_snapshots_completed)
        except SnapctlError as exc:  # asked again next time: nothing lost
            result.problems.append(f"run {run_id}: could not record that its snapshots completed: {exc.message}")
    doomed: list[tuple[RunVerdict, Manifest]] = []
    marking: dict[str, str] = {}  # run -> the mark this prune put on it (or was putting: a stop may cut that)
    begun: set[str] = set()  # runs whose snapshots it began to delete
    deleting: str | None = None  # the run whose snapshots are being deleted, while they are
    try:
        # The marks' index lines written together, and the deleted runs' (lines_held): one each
        # rewrote the whole index twice per run. Every mark's line is written before any run is deleted.
        # Once for every mark: a restore that begins after this look is seen by the look after its mark.
        records = in_use_records(catalog) if planned.deleted else {}
        with catalog.lines_held():
            for verdict in planned.deleted:
                still_locked()
                if spared_while_in_use(catalog, verdict, result, drill_timeout_s, records):  # began since the plan
                    continue
                # As it is now, by compare-and-swap: a drill's summary written meanwhile is not lost.
                # So the run's manifest is read again here, on purpose: the plan's copy may be stale.
                since = utc_text(datetime.now(UTC))
                marking[verdict.run_id] = since
                # Its line too where the manifest was marked already: a prune killed before it wrote
                # the line left "succeeded" there, read as a lost manifest once the run is deleted.
                manifest = catalog.update(verdict.run_id, partial(mark_pruning, since=since), line_anyway=True)
                if manifest is None:
                    continue  # deleted meanwhile: nothing of it is left to prune
                doomed.append((verdict, manifest))
        tagged = by_run(provider.find({TAG_CLUSTER: catalog.cluster})) if doomed else {}
        # The plan's, not every manifest read again: only a run holding the lock changes what a
        # manifest names, and this prune holds it. A run deleted below stays in it, which changes
        # nothing: its snapshots went with it, or stay with it where their deletion failed.
        owners = planned.owners if planned.owners is not None else Owners(catalog)
        with catalog.lines_held() as write_lines:
            for verdict, manifest in doomed:
                still_locked()
                # Once more, now that the run is marked: a restore records itself before it reads the run's
                # status, so one that read it just before the mark (and goes on) is on record by now.
                if spared_while_in_use(catalog, verdict, result, drill_timeout_s):
                    catalog.update(manifest.run_id, partial(unmark_pruning, since=marking[manifest.run_id]))
                    write_lines()  # listed as restorable again now, not when the prune ends
                    continue
                refs = doomed_refs(manifest, tagged, owners)
                begun.add(manifest.run_id)
                deleting = manifest.run_id
                failures = []
                for ref in refs:
                    still_locked()
                    try:
                        _delete_snapshot(provider, ref, catalog.cluster)
                    except SnapctlError as exc:
                        failures.append(f"snapshot {ref.snapshot_id}: {exc.message}")
                if failures:
                    verdict.error = "; ".join(failures)
                    result.unfinished.append(verdict)
                    deleting = None
                    continue
                still_locked()
                catalog.delete(manifest.run_id)
                deleting = None
                result.deleted.append(verdict)
    except (KeyboardInterrupt, Interrupted):
        raise stopped_prune(catalog, {run: since for run, since in marking.items() if run not in begun},
                            deleting) from None
    result.forgotten = _forget_emptied_runs(catalog, provider, still_locked)
    result.problems = [p for p in result.problems if not p.startswith(tuple(f"run {r}: " for r in result.forgotten))]
    return result


async def prune_after_backup(
    inventory: Inventory, catalog: Catalog, provider: Provider, manifest: Manifest, reporter: Reporter,
    still_locked: StillLocked,
) -> None:
    """DESIGN step 8, retention: run under the backup's lock; its outcome goes into
    ``manifest.extra["retention"]``. A failure is reported there and never fails the backup. Ctrl-C
    or SIGTERM stops its thread before its next deletion (a cancelled await would leave it deleting
    after the lock's release); the run whose deletion was under way stays marked for the next
    prune, and those it had not begun are unmarked (``apply``)."""
    import asyncio

    reporter.step("prune", f"applying retention ({_describe(inventory.retention)})")
    stop = threading.Event()

    def checked() -> None:
        if stop.is_set():
            raise Interrupted("retention")
        still_locked()

    def work() -> dict[str, object]:
        try:
            planned = plan(catalog, provider, inventory.retention, inventory.drill.timeout_s,
                           None if manifest.snapshots_completed else manifest,
                           complete_within=inventory.policy.wait_timeout_s, checked=checked, made=manifest.run_id)
            checked()
            done = apply(planned, catalog, provider, checked, inventory.drill.timeout_s)
        except SnapctlError as exc:
            return {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the backup succeeded; whatever broke here must not undo that
            return {"error": redact(f"{type(exc).__name__}: {exc}")}
        record: dict[str, object] = {"deleted": [v.run_id for v in done.deleted], "kept": len(done.kept)}
        if done.warnings or done.problems:  # said on the backup's stderr, as `snapctl prune` says them
            record["warnings"] = done.warnings + [f"{problem} (left alone)" for problem in done.problems]
        if done.unfinished:
            record["error"] = "; ".join(f"run {v.run_id}: {v.error}" for v in done.unfinished)
        return record

    worker = asyncio.get_running_loop().run_in_executor(None, work)
    while not worker.done():
        try:
            await asyncio.shield(worker)
        except asyncio.CancelledError:
            stop.set()  # the deletion under way ends; none begins after it
    record = worker.result()
    if "error" in record:
        reporter.step("prune", f"retention did not finish (the backup itself succeeded): {record['error']}")
    manifest.extra["retention"] = record

    def recorded(stored: Manifest) -> bool:  # as it is now: a drill of this run may have put its summary there
        stored.extra["retention"] = record
        return True

    try:
        catalog.update(manifest.run_id, recorded)
    except SnapctlError as exc:
        reporter.step("prune", f"could not record the retention outcome in the manifest: {exc}")
    if stop.is_set():
        raise Interrupted(f"retention after backup {manifest.run_id} (which succeeded)")


def _describe(retention: Retention) -> str:
    return (f"keep last {retention.keep_last}, daily {retention.daily}, weekly {retention.weekly}, "
            f"monthly {retention.monthly}")
