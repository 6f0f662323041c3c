"""`snapctl drill [RUN|latest]`: the restore drill CI runs, proof that a backup restores.

First, `snapctl restore`'s own checks of every node's targets and snapshots (the same code): a
refusal fails the drill, as it would that restore, before anything is restored. Then for every
node of the run, in parallel: restore its snapshots into the scratch environment the
inventory describes, start or attach its engine on the restored data, run the engine's verify,
and compare with the facts recorded at PREPARE (rows, checksums, vclock, revision, raft indexes).
Timed from the first restore to the last engine verified: the cluster's RTO. Then, whatever
happened, Ctrl-C and SIGTERM included: tear everything down, write a JUnit XML report, record the
drill in the catalog.

Two ways to run a node's engine:
- embedded (the default): local directories, the engine run on this machine from the restored
  files (``snapctl.drill_engines``: sqlite, tarantool, etcd);
- a scratch agent (``nodes[].restore.agent``): the restored volumes are attached to the node's
  scratch machine (``restore.instance``), its agent restore-prepares them, its engine comes up,
  and the agent verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from node_agent.models import VerifyFacts
from snapctl import drill_threads
from snapctl.catalog import Catalog, open_catalog
from snapctl.config import Inventory, Node
from snapctl.drill_engines import engine_type
from snapctl.drill_teardown import teardown
from snapctl.errors import BadInputError, CatalogError, EngineError, ExitCode, SnapctlError, interrupted_by_signal
from snapctl.events import NullReporter, Reporter
from snapctl.evidence import compare_facts, missing_files, volume_roots
from snapctl.manifest import DrillSummary, IndexEntry, Manifest, NodeRecord, record_interrupted_by
from snapctl.providers import TAG_DRILL, Provider, SnapshotRef, open_provider, stoppable_by
from snapctl.redact import redact
from snapctl.restore import (
    check_before_restoring,
    inventory_node,
    no_engine_path,
    remap_paths,
    restore_volumes,
    restored_files,
    scratch_agent,
)
from snapctl.runner import interrupts_deferred, sigterm_as_ctrl_c, stopped_by
from snapctl.timestamps import UtcTime
from snapctl.usable_run import check_provider, usable_run

NodeVerdict = Literal["passed", "mismatch", "error"]
DEFAULT_JUNIT = "snapctl-drill.xml"
_MAX_PARALLEL_NODES = 4  # each may start a server: more than this only fights over the CPUs
_AGENT_POLL_S = 0.5


class NodeDrill(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str
    engine: str | None = None
    verdict: NodeVerdict = "passed"
    runs_on: str | None = None  # "this machine" or the scratch agent's address
    volumes: dict[str, str] = Field(default_factory=dict)  # volume -> restored directory or volume id
    expected: VerifyFacts | None = None  # recorded at PREPARE
    facts: VerifyFacts | None = None  # of the restored engine
    mismatches: list[str] = Field(default_factory=list)
    error: str | None = None
    hint: str | None = None
    restore_s: float | None = None  # its snapshots restored
    start_s: float | None = None  # its engine up on the restored data
    verify_s: float | None = None
    rto_s: float | None = None  # drill start -> this node verified


class DrillReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: str
    run_id: str
    drill_id: str
    provider: str
    started_at: UtcTime
    finished_at: UtcTime | None = None
    rto_s: float | None = None  # drill start -> the last engine verified (every node passed)
    nodes: list[NodeDrill] = Field(default_factory=list)
    scratch_dir: str | None = None
    owner: str | None = None  # user@host:pid: the next drill on this host cleans up after it if it is killed
    owner_process: dict[str, Any] | None = None  # its boot, pid namespace and start: what makes the pid proof
    abandoned: bool = False  # killed before it finished; found and cleaned up by a later drill or gc
    cleaned_up: list[str] = Field(default_factory=list)  # what this drill cleaned up of earlier killed drills
    kept: bool = False  # --keep: scratch directories and restored volumes left for inspection
    interrupted: bool = False  # Ctrl-C, SIGTERM or SIGHUP: the nodes not yet verified are errors
    interrupted_by: str | None = None  # which: SIGINT (Ctrl-C), SIGTERM or SIGHUP; None in older records
    leftovers: list[str] = Field(default_factory=list)  # restored volumes the drill could not delete
    teardown_errors: list[str] = Field(default_factory=list)
    junit: str | None = None
    record: str | None = None  # catalog key of this report
    # Newer runs `latest` passed over, and why; what teardown found by the drill's tag and deleted.
    warnings: list[str] = Field(default_factory=list)
    error: str | None = None  # restore's checks refused the run before any node was restored
    hint: str | None = None

    @property
    def ok(self) -> bool:
        return (all(n.verdict == "passed" for n in self.nodes) and not self.teardown_errors and not self.interrupted
                and not self.error and not self.abandoned)

    @property
    def exit_code(self) -> ExitCode:
        if any(n.verdict == "mismatch" for n in self.nodes):
            return ExitCode.VERIFY_MISMATCH
        return ExitCode.OK if self.ok else ExitCode.RUN_FAILED


@dataclass
class _Drill:
    """What every node's drill shares, and what teardown needs to find."""

    inventory: Inventory
    manifest: Manifest
    provider: Provider
    scratch: Path
    started: float  # monotonic; the RTO's start, moved past restore's checks once they passed
    deadline: float  # the checks count against drill.timeout_s
    reporter: Reporter
    tags: dict[str, str] = field(default_factory=dict)  # every volume it restores carries them: TAG_DRILL
    cancelled: threading.Event = field(default_factory=threading.Event)
    made: list[tuple[SnapshotRef, str]] = field(default_factory=list)  # every restored volume, as it lands
    places: list[str] = field(default_factory=list)  # the restore targets outside scratch (find_restored's)
    lock: threading.Lock = field(default_factory=threading.Lock)
    warnings: list[str] = field(default_factory=list)  # restore's checks': a scratch agent too old to ask
    results: dict[str, NodeDrill] = field(default_factory=dict)  # each node's, as its drill fills it in
    phases: dict[str, str] = field(default_factory=dict)  # each node's step under way: restoring, starting, ...
    left_running: list[str] = field(default_factory=list)  # nodes whose drill outlasted the stop's grace


