"""What a prune would do now (step 1 of snapctl.prune; a dry run's whole answer), and the
result that both it and ``apply`` give.

The policy (snapctl.retention) is decided over the runs whose manifests can be read, and a
`backup --no-wait` run it would keep counts only once the provider says its snapshots completed
(snapctl.completion completes them where only asking does). A doomed run that a restore or drill
is using is kept (snapctl.prune_in_use), and the snapshots each doomed run takes with it are named:
its manifest's, and those tagged with it that no other run's manifest names. Once anything would
go, the provider's listing of the cluster's snapshots (which the plan needs anyway, for what is
tagged with a doomed run) is held against every run kept as a backup: one missing a snapshot its
manifest names cannot be restored as recorded, so it is neither counted nor deleted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from snapctl.catalog import Catalog
from snapctl.completion import CompletionBudget, can_complete, complete_snapshots
from snapctl.errors import SnapctlError
from snapctl.providers import TAG_CLUSTER, Provider, SnapshotRef
from snapctl.prune_in_use import in_use, in_use_records
from snapctl.prune_refs import Owners, by_run, doomed_refs
from snapctl.retention import PRUNING, SUCCEEDED, Decision, RetentionPlan, Run, decide
from snapctl.timestamps import started_ahead_text

if TYPE_CHECKING:
    from snapctl.config import Retention
    from snapctl.manifest import Manifest


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
    # runs kept uncounted that an operator must look at: started in the future, or missing a snapshot
    warnings: list[str] = field(default_factory=list)
    # `backup --no-wait` runs whose snapshots the provider found complete: counted, and (not on a
    # dry run) recorded in their manifests, so that the provider is asked once
    confirmed: list[str] = field(default_factory=list)
    # those of them whose pending snapshots this prune completed itself (local); on a dry run: would complete
    completed: list[str] = field(default_factory=list)
    # runs the index listed whose manifest was missing and of which no snapshot was left: their
    # lines taken out (not on a dry run; snapctl.gc's ``forget_emptied_runs``)
    forgotten: list[str] = field(default_factory=list)
    # Which manifest names each snapshot, as the plan read them: apply asks it, not the catalog
    # again. Set by plan; unannotated, so no dataclass field, and no part of the JSON a prune prints.
    owners = None  # Owners | None

    @property
    def ok(self) -> bool:
        return not self.unfinished


def plan(catalog: Catalog, provider: Provider, retention: Retention, drill_timeout_s: float,
         pending: Manifest | None = None, *, complete_within: float | None = None,
         checked: Callable[[], None] | None = None, made: str | None = None) -> PruneResult:
    """What a prune would do now. The result of a dry run. ``pending``: a run whose snapshots are
    not complete yet (`backup --no-wait`): kept, and not counted, so that the runs it would
    replace stay until it is known to be a backup. ``complete_within``: seconds in which to
    complete, under the cluster lock, the pending snapshots of `--no-wait` runs the policy would
    keep, where the provider completes them only when asked (local), so that they count; None
    (a dry run): reads only, and counts such a run as the prune would once it completed them.
    ``checked`` is called before each snapshot completed and raises to stop (Ctrl-C, a lost lock).
    ``made``: the run a backup just made, whose own retention keeps it whatever its start."""
    budget = None if complete_within is None else CompletionBudget(time.monotonic() + complete_within,
                                                                   checked or (lambda: None))
    over = _decide_over_readable_runs(catalog, provider, retention, budget, pending.run_id if pending else None,
                                      made)
    decided, completed = over.plan, over.completed_here
    tagged = by_run(over.listing or []) if decided.delete else {}
    owners = Owners(catalog)
    result = PruneResult(catalog.cluster, complete_within is None, retention, [], [], problems=over.problems,
                         warnings=over.warnings, confirmed=over.confirmed, completed=completed)
    result.owners = owners
    result.kept = [_verdict(d) for d in decided.keep]
    done = _WOULD_COMPLETE if complete_within is None else _COMPLETED
    for verdict in result.kept:
        if verdict.run_id in completed:
            verdict.reasons.append(done)
    if pending is not None:
        result.kept.insert(0, RunVerdict(pending.run_id, pending.started_at, pending.status,
                                         ["its snapshots are not complete yet (--no-wait): not counted"]))
    records = in_use_records(catalog) if decided.delete else {}  # apply looks again
    doomed: list[tuple[RunVerdict, Manifest]] = []  # every one read before any is judged: see Owners.note
    for decision in decided.delete:
        verdict = _verdict(decision)
        if spared_while_in_use(catalog, verdict, result, drill_timeout_s, records):
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


def spared_while_in_use(catalog: Catalog, verdict: RunVerdict, result: PruneResult, drill_timeout_s: float,
                        records: dict[str, list[str]] | None = None) -> bool:
    """Keep ``verdict``'s run (in ``result.kept``, saying why) when a restore or drill of it is
    under way (``in_use``). ``records``: each folder's keys as listed a moment ago."""
    why = in_use(catalog, verdict.run_id, drill_timeout_s, records)
    if why is None:
        return False
    kept = RunVerdict(verdict.run_id, verdict.started_at, verdict.status, [why])
    result.kept = sorted([*result.kept, kept], key=lambda v: v.started_at, reverse=True)
    return True


@dataclass
class _Decided:
    plan: RetentionPlan
    problems: list[str]
    warnings: list[str]
    confirmed: list[str]  # `--no-wait` runs found complete
    completed_here: list[str]  # those of them this prune completed (or would)
    listing: list[SnapshotRef] | None  # the provider's snapshots of the cluster, when anything would go


