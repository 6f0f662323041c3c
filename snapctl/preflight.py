"""Checks made before anything is held: the preflight of every backup (DESIGN.md step 2), and a
dry run, which is that preflight plus what a real run gets ready before its first hold."""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from snapctl.agent_client import AgentClient
from snapctl.catalog import Catalog
from snapctl.catalog.catalog import CatalogLook
from snapctl.catalog.lock import dead_holder_hint, proven_dead_here
from snapctl.config import Inventory, is_loopback
from snapctl.errors import PreflightRefused, SnapctlError
from snapctl.events import Reporter
from snapctl.health import Finding, NodeProbe, Verdict, assess
from snapctl.left_holds import HELD_ELSEWHERE, name_left_holds
from snapctl.manifest import IndexEntry
from snapctl.mounts import inside_by_mounts
from snapctl.pacing import rate_limit_said, rate_limit_spread_s
from snapctl.probe import probe_all
from snapctl.provider_loop import LoopCalls
from snapctl.provider_threads import ProviderThreads
from snapctl.provider_worker import CALL_RUNNER_READY_S, held_by_process_locks, uses_async_create
from snapctl.providers import Capabilities, NodeVolumes, Provider


@dataclass
class BackupPlan:
    """What a dry run reports: what would be held and snapshotted, and the verdict on it."""

    cluster: str
    provider: str
    nodes: dict[str, list[str]]  # node -> volume names
    verdict: Verdict


async def preflight(inventory: Inventory, agents: dict[str, AgentClient], reporter: Reporter,
                    volumes: dict[str, NodeVolumes], catalog: Catalog | None = None,
                    runs: list[IndexEntry] | None = None, *, capabilities: Capabilities | None = None,
                    consistency: str = "cluster") -> Verdict:
    """Ask every agent and grade the answers as a backup would: a node already held is critical,
    and so is one whose engine keeps its data outside the directories that would be snapshotted.
    ``catalog``: where to look up the run an engine left held belongs to; ``runs``: its runs, when
    the caller has listed them already (a dry run), not listed again. ``capabilities``: the
    provider's, whose rate limit a cluster-mode run (``consistency``) must fit in its freeze."""
    reporter.step("preflight", f"checking {len(agents)} agents")
    probes = await probe_all(agents, inventory.policy.agent_timeout_s)
    verdict = assess(inventory, probes, for_backup=True)
    verdict.engine_types = {p.node: p.status.engine_type for p in probes if p.status and p.status.engine_type}
    if catalog is not None and any(f.message.startswith(HELD_ELSEWHERE) for f in verdict.findings):
        entries = runs
        if entries is None:
            try:  # read only then: at 1000 nodes the index is no small read
                entries, _ = await asyncio.to_thread(catalog.list, confirm_newest=False)
            except SnapctlError:
                entries = []  # unnamed then: the refusal stands all the same
        verdict.findings = name_left_holds(verdict.findings, probes, entries)
    verdict.findings += (uncovered_data(inventory, probes, volumes) + misplaced_data(inventory, probes)
                         + copies_in_process(inventory, volumes))
    if capabilities is not None and consistency == "cluster":
        verdict.findings += beyond_the_rate_limit(inventory, volumes, capabilities)
    for finding in verdict.findings:
        reporter.finding(finding)
    return verdict


FORCE_HINT = "fix the cluster, or pass --force to back up anyway (recorded in the manifest)"


def preflight_refusal(blocking: list[Finding], *, forced: bool = False) -> PreflightRefused:
    """The run's refusal on its critical findings. Its hint offers --force only when --force would
    override every one of them; else it gives those findings' own fixes, which are what helps."""
    message = "preflight refused the backup: " + "; ".join(f.said for f in blocking)
    stuck = [f for f in blocking if not f.forceable]
    if not stuck:
        return PreflightRefused(message, hint=FORCE_HINT)
    fixes = list(dict.fromkeys(f"{f.subject}: {f.hint}" if f.hint else f"{f.subject}: fix what is said above"
                               for f in stuck))
    overrides = "; --force did not override these" if forced else "; --force would not override these"
    return PreflightRefused(message, hint="; ".join(fixes) + overrides)


def catalog_refusals(look: CatalogLook, now: datetime) -> list[Finding]:
    """What a backup's first step would refuse on in the catalog ``look`` found: each obstacle
    (it could not lock, read or write), and a lock another run holds at ``now`` (exit 4)."""
    # Not forceable: --force overrides the preflight, not the run's first step.
    found = [Finding("critical", "catalog", f"a backup now would fail: {o.message}", forceable=False, hint=o.hint)
             for o in look.obstacles]
    # A holder proven dead on this host refuses nothing: the backup takes its lock over.
    if (running := look.holder(now)) is not None and not (look.lock and proven_dead_here(look.lock)):
        found.append(Finding("critical", "backups", f"a backup now would be refused (exit 4): {running}",
                             forceable=False, hint=holder_hint(look, now)))
    return found