def run_drill(inventory: Inventory, run_ref: str = "latest", *, junit: Path | None = None, keep: bool = False,
              reporter: Reporter | None = None) -> DrillReport:
    from snapctl.drill_leftovers import clean_up_killed_drills, make_scratch_dir
    from snapctl.junit import usable_report_path, write_junit, write_junit_refusal
    from snapctl.process_identity import identity, run_owner

    reporter = reporter or NullReporter()
    junit_path = usable_report_path(junit or (inventory.resolve(inventory.drill.junit) if inventory.drill.junit
                                              else Path(DEFAULT_JUNIT)))
    started_at = datetime.now(UTC)
    drill_id = f"{started_at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
    catalog: Catalog | None = None  # None: refused before the catalog opened (its block, boto3 missing)
    report: DrillReport | None = None
    # Every way a drill cannot begin (no backup yet, the catalog unreadable, no scratch directory)
    # still leaves CI a report saying why.
    try:
        catalog = open_catalog(inventory)
        skipped: list[str] = []
        running: list[IndexEntry] = []  # for `latest`: the runs it may have passed over, as listed once
        run_id = catalog.resolve(run_ref, skipped, running)
        record = f"{catalog.cluster}/drills/{run_id}-{drill_id}.json"
        report = DrillReport(cluster=inventory.cluster, run_id=run_id, drill_id=drill_id, started_at=started_at,
                             provider=str(inventory.provider.get("type")), owner=run_owner(), kept=keep,
                             owner_process=identity(os.getpid()), record=record, warnings=skipped)
        # On record, unfinished, before the run's status is read (as a restore is): a prune that marks
        # the run after this read checks the records again before deleting, and finds this one.
        _write_record(catalog, report)
        manifest = usable_run(catalog, catalog.load(run_id), "it has nothing to restore", report.warnings,
                              latest=run_ref.strip() == "latest", running=running)  # resolved above: no second scan
        for name in manifest.nodes:
            inventory_node(inventory, name)  # every node of the run must still be described
        provider = open_provider(inventory)
        check_provider(manifest, provider)
        report.cleaned_up = clean_up_killed_drills(catalog, provider, f"drill {drill_id}", reporter)
        scratch = make_scratch_dir(inventory, manifest.run_id, drill_id, record, provider.name)
    except SnapctlError as exc:
        write_junit_refusal(junit_path, inventory.cluster, run_ref, exc, report.cleaned_up if report else [])
        _finish_refused(catalog, report, exc)
        raise
    report.provider, report.scratch_dir = provider.name, str(scratch)
    started = time.monotonic()
    drill = _Drill(inventory, manifest, provider, scratch, started, started + inventory.drill.timeout_s, reporter,
                   tags={TAG_DRILL: drill_id})
    refused: SnapctlError | None = None
    try:
        # Now naming the scratch directory (and its marker): the next drill cleans up after a kill.
        # In the try: if the catalog refuses it, the scratch directory still goes.
        try:
            _write_record(catalog, report)
        except SnapctlError as exc:  # nothing restored yet: the drill does not begin unrecorded
            write_junit_refusal(junit_path, inventory.cluster, run_ref, exc, report.cleaned_up)
            raise
        with sigterm_as_ctrl_c():  # a CI job cancelled: teardown, the report and the record still happen
            reporter.step("drill", f"restoring run {manifest.run_id} ({len(manifest.nodes)} nodes) into {scratch}")
            try:
                report.nodes, report.interrupted = _drill_all(drill)
                report.warnings += drill.warnings
                report.teardown_errors += drill.left_running
            except SnapctlError as exc:  # what `snapctl restore` refuses up front: on record, then the error
                refused = exc
                report.error, report.hint = exc.message, exc.hint
    except KeyboardInterrupt:  # outside the nodes' own drills: just before them, or once they were done
        report.interrupted = True
    finally:
        # Cut short, the teardown would leave restored data, and the report (an older drill's stays at
        # the junit path) and the record (the run kept from prune) unwritten: later interrupts wait.
        try:
            with interrupts_deferred():
                drill.cancelled.set()
                reporter.step("teardown", "stopping scratch engines, removing restored data" if not keep
                              else "keeping it all")
                teardown(drill, report, keep)
        except KeyboardInterrupt:
            report.interrupted = True
        report.finished_at = datetime.now(UTC)
    report.interrupted_by = stopped_by() if report.interrupted else None
    times = [n.rto_s for n in report.nodes if n.rto_s is not None]
    report.rto_s = max(times) if report.ok and times and len(times) == len(report.nodes) else None
    try:
        with interrupts_deferred():
            try:
                report.junit = str(write_junit(report, junit_path))
            finally:  # a report that could not be written still leaves the drill on record
                _record(catalog, report)
    except KeyboardInterrupt:
        report.interrupted = True  # written as it was: what the drill found stands
    if report.interrupted:  # reported as the command's error (exit 130) once the evidence is written
        reporter.step("drill", f"interrupted; junit report {report.junit}, recorded as {report.record}")
        raise KeyboardInterrupt
    if refused is not None:  # the command fails as `snapctl restore` of the run would, with its message
        reporter.step("drill", f"refused before restoring anything; junit report {report.junit}, recorded as "
                               f"{report.record}")
        raise refused
    return report


