"""The backup run: DESIGN.md steps 1-8, in order, in this one module.

Read it top to bottom: `backup()` is the whole sequence. The promise it keeps: whatever fails,
and however the process is stopped short of SIGKILL, every node it held is completed and every
snapshot it made is deleted or owned by a manifest that says what happened. (Against SIGKILL the
agents' leases release the engines; an embedded agent dies with snapctl, and a hold of its that
outlives the process is released from its hold record by the next snapctl of the cluster
(snapctl/embedded_records.py). The run's tags let `snapctl gc` find the snapshots.)
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from node_agent.models import CompleteResponse
from snapctl import __version__
from snapctl.abandoned_runs import close_abandoned_runs, keep_unconfirmed, save_success, stored_with_snapshots
from snapctl.agent_client import open_agents
from snapctl.backup_run import BackupRun
from snapctl.catalog import open_catalog
from snapctl.catalog.lock import RENEWALS_PER_TTL, LockKeeper
from snapctl.completion import complete_newest_backup, would_complete
from snapctl.config import Inventory
from snapctl.dead_holds import wait_out_dead_holds
from snapctl.errors import (
    CLOUD_OUTAGE,
    AgentError,
    AgentTimeout,
    AgentUnreachable,
    Interrupted,
    ProviderError,
    ProviderUnreachable,
    RunFailed,
    SnapctlError,
    interrupted_by_signal,
)
from snapctl.events import NullReporter, Reporter
from snapctl.left_holds import still_held
from snapctl.manifest import Manifest, NodeRecord
from snapctl.pacing import CreateCallPacer, hold_lead, prepare_within_rate_limit, slow_snapshot_hint
from snapctl.preflight import BackupPlan, dry_run, preflight, preflight_refusal
from snapctl.process_identity import run_owner
from snapctl.provider_wait import after_release, wait_out_transient
from snapctl.provider_worker import CALL_RUNNER_READY_S, ProviderWorker, call_runner, held_by_process_locks
from snapctl.providers import TAG_RUN, SnapshotRef, node_volumes, open_provider, snapshot_tags
from snapctl.run_failure import (
    NOT_DELETED,
    hold_ended_before_complete,
    joined,
    node_reason,
    reason,
    rollback_complete_failed,
    run_failure,
)
from snapctl.trigger import before_backup


@dataclass
class BackupOptions:
    dry_run: bool = False
    no_wait: bool = False
    force: bool = False
    trigger: bool | None = None  # None: the inventory's policy decides
    consistency: str | None = None  # "cluster" | "per-node"; None: the inventory's policy decides
    prune: bool = True  # apply the inventory's retention after a successful run (`--no-prune`: False)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def now() -> datetime:
    return datetime.now(UTC)


async def backup(inventory: Inventory, options: BackupOptions, reporter: Reporter | None = None) -> Manifest | BackupPlan:
    reporter = reporter or NullReporter()
    policy = inventory.policy
    provider = open_provider(inventory)
    volumes = node_volumes(inventory, provider)
    inventory.check_engine_blocks()  # restores of this run start their engines from them
    catalog = open_catalog(inventory)
    run_id = new_run_id()
    started_at = now()  # the run's, not its manifest's: a slow preflight is part of it
    consistency = options.consistency or policy.consistency

    # A dry run writes nothing: no embedded hold record, so nothing a killed snapctl left is released either.
    async with open_agents(inventory, holds=not options.dry_run, records=not options.dry_run) as agents:
        # Step 2 comes before step 1 on a dry run: it takes no lock and holds nothing.
        if options.dry_run:
            # The catalog looked at once: its runs say what the run's step 1 would complete (said
            # where it would be done), and its lock and writability are reported after the preflight.
            look = await asyncio.to_thread(catalog.look)
            would_complete(look, catalog, provider, reporter)
            return await dry_run(inventory, provider, volumes, agents, reporter, catalog, look,
                                 consistency)

        executor = call_runner(inventory.policy, provider, inventory.provider, len(inventory.nodes),
                               inventory.cluster, inventory.base_dir, sum(len(v.volumes) for v in volumes.values()),
                               out_of_process=bool(held_by_process_locks(inventory, volumes)))
        executor.start()  # first: the provider warms up (its SDK, a worker process) while we lock and look
        # 1. Lock the cluster in the catalog; a stale lock (its holder died) is taken over.
        reporter.step("lock", f"locking cluster {inventory.cluster} in {catalog.describe()}")
        try:
            lock = catalog.acquire_lock(run_owner(), run_id, policy.lock_ttl_s, take_over_dead=True)
        except BaseException:
            executor.shutdown()
            raise
        lock_keeper = LockKeeper(lock, policy.lock_ttl_s / RENEWALS_PER_TTL)
        try:
            if (dead := lock.taken_from) is not None:
                reporter.step("lock", f"took the lock over from run {dead.run_id} by {dead.owner}, which is no longer "
                                      "running on this host")
                # Before the preflight, which would refuse the nodes its leases still hold, and
                # before its manifest is closed saying they were released by their leases.
                await wait_out_dead_holds(inventory, agents, dead.run_id, reporter)
            close_abandoned_runs(catalog, run_id)
            # Before the preflight, whose connections the prepares reuse: the fsyncs may take a while.
            await complete_newest_backup(catalog, provider, reporter, policy.wait_timeout_s)
            # 2. Preflight, before anything is held.
            preflight_started = time.monotonic()
            verdict = await preflight(inventory, agents, reporter, volumes, catalog,
                                      capabilities=provider.capabilities,
                                      consistency=consistency)
            fan_out_s = time.monotonic() - preflight_started
            blocking = verdict.at_least("critical")
            refused = [f for f in blocking if not options.force or not f.forceable]
            manifest = Manifest(
                cluster=inventory.cluster, run_id=run_id, provider=provider.name, snapctl_version=__version__,
                owner=run_owner(), started_at=started_at, forced=bool(blocking) and not refused,
                consistency=consistency,  # type: ignore[arg-type]
                degradations=[str(f) for f in verdict.at_least("degraded")],
                nodes={n.name: NodeRecord(name=n.name, engine=n.engine.get("type")) for n in inventory.nodes},
            )
            if refused:
                refusal = preflight_refusal(blocking, forced=options.force)
                for finding in blocking:
                    if finding.subject in manifest.nodes:
                        manifest.nodes[finding.subject].error = finding.message
                manifest.status, manifest.error, manifest.finished_at = "failed", refusal.message, now()
                catalog.save(manifest)  # the refusal is on record: `snapctl status` shows why
                raise refusal
            catalog.save(manifest)  # from here on, every snapshot of the run has an owner
            run = BackupRun(inventory, manifest, catalog, provider, agents, volumes, reporter, executor, fan_out_s=fan_out_s)
            try:
                # Before any hold: the provider's SDK and credentials load here, not in a freeze.
                reporter.step("provider", f"getting {provider.name} ready before any node is held")
                await executor.ready(CALL_RUNNER_READY_S)
                await _hold_snapshot_release(run, options, verdict.engine_types)
                executor.shutdown(wait=False)  # no call is left to make: its processes end meanwhile
                lock_keeper.check()
                manifest.measure()
                # 8. The manifest, before the (long) wait; if it cannot be written, nothing owns the
                # snapshots: roll back rather than leave them behind. Recorded before the save: one
                # that wrote the manifest and then failed (its index line) left it naming them all.
                run.recorded = True
                catalog.save(manifest)
            except BaseException as exc:
                await _roll_back(run, exc)
                raise _as_run_failure(run, exc) from exc

            await _wait_for_completion(run, wait=not options.no_wait)
            manifest.status = "succeeded"
            manifest.finished_at = now()
            save_success(catalog, manifest)
            if options.prune:  # ... then retention, still under the lock; its failure never fails the run
                from snapctl.prune import prune_after_backup

                await prune_after_backup(inventory, catalog, provider, manifest, reporter, lock_keeper.check)
            reporter.finished(manifest)
            return manifest
        finally:
            lock_keeper.stop()
            try:  # every snapshot call was awaited, or given up on by the rollback
                await executor.aclose()  # shut down; a provider's async client closes on its loop
            finally:  # even if a second Ctrl-C cuts the closing short
                try:
                    lock.release()
                except SnapctlError as exc:  # it expires by itself; this must not hide how the run ended
                    reporter.step("lock", f"could not release the cluster lock (it expires within "
                                          f"{policy.lock_ttl_s:g}s): {exc.message}")


async def _hold_snapshot_release(run: BackupRun, options: BackupOptions, engine_types: dict[str, str]) -> None:
    """Steps 3-6: trigger, prepare (the barrier), snapshot, complete each node as soon as it can.
    ``engine_types``: what each agent said it serves (the inventory's ``engine.type`` where it did not)."""
    policy = run.inventory.policy
    nodes = list(run.agents)

    # 3. Optionally the engines' own snapshots first: a shorter replay after a restore.
    if options.trigger if options.trigger is not None else policy.trigger_engine_snapshot:
        run.reporter.step("trigger", "running the engines' own snapshots")
        kinds = {n.name: engine_types.get(n.name) or n.engine.get("type") for n in run.inventory.nodes}
        run.manifest.degradations += await before_backup(run.agents, policy.trigger_timeout_s, run.reporter, kinds)

    renewer = asyncio.create_task(_renew_leases(run))
    try:
        if run.manifest.consistency == "per-node":
            # Each node is held just for its own snapshot: no cluster barrier, shortest freezes.
            run.reporter.step("snapshot", f"per-node: prepare, snapshot, complete on {len(nodes)} nodes")
            limit = asyncio.Semaphore(policy.concurrency)
            in_process = not isinstance(run.executor, ProviderWorker)  # the provider's own bucket is then ours to read
            run.pacer = CreateCallPacer.for_provider(run.provider, in_process=in_process)

            async def one(run: BackupRun, node: str) -> None:
                # The provider's rate limit is waited out before the hold, not during it: a node is
                # prepared just in time for its create calls, so its freeze stays short at any N.
                if run.pacer is not None:
                    await run.pacer.before_prepare(len(run.volumes[node].volumes))
                async with limit:
                    await prepare_within_rate_limit(
                        node, lambda: _prepare(run, node),
                        lambda wait_s: run.reporter.node(node, "rate-limited",
                                                         f"the agent's rate limit: prepare sent again in {wait_s:g}s"))
                    await _snapshot_then_complete(run, node)

            await _on_every_node(run, nodes, one)
        else:
            # 4. PREPARE every node in parallel: the barrier. 5 + 6. Each node's snapshot starts as
            # soon as that node is held, and it is COMPLETEd as soon as its own create calls returned
            # *and* every node is held. All holds overlap, which is what makes the cut consistent;
            # snapshots never wait for the slowest prepare, so the barrier adds no freeze time.
            lead = hold_lead(run.inventory, len(run.agents), run.fan_out_s)
            if lead > 0:
                run.hold_at_mono = time.monotonic() + lead
                run.manifest.hold_at = now() + timedelta(seconds=lead)
            run.reporter.step("prepare", f"preparing {len(nodes)} nodes" + (f", holds begin in {lead * 1000:.0f} ms"
                                                                           if lead > 0 else ""))
            all_held, not_yet_held = asyncio.Event(), set(nodes)

            async def hold_then_snapshot(run: BackupRun, node: str) -> None:
                await _prepare(run, node)
                not_yet_held.discard(node)
                if not not_yet_held:
                    all_held.set()
                    run.reporter.step("snapshot", f"all {len(nodes)} nodes held; snapshots with {run.provider.name}")
                await _snapshot_then_complete(run, node, all_held)

            await _on_every_node(run, nodes, hold_then_snapshot)
    finally:
        renewer.cancel()


async def _prepare(run: BackupRun, node: str) -> None:
    record = run.manifest.nodes[node]
    record.prepare_sent_at = now()
    run.prepare_sent[node] = time.monotonic()
    run.held.add(node)  # from the moment it is sent: a timed-out prepare may still have held
    run.reporter.node(node, "preparing")
    policy = run.inventory.policy
    # prepare_timeout_s is the engine's time: it counts from the hold instant, not from sending.
    budget = policy.prepare_timeout_s + max(0.0, run.hold_at_mono - run.prepare_sent[node])
    try:  # the client bounds the call (no timer of ours: at 1000 nodes, one per node costs)
        response = await run.agents[node].prepare(run.manifest.run_id, policy.lease_ttl_s, run.manifest.hold_at,
                                                  timeout_s=budget)
    except AgentUnreachable as exc:
        if not exc.delivered:  # no connection was made: nothing can be held there, nothing to release
            run.held.discard(node)
        if not isinstance(exc, AgentTimeout):
            raise
        raise RunFailed(f"node {node}: prepare did not answer within {policy.prepare_timeout_s:g}s of its hold "
                        "instant", hint="check the engine on that node; raise policy.prepare_timeout_s if it is just "
                                        "slow") from None
    except AgentError as exc:
        if exc.status is not None and 400 <= exc.status < 500:  # refused (token, conflict, request): held nothing
            run.held.discard(node)
        raise
    run.prepare_acked[node] = time.monotonic()
    record.prepare_acked_at = now()
    record.state = response.state
    run.reporter.node(node, "held")


async def _snapshot_then_complete(run: BackupRun, node: str, all_held: asyncio.Event | None = None) -> None:
    policy = run.inventory.policy
    tags = snapshot_tags(run.inventory.cluster, run.manifest.run_id, node, extra=run.inventory.tags)
    run.reporter.node(node, "snapshotting")
    if run.pacer is not None:
        run.pacer.submitted(len(run.volumes[node].volumes))
    future = run.executor.submit(run.provider.snapshot, run.volumes[node], tags)
    run.in_flight.append((node, future))
    # A node may stay frozen no longer than max_freeze_s, whatever the provider does.
    frozen_s = time.monotonic() - run.frozen_since(node)
    budget = min(policy.snapshot_timeout_s, policy.max_freeze_s - frozen_s)
    try:
        async with asyncio.timeout(max(budget, 0.001)):  # shielded: the rollback awaits the call in its turn
            refs = await asyncio.shield(asyncio.wrap_future(future))
    except TimeoutError:
        run.timed_out[node] = None
        if budget <= 0:  # no budget left when they began: the hold before them took it all
            raise RunFailed(f"node {node}: it was already frozen {frozen_s:.3g}s, past max freeze "
                            f"{policy.max_freeze_s:g}s, before its snapshot calls began",
                            hint="raise policy.max_freeze_s above what a node's prepare takes: it is frozen from "
                                 "then on") from None
        creates = sum(len(v.volumes) for v in run.volumes.values())
        raise RunFailed(f"node {node}: snapshot calls did not return within {budget:.1f}s (max freeze "
                        f"{policy.max_freeze_s:g}s, snapshot timeout {policy.snapshot_timeout_s:g}s)",
                        hint=slow_snapshot_hint(run.provider.capabilities, creates, run.manifest.consistency)) from None
    record = run.manifest.nodes[node]
    record.snapshots = refs
    if all_held is not None:
        await all_held.wait()  # bounded: a prepare that never answers fails the run (prepare_timeout_s)
    if node in run.lost_hold:
        raise RunFailed(f"node {node}: its hold ended before the snapshot was fixed: {run.lost_hold[node]}")
    await _complete(run, node)


async def _complete(run: BackupRun, node: str) -> None:
    record = run.manifest.nodes[node]
    answer = await _completed(run, node)
    run.held.discard(node)
    if not answer.released:  # the lease expired, the engine restarted, another token holder completed it
        raise hold_ended_before_complete(node, answer.ended)
    record.complete_acked_at = now()
    record.freeze_window_s = round(time.monotonic() - run.frozen_since(node), 6)
    run.reporter.node(node, "released", f"frozen {record.freeze_window_s:.3f}s")


async def _completed(run: BackupRun, node: str) -> CompleteResponse:
    """COMPLETE one node, bounded: a hung agent is an error naming the node, not a bare timeout.
    ``released`` false: the run's hold had ended before (a repeated complete is answered so too)."""
    try:  # bounded by the client, at policy.agent_timeout_s
        return await run.agents[node].complete(run.manifest.run_id)
    except AgentTimeout:
        raise AgentUnreachable(node, f"no answer from the agent to complete within "
                                     f"{run.inventory.policy.agent_timeout_s:g}s",
                               hint="the agent releases the engine itself when the lease runs out") from None


async def _renew_leases(run: BackupRun) -> None:
    """The dead man's switch stays armed: we renew, and if we stop, the agents release."""
    period = run.inventory.policy.lease_ttl_s / 3
    while True:
        await asyncio.sleep(period)
        held = [n for n in run.held if n in run.prepare_acked]
        results = await asyncio.gather(*(run.agents[n].renew(run.manifest.run_id) for n in held),
                                       return_exceptions=True)
        for node, result in zip(held, results):
            if isinstance(result, SnapctlError) and node in run.held:
                run.lost_hold[node] = node_reason(result)


async def _on_every_node(run: BackupRun, nodes: list[str], step) -> None:
    """Run ``step(run, node)`` on every node at once. The first failure is recorded on its node,
    cancels the rest and is raised (of failures that came together, the first node's): the
    caller rolls back."""

    async def guarded(node: str) -> None:
        try:
            await step(run, node)
        except SnapctlError as exc:
            run.manifest.nodes[node].error = exc.message
            run.reporter.node(node, "failed", exc.message)
            raise

    tasks = [asyncio.ensure_future(guarded(n)) for n in nodes]
    try:
        if tasks:  # one wake-up when all are done or one failed: a wake-up per node queued among the
            # completes at 1000 nodes (docs/performance-log.md, item 50)
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in tasks if t in done and not t.cancelled() and t.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _roll_back(run: BackupRun, cause: BaseException) -> None:
    """Step 7: complete every held node, delete this run's snapshots, mark the manifest failed."""
    run.reporter.step("rollback", f"rolling back: {reason(cause)}")
    manifest, policy = run.manifest, run.inventory.policy
    unrecorded_first: str | None = None  # why the rollback could not be recorded before its deletes
    if run.recorded:  # the catalog says every snapshot was taken: killed while deleting them, this run is no backup
        manifest.error = reason(cause)
        try:
            await asyncio.to_thread(run.catalog.save, manifest)
        except SnapctlError as exc:
            # Then, where the catalog names the snapshots (step 8's save may have failed after the
            # manifest, on its index line), nothing is deleted: it would go on naming every one with
            # no error, a run killed in its wait, which the next run keeps as a backup; prune and
            # verify ask the provider about those before anything counts on them.
            if await asyncio.to_thread(stored_with_snapshots, run.catalog, manifest.run_id):
                unrecorded_first = exc.message
    held = sorted(run.held)
    results = await asyncio.gather(*(_completed(run, n) for n in held), return_exceptions=True)
    left = await still_held(run.agents, dict(zip(held, results)))  # answered "nothing is held"
    for node, result in zip(held, results):
        if node in left:  # released, unless the engine is held all the same
            result = left[node] or False
        if isinstance(result, (BaseException, str)):
            manifest.nodes[node].error = joined(manifest.nodes[node].error, result if isinstance(result, str)
                                                else rollback_complete_failed(result, policy.lease_ttl_s))
        else:
            run.held.discard(node)
            record = manifest.nodes[node]
            if node in run.prepare_acked and record.freeze_window_s is None:  # how long the failure held it
                record.freeze_window_s = round(time.monotonic() - run.frozen_since(node), 6)
            run.reporter.node(node, "released", "rolled back")
    # Snapshot calls still running in threads finish (bounded by the provider's own timeouts)
    # before we look for what they made.
    refs: list[SnapshotRef] = [r for rec in manifest.nodes.values() for r in rec.snapshots]
    for node, future in run.in_flight:
        try:
            refs.extend(await asyncio.wait_for(asyncio.wrap_future(future), policy.snapshot_timeout_s))
        except SnapctlError as exc:
            if node in run.timed_out:  # why the freeze ran out (throttling waited out, say): the operator's clue
                run.timed_out[node] = exc
                manifest.nodes[node].error = joined(manifest.nodes[node].error, f"the call then failed: {exc.message}")
        except BaseException:  # noqa: BLE001 - a failed call made nothing we can name; the sweep below finds it
            pass
    outage: ProviderError | None = None  # the cloud not answering, or answering 5xx
    try:
        refs.extend(await asyncio.to_thread(run.provider.find, {TAG_RUN: manifest.run_id}))
    except SnapctlError as exc:
        manifest.degradations.append(f"could not list the run's snapshots for cleanup: {exc}")
        outage = exc if isinstance(exc, CLOUD_OUTAGE) else None
    leftover: dict[str, str] = {}  # snapshot id -> why it could not be deleted
    for ref in {r.snapshot_id: r for r in refs}.values():
        if unrecorded_first is not None:
            leftover[ref.snapshot_id] = f"kept: the catalog could not record the rollback first ({unrecorded_first})"
            continue
        if outage is not None:
            # Each delete would spend the SDK's every retry on a cloud that is failing, or every
            # timeout too on a silent network (minutes per call with the defaults): the rest are
            # left to gc at once.
            said = ("could not be reached" if isinstance(outage, ProviderUnreachable)
                    else "answered with a server error")
            leftover[ref.snapshot_id] = f"not tried, the cloud {said}: {outage.message}"
            continue
        try:
            await asyncio.to_thread(run.provider.delete, ref)
        except SnapctlError as exc:
            leftover[ref.snapshot_id] = str(exc)
            outage = exc if isinstance(exc, CLOUD_OUTAGE) else None
    if leftover:
        manifest.degradations.append(NOT_DELETED + ", ".join(f"{i} ({why})" for i, why in leftover.items()))
    for record in manifest.nodes.values():
        record.snapshots = [r for r in record.snapshots if r.snapshot_id in leftover]
    manifest.status = "failed"
    manifest.error = reason(cause)
    manifest.finished_at = now()
    manifest.measure()
    try:
        run.catalog.save(manifest)
    except SnapctlError as exc:  # released and cleaned up all the same; the next run marks it failed
        run.unrecorded = exc.message
    run.reporter.finished(manifest)


async def _wait_for_completion(run: BackupRun, wait: bool = True) -> None:
    """Snapshots are fixed and every node released: the provider's work that needs no hold (aws:
    tags), then, unless ``--no-wait``, wait for the provider to finish uploading them."""
    manifest = run.manifest
    refs = manifest.snapshot_refs()
    try:
        await after_release(run.provider, refs, run.reporter)  # never raises an Exception: no rollback
        if not wait:
            return
        run.reporter.step("wait", f"waiting for {len(refs)} snapshots to complete")
        deadline = time.monotonic() + run.inventory.policy.wait_timeout_s
        done = await wait_out_transient(run.provider, refs, deadline, run.reporter,
                                        run.inventory.policy.wait_timeout_s)
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Stopped, not failed: with every snapshot taken and every node released this is a backup,
        # kept as a --no-wait run's is (and as the next run closes one killed here).
        keep_unconfirmed(manifest, interrupted_by_signal())
        kept = f"backup {manifest.run_id} is kept, its snapshots not confirmed complete"
        run.reporter.step("wait", f"interrupted: {kept} (as with --no-wait: prune and verify ask the provider)")
        save_success(run.catalog, manifest)
        raise Interrupted(outcome=kept, hint=f"`snapctl verify {manifest.run_id}` asks the provider whether its "
                                             "snapshots are there and complete") from None
    except BaseException as exc:
        await _roll_back(run, exc)
        raise _as_run_failure(run, exc) from exc
    by_id = {ref.snapshot_id: ref for ref in done}
    for record in manifest.nodes.values():
        record.snapshots = [by_id.get(ref.snapshot_id, ref) for ref in record.snapshots]
    manifest.snapshots_completed = True


def _as_run_failure(run: BackupRun, exc: BaseException) -> BaseException:
    return run_failure(run.manifest, exc, run.unrecorded, run.timed_out)
