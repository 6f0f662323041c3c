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
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from snapctl.abandoned_runs import close_abandoned_runs
from snapctl.catalog import Catalog, open_catalog
from snapctl.catalog.lock import ThreadLockKeeper
from snapctl.completion import CompletionBudget, can_complete, complete_snapshots, mark_snapshots_completed
from snapctl.errors import Interrupted, SnapctlError
from snapctl.gc import GcResult, find_orphans, gc  # noqa: F401  # importable from here, as before the split
from snapctl.gc import delete_snapshot as _delete_snapshot
from snapctl.providers import TAG_CLUSTER, Provider, open_provider
from snapctl.prune_marks import mark_pruning, stopped_prune, unmark_pruning
from snapctl.prune_refs import Owners, by_run, doomed_refs
from snapctl.redact import redact
from snapctl.restore_leftovers import restore_gone
from snapctl.retention import PRUNING, SUCCEEDED, Decision, RetentionPlan, Run, decide
from snapctl.timestamps import as_utc, utc_text

if TYPE_CHECKING:
    from snapctl.config import Inventory, Retention
    from snapctl.events import Reporter
    from snapctl.manifest import Manifest

StillLocked = Callable[[], None]  # raises when the cluster lock is no longer ours
_DRILL_TEARDOWN_S = 600.0  # beyond drill.timeout_s, what an unfinished drill record still protects
# What an unfinished restore record protects, from the restore's start. A restore has no time
# limit of its own (a large local copy can take hours); a day outlasts any plausible one, and a
# restore killed outright then holds back its run's deletion by a day at most.
RESTORE_GUARD_S = 86400.0


@dataclass(frozen=True)
class _InUse:
    """A command that restores a run without the cluster lock, and records itself instead in
    ``<cluster>/<folder>/<run>-<id>.json`` with ``started_at``, ``finished_at`` and ``<noun>_id``."""

    folder: str
    noun: str
    doing: str  # as in "being <doing>"


_RESTORE = _InUse("restores", "restore", "restored")
_DRILL = _InUse("drills", "drill", "drilled")


@dataclass
class RunVerdict:
    run_id: str
    started_at: datetime
    status: str  # before pruning began
    reasons: list[str]
    snapshots: list[str] = field(default_factory=list)  # ids that go with the run (doomed runs)
    error: str | None = None  # why it could not be deleted (it stays marked)


@dataclass
class PruneResult:
    cluster: str
    dry_run: bool
    retention: Retention
    kept: list[RunVerdict]  # newest first
    deleted: list[RunVerdict]  # oldest first; on a dry run: what would go
    unfinished: list[RunVerdict] = field(default_factory=list)  # marked, not (fully) deleted
    problems: list[str] = field(default_factory=list)  # unreadable manifests, left alone
    # `backup --no-wait` runs whose snapshots the provider found complete: counted, and (not on a
    # dry run) recorded in their manifests, so that the provider is asked once
    confirmed: list[str] = field(default_factory=list)
    # those of them whose pending snapshots this prune completed itself (local); on a dry run: would complete
    completed: list[str] = field(default_factory=list)
    # Which manifest names each snapshot, as the plan read them: apply asks it, not the catalog
    # again. Set by plan; unannotated, so no dataclass field, and no part of the JSON a prune prints.
    owners = None  # Owners | None

    @property
    def ok(self) -> bool:
        return not self.unfinished


# -- prune ---------------------------------------------------------------------------------------


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


