"""Restores: a run's snapshots out to a target, and the engines prepared to start from them.

Local providers restore into directories (``--to DIR`` gives ``DIR/<node>/<volume>``, else each
node's ``restore.path/<volume>``); cloud providers make new volumes in a zone (``--zone``, else
each node's ``restore.zone``), attached to the node's ``restore.instance`` with ``--attach``.
Then every engine is restore-prepared: in-process on restored files, or by the node's scratch
agent (``restore.agent``). Engines that read their files directly (SQLite) are verified in place
against the facts recorded at PREPARE; ``snapctl drill`` starts and verifies every engine.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from node_agent.models import VerifyFacts
from snapctl.catalog import Catalog, open_catalog
from snapctl.config import Inventory, Node
from snapctl.engine_paths import no_engine_path, remap_paths
from snapctl.errors import BadInputError, CatalogError, Interrupted, SnapctlError, interrupted_by_signal
from snapctl.events import NullReporter, Reporter
from snapctl.evidence import compare_facts, missing_files, volume_roots
from snapctl.manifest import IndexEntry, Manifest, NodeRecord
from snapctl.providers import Provider, RestoreTarget, SnapshotRef, node_volumes, open_provider
from snapctl.redact import redact
from snapctl.restore_leftovers import EACH_NODE, places_of
from snapctl.restored_links import LinkLeadsOff, remove_restored
from snapctl.timestamps import UtcTime
from snapctl.usable_run import check_provider, usable_run

# A volume's directory under the restore root: one plain name, as the inventory allows them.
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_NAMED = 5  # restored volumes a failure's hint names, of a cluster's hundreds

__all__ = ["NodeRestore", "RestoreRecord", "RestoreResult", "check_before_restoring", "compare_facts",
           "no_engine_path", "remap_paths", "restore_run"]


@dataclass
class NodeRestore:
    node: str
    volumes: dict[str, str] = field(default_factory=dict)  # volume name -> restored path or volume id
    prepared: str | None = None  # where restore-prepare ran: "in-process" or the scratch agent's address
    facts: VerifyFacts | None = None
    mismatches: list[str] = field(default_factory=list)
    note: str | None = None  # why the node was not verified, when it was not


@dataclass
class RestoreResult:
    run_id: str
    target: str
    nodes: list[NodeRestore]
    record: str | None = None  # catalog key of the restore's record
    warnings: list[str] = field(default_factory=list)  # newer runs `latest` passed over, and why

    @property
    def ok(self) -> bool:
        return all(not n.mismatches for n in self.nodes)


class RestoreRecord(BaseModel):
    """A restore on record in the catalog, ``<cluster>/restores/<run>-<restore>.json``, unfinished
    from its start: a prune (or a backup's retention) meanwhile keeps the run, as for a drill's
    report. Finished, it stays: what was restored where, by whom, and how it ended."""

    model_config = ConfigDict(extra="forbid")

    cluster: str
    run_id: str
    restore_id: str
    owner: str  # user@host:pid
    # Its boot, pid namespace and start: what proves it gone once killed outright (SIGKILL), for
    # gc to finish the record; None in the records of an older snapctl.
    owner_process: dict[str, Any] | None = None
    target: str
    # Where it puts each volume (a directory; none for a cloud restore), as the inventory had them
    # when it started: gc looks for what a killed one left there, though restore.path changed since.
    # None in the records of an older snapctl (gc then goes by the inventory as it is).
    places: list[str] | None = None
    started_at: UtcTime
    finished_at: UtcTime | None = None
    outcome: Literal["restored", "mismatch", "failed", "interrupted"] | None = None
    abandoned: bool = False  # killed outright; finished (outcome interrupted) by a later gc
    error: str | None = None
    volumes: dict[str, str] = Field(default_factory=dict)  # "<node>/<volume>" -> restored path or volume id

    @property
    def key(self) -> str:
        return f"{self.cluster}/restores/{self.run_id}-{self.restore_id}.json"


def restore_run(inventory: Inventory, run_ref: str, to: Path | None = None, *, zone: str | None = None,
                attach: bool = False, verify: bool = True, record_it: bool = True,
                reporter: Reporter | None = None) -> RestoreResult:
    """Restore every node's snapshots of a run, restore-prepare each engine, and verify in place
    the engines that read their files directly; on record in the catalog while it runs, unless
    not ``record_it`` (a catalog that cannot be written: a read-only copy, in a disaster)."""
    from snapctl.process_identity import identity, run_owner
    from snapctl.runner import interrupts_deferred

    catalog = open_catalog(inventory)
    skipped: list[str] = []
    running: list[IndexEntry] = []  # for `latest`: the runs it may have passed over, as listed once
    run_id = catalog.resolve(run_ref, skipped, running)
    to = to.absolute() if to is not None else None  # a flag's path is the caller's, not the inventory's
    where = target_text(to, zone)
    started_at = datetime.now(UTC)
    record = RestoreRecord(cluster=catalog.cluster, run_id=run_id, owner=run_owner(),
                           owner_process=identity(os.getpid()), target=where, places=places_of(where, inventory),
                           restore_id=f"{started_at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}", started_at=started_at)
    # On record before the run's status is read: a prune that marks the run after that read looks
    # at the records again before it deletes anything, and so finds this one.
    try:
        if record_it:
            catalog.store.write(record.key, record.model_dump_json(indent=2).encode())
    except CatalogError as exc:
        raise record_refused(exc, run_id) from exc
    made: list[tuple[SnapshotRef, str]] = []
    try:
        result = _restore(inventory, catalog, run_id, to, where, zone=zone, attach=attach, verify=verify, made=made,
                          reporter=reporter or NullReporter(), latest=run_ref.strip() == "latest", running=running)
        result.record = record.key if record_it else None
        result.warnings = skipped + result.warnings
        record.outcome = "restored" if result.ok else "mismatch"
        return result
    except BaseException as exc:
        record.outcome = "interrupted" if isinstance(exc, KeyboardInterrupt | Interrupted) else "failed"
        record.error = exc.message if isinstance(exc, SnapctlError) else (
            interrupted_by_signal() if isinstance(exc, KeyboardInterrupt)
            else redact(f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        record.volumes = {f"{ref.node}/{ref.volume}": restored for ref, restored in made}
        record.finished_at = datetime.now(UTC)
        with interrupts_deferred():  # a second Ctrl-C must not leave the record unfinished
            try:
                if record_it:
                    catalog.store.write(record.key, record.model_dump_json(indent=2).encode())
            except SnapctlError:
                pass  # left unfinished, it keeps the run from prune until gc finishes it, or RESTORE_GUARD_S


def _restore(inventory: Inventory, catalog: Catalog, run_id: str, to: Path | None, where: str, *, zone: str | None,
             attach: bool, verify: bool, made: list[tuple[SnapshotRef, str]], reporter: Reporter,
             latest: bool = False, running: list[IndexEntry] | None = None) -> RestoreResult:
    warnings: list[str] = []
    manifest, provider, nodes, roots = checked_run(inventory, catalog, run_id, to, zone=zone, attach=attach,
                                                   warnings=warnings, latest=latest, running=running)
    result = RestoreResult(manifest.run_id, where, [], warnings=warnings)
    reporter.step("restore", f"restoring run {manifest.run_id} ({len(manifest.nodes)} nodes) into {where}")
    try:
        for name, record in manifest.nodes.items():
            node = nodes[name]
            node_result = NodeRestore(name)
            reporter.node(name, "restoring", f"{len(record.snapshots)} volume(s)")
            node_result.volumes = restore_volumes(provider, node, record, root=roots[name], zone=zone, attach=attach,
                                                  made=made)
            reporter.node(name, "restore-preparing")
            try:
                _prepare_and_check(inventory, node, record, node_result, verify=verify, attached=attach)
            except LinkLeadsOff as exc:  # found only now (no restore_contents): the node's copy goes again
                remove_restored(provider, name, made, exc)
                raise
            reporter.node(name, "mismatch" if node_result.mismatches else "restored",
                          "; ".join(node_result.mismatches) or node_result.note)
            result.nodes.append(node_result)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the volumes already restored stay, and are named
        if not made:
            raise
        raise _naming_restored(Interrupted(), made) from None
    except SnapctlError as exc:
        _naming_restored(exc, made)
        raise
    return result


def target_text(to: Path | None, zone: str | None) -> str:
    """Where a restore goes, as its record, its result and its dry run's plan say it."""
    return str(to) if to is not None else (f"zone {zone}" if zone else EACH_NODE)


def record_refused(exc: CatalogError, run_id: str) -> CatalogError:
    """The refusal of a restore that cannot put itself on record in the catalog."""
    return CatalogError(f"cannot put the restore on record, which keeps a prune from deleting run {run_id} "
                        f"meanwhile: {exc.message}",
                        hint=(f"{exc.hint}; or " if exc.hint else "") + "pass --no-record if no prune can run "
                             "meanwhile (a read-only copy of the catalog, in a disaster)")


def checked_run(inventory: Inventory, catalog: Catalog, run_id: str, to: Path | None, *, zone: str | None,
                attach: bool, warnings: list[str], latest: bool = False, running: list[IndexEntry] | None = None
                ) -> tuple[Manifest, Provider, dict[str, Node], dict[str, Path | None]]:
    """What a restore of ``run_id`` (resolved: no second scan) checks before restoring anything, for
    it and its dry run alike: (the run, the provider, the run's nodes, each node's directory or None).
    ``running``: the runs the resolution found running (``usable_run``)."""
    manifest = usable_run(catalog, catalog.load(run_id), "it has nothing to restore", warnings, latest=latest,
                          running=running)
    nodes = {name: inventory_node(inventory, name) for name in manifest.nodes}
    provider = open_provider(inventory)
    check_provider(manifest, provider)
    if not getattr(provider, "restore_makes_cloud_volumes", False) and (attach or zone):
        flag = "--attach" if attach else "--zone"
        raise BadInputError(f"{flag} is for the cloud providers: the {provider.name} provider restores into "
                            "directories", hint="drop it; --to DIR (or restore.path on each node) says where")
    roots = {name: to / name if to is not None else
             (inventory.resolve(node.restore.path) if node.restore.path else None) for name, node in nodes.items()}
    warnings += check_before_restoring(inventory, provider, manifest, nodes, roots, zone=zone,
                                       attached=set(nodes) if attach else set())
    return manifest, provider, nodes, roots


def _naming_restored(exc: SnapctlError, made: list[tuple[SnapshotRef, str]]) -> SnapctlError:
    """``exc`` with a hint naming the volumes restored before it: a retry into the same place
    would find them in its way."""
    if made:
        done = ", ".join(f"{ref.node}/{ref.volume} at {restored}" for ref, restored in made[:_NAMED])
        done += f" and {len(made) - _NAMED} more" if len(made) > _NAMED else ""
        cleanup = ("remove them, and the .snapctl-restore.json beside each, before restoring into the same "
                   "place again" if restored_files({r: r for _, r in made}) else "delete them if you restore again")
        exc.hint = (f"{exc.hint}; " if exc.hint else "") + f"restored before this failure: {done}; {cleanup}"
    return exc


def check_before_restoring(inventory: Inventory, provider: Provider, manifest: Manifest, nodes: dict[str, Node],
                           roots: dict[str, Path | None], *, zone: str | None, attached: Collection[str],
                           drill: bool = False) -> list[str]:
    """What `snapctl restore` and `snapctl drill` both check before restoring anything: every node
    has snapshots, a place to go and a valid engine block (if any), every volume its target and
    snapshot (``check_targets``), every engine prepared here its data on the restored volumes, and
    every scratch agent the restore will call (on restored files or attached volumes, as
    ``_prepare_and_check``) reachable and willing to restore-prepare (``check_scratch_agents``).
    ``roots``: each node's directory for its volumes (None: none given); ``attached``: the nodes
    whose new volumes are attached to their ``restore.instance``; ``drill``: for a drill.
    Returns warnings: the scratch agents too old to be asked."""
    # An engine block is read when its node's turn comes: a mistake in one must not wait for the
    # nodes before it to be restored. So are the volumes, whose paths say where the engine's data is:
    # a key mistyped would leave a node neither prepared nor verified.
    inventory.check_engine_blocks(nodes)
    node_volumes(inventory, provider, nodes)
    # gcp (the source disk's zone) and azure (the provider's location, no zone) have a default.
    place_optional = getattr(provider, "restore_place_optional", False)
    for name, node in nodes.items():
        if not manifest.nodes[name].snapshots:  # no real run succeeds so: a damaged or edited manifest
            raise CatalogError(f"node {name}: run {manifest.run_id} recorded no snapshot of this node: nothing of it "
                               "can be restored", hint="restore another run (`snapctl list`); `snapctl verify RUN` "
                                                       "checks a run without restoring")
        if not (roots[name] is not None or zone or node.restore.zone or place_optional):
            raise BadInputError(f"node {name}: nowhere to restore to",
                                hint="pass --to DIR (local provider) or --zone ZONE (cloud), "
                                     "or set restore.path / restore.zone on the node")
    live = {f"node {n} volume {v}": root for n, node in nodes.items()
            for v, root in volume_roots(node.volumes, inventory.resolve).items()}
    check_targets(provider, manifest, nodes, roots, zone=zone, attached=attached, live=live)
    files = not getattr(provider, "restore_makes_cloud_volumes", False)
    if files:
        _check_engine_paths(inventory, provider, manifest, nodes, roots, drill=drill)
    from snapctl.scratch_agent_paths import check_scratch_agents

    # Last, as it asks the scratch agents; only those the restore will call (cloud volumes attached nowhere: none).
    return check_scratch_agents(inventory, {name: node for name, node in nodes.items() if files or name in attached})


def _check_engine_paths(inventory: Inventory, provider: Provider, manifest: Manifest, nodes: dict[str, Node],
                        roots: dict[str, Path | None], *, drill: bool) -> None:
    """``remap_paths``'s refusal of an engine path left on this host's live files, before any copy;
    and of one a link in the backup's data leads off the volumes, where the provider shows what
    it will copy (``restore_contents``; else only once the node is restored)."""
    from snapctl.drill_engines import engine_block

    contents = getattr(provider, "restore_contents", None)
    for name, node in nodes.items():
        root = roots[name]
        if node.restore.agent or root is None:  # a scratch agent prepares with its own config
            continue
        engine = engine_block(inventory, node, manifest.nodes[name])
        if engine is not None:
            refs = manifest.nodes[name].snapshots
            remap_paths(engine, inventory, node, {ref.volume: str(root / ref.volume) for ref in refs}, drill=drill,
                        contents={ref.volume: contents(ref) for ref in refs} if contents is not None else None)


def check_targets(provider: Provider, manifest: Manifest, nodes: dict[str, Node], roots: dict[str, Path | None], *,
                  zone: str | None, attached: Collection[str], live: dict[str, Path]) -> None:
    """Every volume's target and snapshot, before any is restored: a target found unusable after
    other nodes were copied would leave a partial restore, which then blocks the retry (a local
    target must be empty). Providers without ``check_restore`` find out as they restore. ``live``:
    the directories of the nodes' volumes (who -> path), which no target may lie inside."""
    check = getattr(provider, "check_restore", None)
    check_space = getattr(provider, "check_restore_space", None)
    planned: list[tuple[SnapshotRef, RestoreTarget]] = []
    claimed: dict[Path, tuple[str, Path]] = {}  # the target as resolved (symlinks too) -> (who, as given)
    devices: dict[tuple[str, str], str] = {}  # (instance, device) -> who
    for name, record in manifest.nodes.items():
        for ref in record.snapshots:
            target = restore_target(nodes[name], ref.volume, root=roots[name], zone=zone, attach=name in attached)
            who = f"node {name} volume {ref.volume}"
            if target.path is not None:
                given = Path(os.path.abspath(target.path))
                path = Path(os.path.realpath(given))
                # Its own directory, emptied, is a restore in place; inside it, every later snapshot
                # of that volume would carry the copy (and a backup of it the next one). Another
                # volume's directory, even emptied, would take this one's data for its own.
                inside = next((w for w, root in live.items()
                               if path.is_relative_to(root) and not (path == root and w == who)), None)
                if inside is not None and path == live[inside]:
                    raise BadInputError(f"{who} would be restored to {given}, the live data directory of {inside}: "
                                        "that volume would start from another's data",
                                        hint="restore each volume outside the nodes' volumes (--to DIR, "
                                             "restore.path), or into its own directory; check the node's "
                                             "restore.path")
                if inside is not None:
                    raise BadInputError(f"{who} would be restored to {given}, inside the live data of {inside} "
                                        f"({live[inside]}): every later snapshot of it would carry the copy",
                                        hint="restore outside the nodes' volumes (--to DIR, restore.path), or into "
                                             "the volume's own directory once its data is moved aside")
                for other, (other_who, other_given) in claimed.items():
                    # One inside the other is as bad as the same place: a volume would hold another's.
                    if path == other or path.is_relative_to(other) or other.is_relative_to(path):
                        where = f"{other_given}" if path == other else f"{other_given} and {given}"
                        raise BadInputError(f"{other_who} and {who} would be restored to "
                                            f"{'the same place' if path == other else 'one inside the other'}: "
                                            f"{where}", hint="give each node its own restore.path, none inside another")
                claimed[path] = (who, given)
            if check is not None:  # first: a provider that takes no options.devices refuses it as unknown
                check(ref, target)
            if target.instance and target.device:
                # The cloud refuses the second only after its disk (and the first) were made.
                other_who = devices.setdefault((target.instance, str(target.device)), who)
                if other_who != who:
                    raise BadInputError(f"{other_who} and {who} would both be attached to {target.instance} at "
                                        f"{target.device}", hint="give each volume its own device: restore.devices: "
                                                                 "{volume: device, ...} (restore.device is for a "
                                                                 "node with one volume)")
            planned.append((ref, target))
    if check_space is not None:  # volumes that share a disk need room there together
        check_space(planned)


def inventory_node(inventory: Inventory, name: str) -> Node:
    for node in inventory.nodes:
        if node.name == name:
            return node
    raise BadInputError(f"node {name} of the run is not in the inventory {inventory.source}",
                        hint="restore with the inventory the run was made with")


def restore_target(node: Node, volume: str, *, root: Path | None, zone: str | None, attach: bool,
                   tags: dict[str, str] | None = None) -> RestoreTarget:
    """Where one of the node's volumes goes: ``root/<volume>`` (local), or a new volume in the zone,
    attached to the node's restore instance when ``attach``; the made volume carries ``tags``."""
    settings = node.restore
    instance = settings.instance if attach else None
    if attach and not instance:
        raise BadInputError(f"node {node.name}: --attach needs restore.instance on the node in the inventory",
                            hint="e.g. restore: {zone: us-east-1a, instance: i-0123..., devices: {data: /dev/sdf}}")
    if root is not None and not _VOLUME_NAME.fullmatch(volume):
        # The name comes from the manifest: whoever can write the catalog must not steer a restore
        # outside --to DIR ("../../home/me/.ssh").
        raise CatalogError(f"node {node.name}: the run's manifest names volume {volume!r}, which is not a volume "
                           f"name; refusing to restore it outside {root}",
                           hint="the catalog may have been written by someone else: see who can write it "
                                "(docs/security.md, 'Who can delete snapshots?')")
    return RestoreTarget(path=root / volume if root is not None else None, zone=zone or settings.zone,
                         instance=instance, device=_device(node, volume) if attach else None,
                         extra=dict(settings.options), tags=dict(tags or {}))


def _device(node: Node, volume: str) -> str | None:
    """Where ``volume`` is attached: ``restore.devices``, ``restore.device``, or ``restore.options.devices``,
    which aws takes too (as its plugin reads them), so that the plan and the clash check see it."""
    option = node.restore.options.get("devices")
    return (node.restore.devices.get(volume) or node.restore.device
            or (option.get(volume) if isinstance(option, dict) else None))


def restore_volumes(provider: Provider, node: Node, record: NodeRecord, *, root: Path | None, zone: str | None,
                    attach: bool, made: list[tuple[SnapshotRef, str]] | None = None,
                    tags: dict[str, str] | None = None) -> dict[str, str]:
    """Restore each of the node's snapshots; ``made`` collects (ref, restored) as each one lands,
    so a caller can tear down what exists even when a later volume fails."""
    restored = {}
    for ref in record.snapshots:
        target = restore_target(node, ref.volume, root=root, zone=zone, attach=attach, tags=tags)
        restored[ref.volume] = provider.restore(ref, target)
        if made is not None:
            made.append((ref, restored[ref.volume]))
    return restored


def restored_files(restored: dict[str, str]) -> bool:
    """True when the provider restored into directories on this machine (not cloud volume ids)."""
    return bool(restored) and all(Path(v).is_absolute() and Path(v).is_dir() for v in restored.values())


def prepare_plan(inventory: Inventory, node: Node, record: NodeRecord, volumes: dict[str, str], *, files: bool,
                 attached: bool) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """Who restore-prepares the node's engine, its volumes at ``volumes`` (directories if ``files``):
    (the scratch agent's address or "in-process", the settings moved onto the volumes for
    in-process, a note), or (None, None, why nobody); what a restore does and its dry run says."""
    from snapctl.drill_engines import engine_block, no_engine_block

    if node.restore.agent:
        if not files and not attached:
            return None, None, "the restored volumes are attached nowhere: restore-prepare them on their machine"
        return node.restore.agent, None, "restore-prepared by the scratch agent; `snapctl drill` verifies it"
    if not files:
        return None, None, (_attached_note(node, volumes) if attached else
                            "restored as cloud volumes: attach them, or run `snapctl drill` with scratch agents")
    engine_settings = engine_block(inventory, node, record)
    if engine_settings is None:
        missing = no_engine_block(node, record)
        return None, None, (f"{missing.message.removeprefix(f'node {node.name}: ')}: restored, neither "
                            f"restore-prepared nor verified ({missing.hint})")
    settings = remap_paths(engine_settings, inventory, node, volumes)
    if settings is None:
        unmapped = no_engine_path(inventory, node, volumes)
        return None, None, f"{unmapped.message}: neither restore-prepared nor verified ({unmapped.hint})"
    return "in-process", settings, None


def _prepare_and_check(inventory: Inventory, node: Node, record: NodeRecord, result: NodeRestore, *,
                       verify: bool, attached: bool) -> None:
    from node_agent.engines.base import create_engine
    from snapctl.drill_engines import FILE_ENGINES

    prepared, settings, note = prepare_plan(inventory, node, record, result.volumes,
                                            files=restored_files(result.volumes), attached=attached)
    if settings is None:  # not in-process
        if prepared is not None:  # the scratch agent's
            from snapctl.runner import run as run_coroutine  # SIGTERM cancels the call, as Ctrl-C does

            run_coroutine(_agent_restore_prepare(inventory, node))
        result.prepared, result.note = prepared, note
        return
    engine = create_engine(settings, base_dir=inventory.base_dir)
    try:
        engine.restore_prepare(None)
        result.prepared = "in-process"
        expected = record.state
        if expected is not None:
            result.mismatches = missing_files(expected.files, volume_roots(node.volumes, inventory.resolve),
                                              result.volumes)
        if not verify or expected is None:
            return
        if settings.get("type") not in FILE_ENGINES:
            result.note = needs_its_server(str(settings.get("type")))
            return
        result.facts = engine.verify()
        result.mismatches += compare_facts(expected.facts, result.facts)
    finally:
        engine.close()


def needs_its_server(engine: str) -> str:
    """The note on an engine restored in-process that only its running server can verify."""
    return f"{engine} needs its server to verify: `snapctl drill` starts it"


def _attached_note(node: Node, volumes: dict[str, str]) -> str:
    where = ", ".join(f"{volume} at {device}" if (device := _device(node, volume)) else volume for volume in volumes)
    return (f"attached to {node.restore.instance} ({where}): restore-prepare and start the engine there, "
            "or give the node a scratch agent (restore.agent) to do it")


async def _agent_restore_prepare(inventory: Inventory, node: Node) -> None:
    async with scratch_agent(inventory, node) as agent:
        await agent.restore_prepare(node.restore.agent_path)


@asynccontextmanager
async def scratch_agent(inventory: Inventory, node: Node) -> AsyncIterator[Any]:
    """A client for the node's scratch agent (``restore.agent``), with the inventory's token and TLS."""
    from snapctl.agent_client import open_agents

    if not node.restore.agent:
        raise BadInputError(f"node {node.name} has no restore.agent")
    # The same inventory with this one node, its agent swapped for the scratch one (model_copy
    # keeps where the inventory was read from, so token and TLS files resolve as they do for backups).
    scratch = inventory.model_copy(update={"nodes": [node.model_copy(update={"agent": node.restore.agent})]})
    async with open_agents(scratch) as agents:
        yield agents[node.name]