def _drill_all(drill: _Drill) -> tuple[list[NodeDrill], bool]:
    """Every node's drill, in manifest order, and whether a stop signal cut the drill short.
    Interrupted, nodes not started yet fail at once and running ones at their next step, each
    with its own error, so the report still has every node."""
    names = list(drill.manifest.nodes)
    interrupted = False
    try:
        _check_before_restoring(drill)  # its SnapctlError is the drill's, not one node's: nothing is restored
        _mark_restore_places(drill)
        drill.started = time.monotonic()  # the RTO counts from the first restore, as a real restore's would
    except KeyboardInterrupt:
        drill.cancelled.set()  # every node then fails at its first step, saying so
        interrupted = True
    futures: list[Future[NodeDrill]] = []  # none, if an interrupt came as the deferral began
    try:
        with interrupts_deferred():  # until every node has its future: none may run unseen
            futures = drill_threads.start(lambda name: _drill_node(drill, name), names, _MAX_PARALLEL_NODES,
                                          "snapctl-drill")
        if not interrupted:  # else only the grace below: a node that ignores the stop must not hold the drill
            drill_threads.wait_for(futures)
    except KeyboardInterrupt:
        drill.cancelled.set()
        interrupted = True
    if interrupted:  # told to stop, every node ends soon; one that does not is left running, and said so
        try:
            drill_threads.wait_for(futures, time.monotonic() + drill_threads.STOP_GRACE_S)
        except KeyboardInterrupt:
            pass  # stopped again: the nodes are waited for no longer
    return [f.result() if f.done() else _not_done(drill, name, f) for name, f in zip(names, futures)], interrupted


