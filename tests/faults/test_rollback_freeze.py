"""A failed run records how long it held the nodes it rolled back: the runs whose freezes matter most."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import yaml

from snapctl.catalog import open_catalog
from snapctl.config import load_inventory
from snapctl.errors import RunFailed
from snapctl.orchestrator import BackupOptions, backup


def test_a_rolled_back_node_has_its_freeze_window_on_record(tmp_path: Path) -> None:
    nodes = []
    for name in ("n1", "n2"):
        (tmp_path / name).mkdir()
        with sqlite3.connect(tmp_path / name / "app.db") as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        nodes.append({"name": name, "agent": "embedded",
                      "engine": {"type": "sqlite", "path": f"{name}/app.db", "timeout_s": 0.3},
                      "volumes": [{"name": "data", "path": name}]})
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({
        "cluster": "frozen", "provider": {"type": "local", "store": "store"}, "catalog": {"path": "catalog"},
        "nodes": nodes}))
    inventory = load_inventory(tmp_path / "inventory.yaml")
    writer = sqlite3.connect(tmp_path / "n2" / "app.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # n2's prepare waits its 0.3 s for this lock and fails; n1 is held meanwhile
    try:
        with pytest.raises(RunFailed, match="n2"):
            asyncio.run(backup(inventory, BackupOptions(force=True, prune=False)))
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    (entry,), _ = open_catalog(inventory).list()
    manifest = open_catalog(inventory).load(entry.run_id)
    assert manifest.status == "failed"
    held = manifest.nodes["n1"].freeze_window_s
    assert held is not None and held >= 0.3  # at least n2's wait: it was held all along
    assert manifest.max_freeze_window_s == held and manifest.nodes["n2"].freeze_window_s is None