def holder_hint(look: CatalogLook, now: datetime) -> str | None:
    """The hint of the refusal a backup would meet on the lock, where it knows one: the holder was
    killed on this host (else it is "wait for that run", which says nothing the finding does not)."""
    lock = look.lock
    return dead_holder_hint(lock, look.lock_where) if lock is not None and lock.held_at(now) else None


def copies_in_process(inventory: Inventory, volumes: dict[str, NodeVolumes]) -> list[Finding]:
    """``provider_process: never`` with an embedded node whose hold a copy in snapctl's own
    process would drop (``held_by_process_locks``): refused, as the node would be written to while
    the run counts it held. ``auto`` makes those calls in the provider worker process instead."""
    if inventory.policy.provider_process != "never":
        return []
    return [Finding("critical", node, "its embedded engine holds by a lock of snapctl's own process, which "
                    "policy.provider_process: never would drop by copying its files in that process",
                    forceable=False, hint="set policy.provider_process: auto or always (copies in a child process)")
            for node in held_by_process_locks(inventory, volumes)]


def beyond_the_rate_limit(inventory: Inventory, volumes: dict[str, NodeVolumes],
                          capabilities: Capabilities) -> list[Finding]:
    """A cluster-mode run holds every node until its own create calls returned, and the provider's
    rate limit lets the last of them out only after ``rate_limit_spread_s``: past the freeze budget
    (``max_freeze_s``, or ``snapshot_timeout_s`` if smaller) such a run always fails, after
    holding every node. Refused here, before anything is held."""
    policy = inventory.policy
    creates = sum(len(nv.volumes) for nv in volumes.values())
    spread_s = rate_limit_spread_s(capabilities, creates)
    budget_s = min(policy.max_freeze_s, policy.snapshot_timeout_s)
    if spread_s < budget_s:
        return []
    setting = "policy.max_freeze_s" + (" and snapshot_timeout_s" if policy.snapshot_timeout_s <= spread_s else "")
    needed = math.ceil(spread_s) + 1
    return [Finding("critical", "provider",
                    "a cluster-mode run would fail after holding every node: "
                    f"{rate_limit_said(capabilities, creates)}, past the {budget_s:g}s a node may stay held "
                    f"(policy.max_freeze_s {policy.max_freeze_s:g}s, "
                    f"snapshot_timeout_s {policy.snapshot_timeout_s:g}s)", forceable=False,
                    hint=f"back up with --consistency per-node (each node held just for its own calls), or raise "
                         f"{setting} to at least {needed}s (the rate limit's schedule alone: the prepares and the "
                         "calls take longer)")]


def uncovered_data(inventory: Inventory, probes: list[NodeProbe], volumes: dict[str, NodeVolumes]) -> list[Finding]:
    """A critical finding for each node whose engine reports data in none of its volumes, where
    both are directories of this host (volumes of the local provider, an agent embedded or on
    loopback): its snapshot would not contain the database. Elsewhere the paths are another
    host's, or disks, and nothing is said; so is a data path this host does not have (an agent in
    a container of its own). Directories are compared by device and inode, so a symlink or a bind
    mount to a volume still holds it, and by their place in their filesystem (``snapctl.mounts``),
    so does a directory bind-mounted from inside a volume."""
    agent_of = {node.name: node.agent for node in inventory.nodes}
    findings = []
    for probe in probes:
        directories = volumes[probe.node].directories if probe.node in volumes else None
        if probe.status is None or directories is None or not _on_this_host(agent_of.get(probe.node, "")):
            continue
        if probe.status.node != probe.node:  # another node's agent: its data is that node's, said there
            continue
        roots = {_identity(d) for d in directories} - {None}
        own = {data: _identity(Path(data)) for data in probe.status.data_paths}
        if not any(own.values()):
            continue  # not paths of this host (an agent in a container of its own, say): no comparison
        for data, identity in own.items():
            path = Path(data)
            if identity is None:
                # Not made yet (etcd's backup_dir before its first prepare) by an engine whose other
                # paths are here: it will be made where its nearest existing directory is.
                path = next((p for p in path.parents if _identity(p) is not None), path)
            if any(_identity(d) in roots for d in (path, *path.parents)):
                continue
            # Mounted from inside a volume (a bind mount): its parents here are not the volume's.
            if not inside_by_mounts(path, list(directories)):
                listed = ", ".join(map(str, directories))
                findings.append(Finding(
                    "critical", probe.node,
                    f"its engine keeps its data in {data}, in none of its volumes ({listed}): the snapshot would "
                    "not contain it", forceable=False,
                    hint="list that directory (or one above it) in the node's volumes"))
    return findings