def _decide_over_readable_runs(catalog: Catalog, provider: Provider, retention: Retention,
                               budget: CompletionBudget | None, left_out: str | None = None,
                               made: str | None = None) -> _Decided:
    """The policy over the catalog's runs, where every succeeded run it keeps has had its manifest
    read: a kept run is the reason others go, so it must be a backup that can be restored, not just
    a line in the index. A damaged manifest behind an intact line would otherwise stand in for the
    newest backup while the readable ones went. Unreadable runs are left out (reported, left
    alone) and the policy decided again without them, until every run it keeps was read. A kept
    run whose manifest does not say its snapshots completed (`backup --no-wait`) is asked about at
    the provider: a run whose snapshots failed later must not count as the backup that replaces
    the good ones; where the provider completes pending ones only when asked, it is asked
    (within ``budget``; None: a dry run, which only counts them as completed). Once anything
    would go, the provider's listing (one call) is held against each kept run's manifest: a run
    missing a snapshot is held, neither counted nor deleted (``_unlisted``). Runs that started
    in the future by the catalog's clock are held too (``decide``). Also returns the runs found
    complete, and those of them this prune completed (or would)."""
    entries, problems = catalog.list(confirm_newest=False)  # the loop below reads what it keeps, once
    runs = {e.run_id: e for e in entries if e.run_id != left_out}
    now = catalog.now()
    confirmed: set[str] = set()
    doubts: dict[str, tuple[str, bool]] = {}  # run id -> (why it is not counted, whether it is held)
    completed: list[str] = []
    completed_here: list[str] = []
    read: dict[str, Manifest] = {}  # the manifests confirm read
    listing: list[SnapshotRef] | None = None
    looked: set[str] = set()  # runs held against the listing
    warnings: list[str] = []
    while True:
        decided = decide([Run(e.run_id, e.started_at, e.status, *doubts.get(e.run_id, (None, False)))
                          for e in runs.values()], retention, now=now, made=made)
        doubtful = [d.run.run_id for d in decided.keep if d.run.status == SUCCEEDED and d.run.run_id not in confirmed]
        if not doubtful:
            if decided.delete and listing is None:
                listing = provider.find({TAG_CLUSTER: catalog.cluster})
            # The run this backup made is skipped too: an eventually consistent listing (aws
            # DescribeSnapshots by tag) may not show snapshots made a moment ago.
            skip = set(completed) | ({made} if made else set())
            gaps = {} if listing is None else _unlisted(decided, read, listing, provider, looked, skip)
            if gaps:
                for run_id, why in gaps.items():
                    doubts[run_id] = (f"cannot be restored as recorded: {why}", True)
                    warnings.append(f"run {run_id} cannot be restored as recorded: {why}; retention neither counts "
                                    f"nor deletes it; hint: `snapctl verify {run_id}` names what is missing, and the "
                                    "run is left for you to repair or remove")
                continue
            warnings += [_ahead_warning(run, now) for run in decided.ahead]
            return _Decided(decided, sorted(problems), warnings, completed, completed_here, listing)
        current, unreadable = catalog.confirm(doubtful, read)
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


def _unlisted(decided: RetentionPlan, read: dict[str, Manifest], listing: list[SnapshotRef], provider: Provider,
              looked: set[str], skip: set[str]) -> dict[str, str]:
    """Why each run kept as a backup cannot be restored as recorded: a snapshot its manifest names
    that the provider's listing lacks, or has in error (the listing is all a plan has; `snapctl
    verify` asks about each snapshot). Each run is looked at once; ``skip``: runs the provider was
    asked about already (`--no-wait` ones) and the run a backup just made. A run made with another
    provider is not in the listing."""
    listed = {ref.snapshot_id: ref for ref in listing}
    where = getattr(provider, "elsewhere", None)
    ahead = {run.run_id for run in decided.ahead}
    gaps: dict[str, str] = {}
    for decision in decided.keep:
        run = decision.run
        if run.status != SUCCEEDED or run.doubt is not None or run.run_id in looked or run.run_id in ahead or run.run_id in skip:
            continue
        looked.add(run.run_id)
        manifest = read.get(run.run_id)
        if manifest is None or manifest.provider != provider.name:
            continue
        broken = []
        for ref in manifest.snapshot_refs():
            found = listed.get(ref.snapshot_id)
            if found is None:
                why = (where(ref) if where is not None else None) or "not among the provider's snapshots of the cluster"
                broken.append(f"snapshot {ref.snapshot_id} (node {ref.node}): {why}")
            elif found.state == "error":
                broken.append(f"snapshot {ref.snapshot_id} (node {ref.node}) is in error: {found.error or 'no reason given'}")
        if broken:
            gaps[run.run_id] = broken[0] + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else "")
    return gaps


def _ahead_warning(run: Run, now: datetime) -> str:
    return (f"run {run.run_id} {started_ahead_text(run.started_at, now)}: retention neither counts nor deletes it; "
            "hint: check the clocks of the hosts that run snapctl (NTP)")


_COMPLETED = "its snapshots completed by this prune (backup --no-wait)"
_WOULD_COMPLETE = "its snapshots are pending (backup --no-wait): the prune completes them first"


def _verdict(decision: Decision) -> RunVerdict:
    run = decision.run
    return RunVerdict(run.run_id, run.started_at, run.status, list(decision.reasons))
