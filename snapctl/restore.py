"""Restores: a run's snapshots out to a target, and checks of restored data against the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node_agent.models import VerifyFacts
from snapctl.catalog import open_catalog
from snapctl.config import Inventory, Node
from snapctl.errors import BadInputError
from snapctl.manifest import Manifest
from snapctl.providers import RestoreTarget, create_provider


@dataclass
class NodeRestore:
    node: str
    volumes: dict[str, str] = field(default_factory=dict)  # volume name -> restored path or volume id
    facts: VerifyFacts | None = None
    mismatches: list[str] = field(default_factory=list)


@dataclass
class RestoreResult:
    run_id: str
    target: str
    nodes: list[NodeRestore]

    @property
    def ok(self) -> bool:
        return all(not n.mismatches for n in self.nodes)


def restore_run(inventory: Inventory, run_ref: str, to: Path, *, verify: bool = True) -> RestoreResult:
    """Restore every node's snapshots of a run into ``to/<node>/<volume>`` and, for engines that
    can run in-process on the restored files, check them against the facts recorded at PREPARE."""
    catalog = open_catalog(inventory)
    manifest = catalog.load(catalog.resolve(run_ref))
    if manifest.status != "succeeded":
        raise BadInputError(f"run {manifest.run_id} {manifest.status}: it has nothing to restore",
                            hint="pick a succeeded run from `snapctl list`")
    provider = create_provider(inventory.provider, cluster=inventory.cluster, base_dir=inventory.base_dir)
    result = RestoreResult(manifest.run_id, str(to), [])
    for name, record in manifest.nodes.items():
        node_result = NodeRestore(name)
        for ref in record.snapshots:
            target = RestoreTarget(path=to / name / ref.volume)
            node_result.volumes[ref.volume] = provider.restore(ref, target)
        if verify:
            _verify_node(inventory, manifest, name, node_result)
        result.nodes.append(node_result)
    return result


def _verify_node(inventory: Inventory, manifest: Manifest, name: str, node_result: NodeRestore) -> None:
    from node_agent.engines.base import create_engine

    record = manifest.nodes[name]
    node = _inventory_node(inventory, name)
    if node is None or not node.engine or record.state is None:
        return
    settings = remap_paths(node.engine, inventory, node, node_result.volumes)
    if settings is None:
        return  # the engine's data does not live on a local volume: a drill on scratch agents verifies it
    engine = create_engine(settings, base_dir=inventory.base_dir)
    try:
        engine.restore_prepare(None)
        node_result.facts = engine.verify()
    finally:
        engine.close()
    node_result.mismatches = compare_facts(record.state.facts, node_result.facts)


def remap_paths(engine: dict[str, Any], inventory: Inventory, node: Node, restored: dict[str, str]) -> dict | None:
    """The node's engine settings with every path that lies on one of its volumes moved to where
    that volume was restored; None when no setting lies on a restored volume."""
    volume_paths = {}
    for volume in node.volumes:
        name, path = (volume.get("name"), volume.get("path")) if isinstance(volume, dict) else (None, volume)
        if path:
            path = inventory.resolve(path).resolve()
            volume_paths[name or path.name] = path
    moved = dict(engine)
    changed = False
    for key, value in engine.items():
        if not isinstance(value, str) or key == "type":
            continue
        candidate = inventory.resolve(value).resolve()
        for volume, root in volume_paths.items():
            if volume in restored and candidate.is_relative_to(root):
                moved[key] = str(Path(restored[volume]) / candidate.relative_to(root))
                changed = True
    return moved if changed else None


def compare_facts(expected: VerifyFacts, actual: VerifyFacts) -> list[str]:
    """What differs, one line each; empty when the restore reproduces what PREPARE recorded."""
    problems = []
    for table, want in expected.tables.items():
        got = actual.tables.get(table)
        if got is None:
            problems.append(f"table {table} missing (expected {want.rows} rows)")
        elif expected.exact and got.rows != want.rows:
            problems.append(f"table {table}: {got.rows} rows, expected {want.rows}")
        elif not expected.exact and got.rows < want.rows:
            problems.append(f"table {table}: {got.rows} rows, expected at least {want.rows}")
        elif expected.exact and want.checksum and got.checksum != want.checksum:
            problems.append(f"table {table}: checksum {got.checksum[:12]}, expected {want.checksum[:12]}")
    return problems


def _inventory_node(inventory: Inventory, name: str) -> Node | None:
    return next((n for n in inventory.nodes if n.name == name), None)