def misplaced_data(inventory: Inventory, probes: list[NodeProbe]) -> list[Finding]:
    """A degraded finding for each node whose inventory engine block names other data than its agent
    serves: restores and drills start the engine from the inventory's block, so they look for the
    database where it is not, though the snapshot holds it. Compared only where it is sound, as
    ``uncovered_data`` does: an agent of this host (embedded agents are built from the block itself,
    so only loopback), an engine of the same type installed here, and every path the agent names
    existing here (else they are another filesystem's: a container's). By device and inode, so a
    symlink or a relative path to the same place is the same; a file the agent reports serving
    (``details.path``, sqlite's database) is compared too, as its directory alone would not show it."""
    from node_agent.engines.base import available_engines, create_engine

    findings = []
    nodes = {node.name: node for node in inventory.nodes}
    for probe in probes:
        node = nodes.get(probe.node)
        if (node is None or probe.status is None or probe.status.node != probe.node or not node.engine
                or node.agent == "embedded" or not _on_this_host(node.agent)):
            continue
        kind = node.engine.get("type")
        if kind != probe.status.engine_type or kind not in available_engines():
            continue  # another type is engine_mismatch's finding; one not installed here cannot be read
        served = [Path(p) for p in probe.status.data_paths]
        served_file = probe.status.engine.details.get("path")
        if isinstance(served_file, str):
            served.append(Path(served_file))
        if not served or any(_identity(p) is None for p in served):
            continue
        try:
            engine = create_engine(node.engine, base_dir=inventory.base_dir)
        except SnapctlError:
            continue  # a bad block is check_engine_blocks' to refuse
        try:
            named = list(engine.data_paths())
            db_path = getattr(engine, "db_path", None)  # an engine of one file names it
        finally:
            engine.close()
        if isinstance(served_file, str) and isinstance(db_path, Path):
            named.append(db_path)
        # What the block names must be among what the agent serves; a path it leaves out (etcd's
        # optional data_dir) is none a restore or drill uses from it.
        if {_identity(p) for p in named} - {_identity(p) for p in served}:
            findings.append(Finding(
                "degraded", probe.node,
                f"its inventory engine block names {', '.join(map(str, named))}, but its agent serves "
                f"{', '.join(map(str, served))}: a restore or drill would look for the database where it is not",
                hint=f"set {probe.node}'s engine: block in the inventory to what its agent's config says"))
    return findings


def _identity(directory: Path) -> tuple[int, int] | None:
    """The directory itself, however it is reached: through a symlink or a bind mount, the same
    device and inode."""
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _on_this_host(agent: str) -> bool:
    return agent == "embedded" or is_loopback(urlsplit(agent).hostname or "")


async def dry_run(inventory: Inventory, provider: Provider, volumes: dict[str, NodeVolumes],
                  agents: dict[str, AgentClient], reporter: Reporter, catalog: Catalog,
                  look: CatalogLook, consistency: str = "cluster") -> BackupPlan:
    """The preflight, the catalog as the run's first step needs it (``look``, as the caller took
    it with ``Catalog.look``), and the provider warmed up (its SDK, its credentials) as a real
    run does before its first hold: a dry run in CI should fail where the run from cron would. A
    catalog the run could not lock, read or write, a lock another run holds, and a provider that
    cannot get ready are critical findings. Takes no lock, holds nothing, writes nothing."""
    # The client the run will use: its async one where the run would use it, else the blocking one.
    async_client = uses_async_create(inventory.policy, provider, min(inventory.policy.concurrency, len(inventory.nodes)))
    checker = LoopCalls(provider, 1) if async_client else ProviderThreads(1, warm_up=provider.warm_up)
    checker.start()  # in a thread of its own: loading an SDK overlaps the preflight's fan-out
    try:
        verdict = await preflight(inventory, agents, reporter, volumes, catalog, look.entries,
                                  capabilities=provider.capabilities, consistency=consistency)
        reporter.step("catalog", f"checking that {catalog.describe()} can be locked, read and written")
        for finding in catalog_refusals(look, datetime.now(UTC)):
            verdict.findings.append(finding)
            reporter.finding(finding)
        reporter.step("provider", f"checking that {provider.name} is ready (its SDK, its credentials)")
        try:
            await checker.ready(CALL_RUNNER_READY_S)
        except SnapctlError as exc:
            # With its hint: the fix is what a dry run is for.
            finding = Finding("critical", "provider", exc.message, forceable=False, hint=exc.hint)
            verdict.findings.append(finding)
            reporter.finding(finding)
    finally:
        await checker.aclose()
    return BackupPlan(inventory.cluster, provider.name,
                      {node: [_volume_name(v) for v in nv.volumes] for node, nv in volumes.items()}, verdict)


def _volume_name(volume) -> str:
    return getattr(volume, "name", None) or str(volume)