def _not_done(drill: _Drill, name: str, future: Future[NodeDrill]) -> NodeDrill:
    """A node whose drill had not ended ``STOP_GRACE_S`` after the stop: not begun (its thread
    was never free), or still running, which the report and the teardown's errors say."""
    result = drill.results.get(name)
    result = NodeDrill(node=name) if result is None else result.model_copy(deep=True)  # it may still change
    stopped = f"the drill was {interrupted_by_signal()}"
    if future.cancel():
        result.error = f"{stopped} before restoring this node"
    else:
        phase = drill.phases.get(name, "beginning")
        result.error = (f"still {phase} this node {drill_threads.STOP_GRACE_S:g}s after {stopped}: left running as "
                        "the drill tore down")
        drill.left_running.append(
            f"node {name}: its drill was left running ({phase}) {drill_threads.STOP_GRACE_S:g}s after the stop; what "
            f"it restores or starts from now on (volumes tagged {TAG_DRILL}={drill.tags.get(TAG_DRILL)}, a scratch "
            "engine) is not torn down")
    result.verdict = "error"
    drill.reporter.node(name, "failed", result.error)
    return result


def _check_before_restoring(drill: _Drill) -> None:
    """Restore's own checks of every node, as `snapctl restore` makes them before restoring any: a
    target in the way, a snapshot gone, a disk without room, found before any node is copied."""
    nodes = {name: inventory_node(drill.inventory, name) for name in drill.manifest.nodes}
    drill.warnings += check_before_restoring(
        drill.inventory, drill.provider, drill.manifest, nodes,
        {name: _restore_root(drill, node) for name, node in nodes.items()}, zone=None,
        attached={name for name, node in nodes.items() if _attaches(node)}, drill=True)


def _mark_restore_places(drill: _Drill) -> None:
    """Every target outside the scratch directory, in its marker before anything is restored: a
    drill killed outright leaves them too, and only the marker tells the cleanup where to look."""
    from snapctl.drill_leftovers import mark_restore_places

    places = []
    for name, record in drill.manifest.nodes.items():
        root = _restore_root(drill, inventory_node(drill.inventory, name))
        if root != drill.scratch and drill.scratch not in root.parents:
            places += [str(root / ref.volume) for ref in record.snapshots]
    mark_restore_places(drill.scratch, places)
    drill.places = places


def _restore_root(drill: _Drill, node: Node) -> Path:
    return drill.inventory.resolve(node.restore.path) if node.restore.path else drill.scratch / node.name


def _attaches(node: Node) -> bool:
    """A node drilled through a scratch agent on its restore instance gets its volumes attached there."""
    return bool(node.restore.agent and node.restore.instance)


def _drill_node(drill: _Drill, name: str) -> NodeDrill:
    record = drill.manifest.nodes[name]
    node = inventory_node(drill.inventory, name)
    result = NodeDrill(node=name, engine=engine_type(node, record),
                       expected=record.state.facts if record.state else None)
    drill.results[name] = result
    try:
        if record.state is None:
            raise BadInputError("the run recorded no engine state for this node: there is nothing to compare with")
        _step(drill, name, "restoring")
        with stoppable_by(drill.cancelled):  # an interrupt stops this node's copies part-way
            facts = _restore_start_verify(drill, node, record, result)
        result.facts = facts
        result.mismatches += compare_facts(record.state.facts, facts)
        result.rto_s = round(time.monotonic() - drill.started, 3)
    except SnapctlError as exc:  # the report names the node; a provider's message does too
        result.error, result.hint = exc.message.removeprefix(f"node {name}: "), exc.hint
    except Exception as exc:  # noqa: BLE001 - one node's surprise must not hide the others' results
        result.error = redact(f"{type(exc).__name__}: {exc}")
    result.verdict = "error" if result.error else ("mismatch" if result.mismatches else "passed")
    detail = result.error or "; ".join(result.mismatches) or None
    drill.reporter.node(name, {"passed": "passed", "mismatch": "mismatch", "error": "failed"}[result.verdict], detail)
    return result