def plan(catalog: Catalog, provider: Provider, retention: Retention, drill_timeout_s: float,
         pending: Manifest | None = None, *, complete_within: float | None = None,
         checked: Callable[[], None] | None = None) -> PruneResult:
    """What a prune would do now. The result of a dry run. ``pending``: a run whose snapshots are
    not complete yet (`backup --no-wait`): kept, and not counted, so that the runs it would
    replace stay until it is known to be a backup. ``complete_within``: seconds in which to
    complete, under the cluster lock, the pending snapshots of `--no-wait` runs the policy would
    keep, where the provider completes them only when asked (local), so that they count; None
    (a dry run): reads only, and counts such a run as the prune would once it completed them.
    ``checked`` is called before each snapshot completed and raises to stop (Ctrl-C, a lost lock)."""
    budget = None if complete_within is None else CompletionBudget(time.monotonic() + complete_within,
                                                                   checked or (lambda: None))
    decided, problems, confirmed, completed = _decide_over_readable_runs(
        catalog, provider, retention, budget, pending.run_id if pending else None)
    tagged = by_run(provider.find({TAG_CLUSTER: catalog.cluster})) if decided.delete else {}
    owners = Owners(catalog)
    result = PruneResult(catalog.cluster, complete_within is None, retention, [], [], problems=problems,
                         confirmed=confirmed, completed=completed)
    result.owners = owners
    result.kept = [_verdict(d) for d in decided.keep]
    done = _WOULD_COMPLETE if complete_within is None else _COMPLETED
    for verdict in result.kept:
        if verdict.run_id in completed:
            verdict.reasons.append(done)
    if pending is not None:
        result.kept.insert(0, RunVerdict(pending.run_id, pending.started_at, pending.status,
                                         ["its snapshots are not complete yet (--no-wait): not counted"]))
    records = _in_use_records(catalog) if decided.delete else {}  # apply looks again
    doomed: list[tuple[RunVerdict, Manifest]] = []  # every one read before any is judged: see Owners.note
    for decision in decided.delete:
        verdict = _verdict(decision)
        if _spared_while_in_use(catalog, verdict, result, drill_timeout_s, records):
            continue
        try:
            manifest = catalog.load(decision.run.run_id)
        except SnapctlError as exc:  # never marked: a problem left alone, like any unreadable manifest
            result.problems.append(f"run {verdict.run_id}: {exc.message.removeprefix(f'run {verdict.run_id}: ')}")
            continue
        owners.note(manifest)  # also when left alone below: what it names is no other run's to take
        if manifest.provider != provider.name:  # this provider finds none of its snapshots: only the manifest would go
            result.problems.append(f"run {verdict.run_id}: made with the {manifest.provider} provider, not "
                                   f"{provider.name} (the inventory's): left alone, with its snapshots; prune it "
                                   f"with an inventory whose provider is {manifest.provider}")
            continue
        doomed.append((verdict, manifest))
    for verdict, manifest in doomed:
        verdict.status = str(manifest.extra.get(PRUNING, {}).get("was", manifest.status))
        refs = doomed_refs(manifest, tagged, owners)
        if manifest.status == PRUNING:  # an earlier prune deleted some already: name what is left
            left = {r.snapshot_id for r in tagged.get(manifest.run_id, [])}
            refs = [r for r in refs if r.snapshot_id in left]
        verdict.snapshots = [r.snapshot_id for r in refs]
        result.deleted.append(verdict)
    return result


