"""A real catalog directory and a real local snapshot store, filled with runs at chosen times."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from snapctl.catalog import Catalog, LocalBlobStore
from snapctl.config import Inventory, parse_inventory
from snapctl.manifest import Manifest, NodeRecord
from snapctl.providers import NodeVolumes, SnapshotRef, create_provider, snapshot_tags

CLUSTER = "prod"
NODES = ("n1", "n2")


@dataclass
class Scene:
    root: Path
    catalog: Catalog
    provider: object
    volumes: dict[str, NodeVolumes]

    def snapshot(self, run_id: str, node: str, *, cluster: str | None = CLUSTER) -> list[SnapshotRef]:
        tags = snapshot_tags(CLUSTER, run_id, node) if cluster == CLUSTER else (
            {} if cluster is None else {"snapctl-cluster": cluster, "snapctl-run": run_id})
        return self.provider.snapshot(self.volumes[node], tags)

    def add_run(self, run_id: str, started_at: datetime, status: str = "succeeded", *,
                recorded: bool = True, waited: bool = True) -> Manifest:
        """A run with one snapshot per node; ``recorded=False``: a run killed before its manifest
        named its snapshots (they exist, tagged with its run id, but the manifest lacks them);
        ``waited=False``: a `backup --no-wait` run (its snapshots pending, its manifest says so)."""
        nodes = {}
        for node in NODES:
            refs = self.snapshot(run_id, node)
            if waited:
                refs = self.provider.wait(refs, deadline=float("inf"))
            nodes[node] = NodeRecord(name=node, engine="sqlite", snapshots=refs if recorded else [])
        manifest = Manifest(cluster=CLUSTER, run_id=run_id, status=status, provider="local", snapctl_version="0.1.0",
                            owner="ops@host:1", started_at=started_at, nodes=nodes,
                            snapshots_completed=waited and status == "succeeded")
        self.catalog.save(manifest)
        return manifest

    def snapshot_ids(self) -> set[str]:
        return {r.snapshot_id for r in self.provider.find({})}

    def run_ids(self) -> set[str]:
        return {e.run_id for e in self.catalog.list()[0]}


def make_scene(root: Path) -> Scene:
    volumes = {}
    provider = create_provider({"type": "local", "store": str(root / "snapshots")}, cluster=CLUSTER, base_dir=root)
    for node in NODES:
        data = root / "volumes" / node
        data.mkdir(parents=True, exist_ok=True)
        (data / "db").write_text(f"the data of {node}\n")
        volumes[node] = provider.validate_volumes(node, [{"name": "data", "path": str(data)}], base_dir=root)
    return Scene(root, Catalog(LocalBlobStore(root / "catalog"), CLUSTER), provider, volumes)


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    return make_scene(tmp_path)


T0 = datetime(2024, 3, 1, tzinfo=UTC)


def inventory(scene: Scene, retention: dict | None = None, *, store: str = "snapshots") -> Inventory:
    text = yaml.safe_dump({
        "cluster": CLUSTER,
        "provider": {"type": "local", "store": store},
        "catalog": {"path": "catalog"},
        "policy": {"lock_ttl_s": "30s"},
        "retention": retention or {},
        "nodes": [{"name": n, "agent": "http://127.0.0.1:1"} for n in ("n1", "n2")],
    })
    return parse_inventory(text, source="test.yaml", base_dir=scene.root)


def snapctl_cli(scene: Scene) -> Callable[..., subprocess.CompletedProcess]:
    """`snapctl COMMAND ARGS` as a process, over an inventory of the scene written beside its catalog."""
    (scene.root / "inv.yaml").write_text(yaml.safe_dump({
        "cluster": CLUSTER, "provider": {"type": "local", "store": "snapshots"}, "catalog": {"path": "catalog"},
        "nodes": [{"name": n, "agent": "http://127.0.0.1:1"} for n in ("n1", "n2")]}))

    def snapctl(command: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "snapctl.cli", command, "-i", "inv.yaml", *args],
                              cwd=scene.root, capture_output=True, text=True, check=False, timeout=60)

    return snapctl


def gc_cli(scene: Scene) -> Callable[..., subprocess.CompletedProcess]:
    """`snapctl gc ARGS` as a process (``snapctl_cli``)."""
    snapctl = snapctl_cli(scene)
    return lambda *args: snapctl("gc", *args)


def snapshots_of(scene: Scene, run_ids: set[str]) -> set[str]:
    return {r.snapshot_id for r in scene.provider.find({}) if r.tags.get("snapctl-run") in run_ids}