def _restore_start_verify(drill: _Drill, node: Node, record: NodeRecord, result: NodeDrill) -> VerifyFacts:
    """Restore the node's volumes, bring its engine up on them, and return the restored engine's facts."""
    from snapctl.drill_engines import can_run_here, engine_block, no_engine_block

    inventory, settings = drill.inventory, node.restore
    if getattr(drill.provider, "restore_makes_cloud_volumes", False) and not (settings.agent and settings.instance):
        raise _needs_agent_and_instance(drill.provider)  # before restoring: a disk nothing can use costs no copy
    engine = None
    if not settings.agent:
        if not can_run_here(result.engine):
            raise BadInputError(f"a {result.engine} engine cannot be started on this machine",
                                hint="give the node a scratch agent: restore: {agent: URL, ...} (docs/restore.md)")
        engine = engine_block(inventory, node, record)  # before restoring: a node that cannot start costs no copy
        if engine is None:
            raise no_engine_block(node, record)
    made: list[tuple[SnapshotRef, str]] = []
    began = time.monotonic()
    try:
        result.volumes = restore_volumes(drill.provider, node, record, root=_restore_root(drill, node), zone=None,
                                         attach=_attaches(node), made=made, tags=drill.tags)
    finally:
        with drill.lock:
            drill.made.extend(made)
    result.restore_s = round(time.monotonic() - began, 3)
    _step(drill, node.name, "starting", f"restored in {result.restore_s:.1f}s")
    if settings.agent:
        result.runs_on = settings.agent
        if not restored_files(result.volumes) and not settings.instance:
            raise BadInputError("the restored cloud volumes are attached to no machine the scratch agent runs on",
                                hint="set restore.instance (and restore.device/devices) on the node")
        return asyncio.run(_through_agent(drill, node, result))
    if not restored_files(result.volumes):
        raise BadInputError("the restored volumes are cloud volumes: this machine cannot run an engine on them",
                            hint="give the node a scratch agent and instance: restore: {agent: URL, instance: ID}")
    assert engine is not None
    return _on_this_machine(drill, node, record, engine, result)


def _needs_agent_and_instance(provider: Provider) -> BadInputError:
    return BadInputError(f"a {provider.name} volume is drilled through a scratch agent on the machine it is attached "
                         "to: the node needs restore.agent and restore.instance",
                         hint="e.g. restore: {agent: http://10.0.9.11:7700, instance: ..., devices: {...}} "
                              "(docs/restore.md)")


def _on_this_machine(drill: _Drill, node: Node, record: NodeRecord, engine: dict, result: NodeDrill) -> VerifyFacts:
    from snapctl.drill_engines import scratch_engine

    inventory = drill.inventory
    result.runs_on = "this machine"
    settings = remap_paths(engine, inventory, node, result.volumes, drill=True)
    if settings is None:
        raise no_engine_path(inventory, node, result.volumes)
    assert record.state is not None
    result.mismatches += missing_files(record.state.files, volume_roots(node.volumes, inventory.resolve),
                                       result.volumes)
    began = time.monotonic()
    start_timeout = min(inventory.drill.start_timeout_s, _remaining(drill))
    with scratch_engine(settings, base_dir=inventory.base_dir, workdir=drill.scratch / ".engines" / node.name,
                        start_timeout_s=start_timeout, cancelled=drill.cancelled) as running:
        result.start_s = round(time.monotonic() - began, 3)
        _step(drill, node.name, "verifying", f"engine up in {result.start_s:.1f}s")
        began = time.monotonic()
        facts = running.verify()
        result.verify_s = round(time.monotonic() - began, 3)
    return facts