def apply(planned: PruneResult, catalog: Catalog, provider: Provider, still_locked: StillLocked,
          drill_timeout_s: float) -> PruneResult:
    """Mark every doomed run, then delete their snapshots and manifests, oldest first."""
    if planned.dry_run and planned.completed:  # what it decided rests on snapshots it never completed
        raise SnapctlError(f"refusing to apply a dry run's plan: it counts runs whose snapshots it did not complete "
                           f"({', '.join(planned.completed)})", hint="plan with complete_within to apply the plan")
    result = PruneResult(planned.cluster, False, planned.retention, list(planned.kept), [],
                         list(planned.unfinished), planned.problems, list(planned.confirmed), list(planned.completed))
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
        records = _in_use_records(catalog) if planned.deleted else {}
        with catalog.lines_held():
            for verdict in planned.deleted:
                still_locked()
                if _spared_while_in_use(catalog, verdict, result, drill_timeout_s, records):  # began since the plan
                    continue
                # As it is now, by compare-and-swap: a drill's summary written meanwhile is not lost.
                # So the run's manifest is read again here, on purpose: the plan's copy may be stale.
                since = utc_text(datetime.now(UTC))
                marking[verdict.run_id] = since
                manifest = catalog.update(verdict.run_id, partial(mark_pruning, since=since))
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
                if _spared_while_in_use(catalog, verdict, result, drill_timeout_s):
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
                           complete_within=inventory.policy.wait_timeout_s, checked=checked)
            checked()
            done = apply(planned, catalog, provider, checked, inventory.drill.timeout_s)
        except SnapctlError as exc:
            return {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the backup succeeded; whatever broke here must not undo that
            return {"error": redact(f"{type(exc).__name__}: {exc}")}
        record: dict[str, object] = {"deleted": [v.run_id for v in done.deleted], "kept": len(done.kept)}
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


# -- helpers -------------------------------------------------------------------------------------


def _in_use_records(catalog: Catalog) -> dict[str, list[str]]:
    """The keys of every restore's and drill's record, by folder: listed once, not twice for each
    run (on S3, a request each)."""
    return {use.folder: catalog.store.list(f"{catalog.cluster}/{use.folder}/") for use in (_RESTORE, _DRILL)}


def _spared_while_in_use(catalog: Catalog, verdict: RunVerdict, result: PruneResult, drill_timeout_s: float,
                         records: dict[str, list[str]] | None = None) -> bool:
    """Keep ``verdict``'s run when a restore or drill of it is under way: it restores from the
    run's snapshots. Its record says when it finished; one killed outright never does, so a record
    older than its time budget (a drill's: drill.timeout_s and its teardown) no longer counts.
    ``records``: each folder's keys as listed a moment ago (else listed now, for this run)."""
    now = datetime.now(UTC)
    dead: str | None = None  # a restore killed outright on this host: said only if nothing else is under way
    for use, budget_s in ((_RESTORE, RESTORE_GUARD_S), (_DRILL, drill_timeout_s + _DRILL_TEARDOWN_S)):
        prefix = f"{catalog.cluster}/{use.folder}/{verdict.run_id}-"
        keys = catalog.store.list(prefix) if records is None else [k for k in records[use.folder]
                                                                     if k.startswith(prefix)]
        for key in keys:
            try:
                record = json.loads(catalog.store.read(key) or b"{}")
                # Without an offset (hand-edited, another tool): UTC, as snapctl writes them.
                started = as_utc(datetime.fromisoformat(record["started_at"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # unreadable: it cannot say a restore or drill is running
            if record.get("finished_at") is None and (now - started).total_seconds() < budget_s:
                what = f"{use.noun} {record.get(f'{use.noun}_id')}"
                if use is _RESTORE and restore_gone(record):  # kept still: gc needs the record to clear its places
                    dead = dead or (f"{what} (started {started:%Y-%m-%d %H:%M}Z) whose process {record['owner']} is "
                                    "gone left its record unfinished: `snapctl gc --delete` finishes it")
                    continue
                return _kept(verdict, result, f"being {use.doing} ({what}, started {started:%Y-%m-%d %H:%M}Z)")
    return dead is not None and _kept(verdict, result, dead)


def _kept(verdict: RunVerdict, result: PruneResult, why: str) -> bool:
    kept = RunVerdict(verdict.run_id, verdict.started_at, verdict.status, [why])
    result.kept = sorted([*result.kept, kept], key=lambda v: v.started_at, reverse=True)
    return True


def _decide_over_readable_runs(catalog: Catalog, provider: Provider, retention: Retention,
                               budget: CompletionBudget | None,
                               left_out: str | None = None) -> tuple[RetentionPlan, list[str], list[str], list[str]]:
    """The policy over the catalog's runs, where every succeeded run it keeps has had its manifest
    read: a kept run is the reason others go, so it must be a backup that can be restored, not just
    a line in the index. A damaged manifest behind an intact line would otherwise stand in for the
    newest backup while the readable ones went. Unreadable runs are left out (reported, left
    alone) and the policy decided again without them, until every run it keeps was read. A kept
    run whose manifest does not say its snapshots completed (`backup --no-wait`) is asked about at
    the provider: a run whose snapshots failed later must not count as the backup that replaces
    the good ones; where the provider completes pending ones only when asked, it is asked
    (within ``budget``; None: a dry run, which only counts them as completed). Also
    returns the runs found complete, and those of them this prune completed (or would)."""
    entries, problems = catalog.list(confirm_newest=False)  # the loop below reads what it keeps, once
    runs = {e.run_id: e for e in entries if e.run_id != left_out}
    confirmed: set[str] = set()
    doubts: dict[str, tuple[str, bool]] = {}  # run id -> (why it is not counted, whether it is held)
    completed: list[str] = []
    completed_here: list[str] = []
    while True:
        decided = decide([Run(e.run_id, e.started_at, e.status, *doubts.get(e.run_id, (None, False)))
                          for e in runs.values()], retention)
        doubtful = [d.run.run_id for d in decided.keep if d.run.status == SUCCEEDED and d.run.run_id not in confirmed]
        if not doubtful:
            return decided, sorted(problems), completed, completed_here
        current, unreadable = catalog.confirm(doubtful)
        confirmed.update(doubtful)
        problems += [f"run {run_id}: {reason}" for run_id, reason in unreadable.items()]
        for run_id in doubtful:
            if run_id not in current:
                del runs[run_id]
                continue
            runs[run_id] = current[run_id]  # maybe no longer succeeded: marked by a prune killed before its index line
            unconfirmed = catalog.unconfirmed(run_id) if current[run_id].status == SUCCEEDED else None
            if unconfirmed is not None:
                doubt, completing = _snapshots_doubt(unconfirmed, provider, budget)
                if doubt is None:
                    completed.append(run_id)
                    if completing:
                        completed_here.append(run_id)
                else:
                    doubts[run_id] = doubt


def _snapshots_doubt(manifest: Manifest, provider: Provider,
                     budget: CompletionBudget | None) -> tuple[tuple[str, bool] | None, bool]:
    """(None, ...) when every snapshot of a run that did not wait for them is complete now; else
    (why it is no backup to count, and whether it must be held: nobody could tell, so it is not
    deleted either). The second item: whether the run counts because this prune completed its
    pending snapshots (on a dry run, ``budget`` None: would complete them). A cloud's pending
    snapshot is not counted yet; a local one is completed (fsynced) here. One whose fsync failed
    (which fails it for good) makes the run count as failed; one not completed in time, or kept
    from it by the store (its lock, its lock file), leaves the run neither counted nor deleted:
    its snapshots may be whole, and a later prune tries again."""
    if manifest.provider != provider.name:
        return (f"whether its snapshots completed is unknown (backup --no-wait): made with the {manifest.provider} "
                f"provider, not {provider.name}", True), False
    refs = manifest.snapshot_refs()
    describe = getattr(provider, "describe", None)
    if describe is None:  # a provider plugin older than describe()
        return ("whether its snapshots completed is unknown (backup --no-wait): the provider cannot say", True), False
    try:
        found = {ref.snapshot_id: ref for ref in describe(refs)}
    except SnapctlError as exc:
        return (f"whether its snapshots completed is unknown (backup --no-wait): the provider could not say: "
                f"{exc.message}", True), False
    where = getattr(provider, "elsewhere", None)  # not gone: in the store the run recorded (provider.store changed)
    moved = next(((ref, why) for ref in refs if ref.snapshot_id not in found and where is not None
                  and (why := where(ref))), None)
    if moved is not None:
        return (f"whether its snapshots completed is unknown (backup --no-wait): snapshot {moved[0].snapshot_id}: "
                f"{moved[1]}", True), False
    broken = [f"snapshot {ref.snapshot_id} no longer exists" if ref.snapshot_id not in found else
              f"snapshot {ref.snapshot_id} is in error: {found[ref.snapshot_id].error or 'no reason given'}"
              for ref in refs if ref.snapshot_id not in found or found[ref.snapshot_id].state == "error"]
    if broken or not refs:
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        first = broken[0] if broken else "none recorded"
        return (f"its snapshots did not complete (backup --no-wait): {first}{more}", False), False
    waiting = [found[ref.snapshot_id] for ref in refs if found[ref.snapshot_id].state != "completed"]
    if not waiting:
        return None, False
    if not can_complete(provider):  # a cloud's: it completes on its own, or ends in error
        more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
        return (f"its snapshots are not complete yet (backup --no-wait): snapshot {waiting[0].snapshot_id} is "
                f"pending{more}", False), False
    if budget is None:
        return None, True
    missed = complete_snapshots(provider, waiting, budget.deadline, budget.checked)
    if missed is None:
        return None, True
    if missed.failed:
        return (f"its snapshots did not complete (backup --no-wait): {missed.why}", False), False
    return (f"its snapshots are not completed yet (backup --no-wait): {missed.why}; a later prune tries again",
            True), False


_COMPLETED = "its snapshots completed by this prune (backup --no-wait)"
_WOULD_COMPLETE = "its snapshots are pending (backup --no-wait): the prune completes them first"


def _verdict(decision: Decision) -> RunVerdict:
    run = decision.run
    return RunVerdict(run.run_id, run.started_at, run.status, list(decision.reasons))


def _describe(retention: Retention) -> str:
    return (f"keep last {retention.keep_last}, daily {retention.daily}, weekly {retention.weekly}, "
            f"monthly {retention.monthly}")