async def _through_agent(drill: _Drill, node: Node, result: NodeDrill) -> VerifyFacts:
    async with scratch_agent(drill.inventory, node) as agent:
        began = time.monotonic()
        await agent.restore_prepare(node.restore.agent_path)
        # The scratch machine's own supervisor starts the engine on the restored disks; wait for it.
        limit = time.monotonic() + min(drill.inventory.drill.start_timeout_s, _remaining(drill))
        while True:
            status = await agent.status()
            if status.engine.reachable:
                break
            if drill.cancelled.is_set():
                raise SnapctlError(f"the drill was {interrupted_by_signal()} while its engine was starting")
            if time.monotonic() >= limit:
                raise EngineError(f"the engine behind scratch agent {node.restore.agent} did not come up within "
                                  f"{drill.inventory.drill.start_timeout_s:g}s: {status.engine.error or 'unreachable'}",
                                  hint="check the scratch machine; raise drill.start_timeout_s if it is just slow")
            await asyncio.sleep(_AGENT_POLL_S)
        result.start_s = round(time.monotonic() - began, 3)
        _step(drill, node.name, "verifying", f"engine up in {result.start_s:.1f}s")
        began = time.monotonic()
        facts = await agent.verify()
        result.verify_s = round(time.monotonic() - began, 3)
        return facts


def _step(drill: _Drill, node: str, phase: str, detail: str | None = None) -> None:
    if drill.cancelled.is_set():
        raise SnapctlError(f"the drill was {interrupted_by_signal()} before {phase} this node")
    if time.monotonic() > drill.deadline:
        raise SnapctlError(f"the drill ran out of its {drill.inventory.drill.timeout_s:g}s before {phase} this node",
                           hint="raise drill.timeout_s")
    drill.phases[node] = phase
    drill.reporter.node(node, phase, detail)


def _remaining(drill: _Drill) -> float:
    return max(drill.deadline - time.monotonic(), 1.0)


def _record(catalog: Catalog, report: DrillReport) -> None:
    """The summary on the run's manifest while the unfinished record still keeps the run from prune
    (a prune between the two could delete it: the save would write it back), then the record."""
    assert report.record is not None and report.finished_at is not None
    try:
        summary = DrillSummary(drill_id=report.drill_id, ok=report.ok, started_at=report.started_at,
                               finished_at=report.finished_at, rto_s=report.rto_s, report=report.record,
                               failed_nodes=[n.node for n in report.nodes if n.verdict != "passed"])

        def summarised(manifest: Manifest) -> bool:  # as it is now: retention may be recording its outcome
            manifest.last_drill = summary
            record_interrupted_by(manifest, report.drill_id, report.interrupted_by)
            return manifest.status == "succeeded"

        if catalog.update(report.run_id, summarised) is None:
            # It was there as the drill began (it read the manifest): "no run R in the catalog" read
            # as a mistyped id, and exited 2 for a drill that had run.
            raise CatalogError(f"run {report.run_id} was deleted from the catalog while the drill ran: what the drill "
                               f"found is in its report and its record {report.record}, not on the run",
                               hint="a prune keeps a run while its drill's record is unfinished: look for a hand "
                                    "deletion, or a clock far off on the pruning host; `snapctl list` shows the runs")
    finally:
        _write_record(catalog, report)


def _finish_refused(catalog: Catalog | None, report: DrillReport | None, exc: SnapctlError) -> None:
    """A drill refused once on record (``report``) finishes its record, saying why."""
    if catalog is not None and report is not None:
        report.error, report.hint, report.finished_at = exc.message, exc.hint, datetime.now(UTC)
        with contextlib.suppress(SnapctlError):
            _write_record(catalog, report)


def _write_record(catalog: Catalog, report: DrillReport) -> None:
    # A snapctl from before `interrupted_by` refuses a record with a key it does not know (its
    # status would pass over every new drill): the key is written only when a signal stopped it.
    unknown_to_older = None if report.interrupted_by else {"interrupted_by"}
    catalog.store.write(str(report.record), report.model_dump_json(indent=2, exclude=unknown_to_older).encode())
