"""A small cluster of embedded SQLite nodes with the local provider: real databases, real
snapshots, a real catalog, all in the test's directory. Backups run in-process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from snapctl.config import Inventory, load_inventory
from tests.conftest import free_port

NODES = ("n1", "n2")
ROWS = 50


@dataclass
class SqliteCluster:
    directory: Path
    inventory_path: Path

    @property
    def inventory(self) -> Inventory:
        return load_inventory(self.inventory_path)

    def database(self, node: str) -> Path:
        return self.directory / node / "data" / "app.db"

    def write(self, node: str, n: int) -> None:
        with sqlite3.connect(self.database(node)) as conn:
            conn.executemany("INSERT INTO items (payload) VALUES (?)", [(f"{node} row",) for _ in range(n)])

    def rows(self, node: str) -> int:
        with sqlite3.connect(self.database(node)) as conn:
            return conn.execute("SELECT count(*) FROM items").fetchone()[0]

    def edit(self, **changes: Any) -> None:
        """Change top-level inventory keys; ``node_<name>={...}`` merges into that node."""
        data = yaml.safe_load(self.inventory_path.read_text())
        for key, value in changes.items():
            if key.startswith("node_"):
                node = next(n for n in data["nodes"] if n["name"] == key[len("node_"):])
                node.update(value)
            else:
                data[key] = value
        self.inventory_path.write_text(yaml.safe_dump(data, sort_keys=False))

    def backup(self) -> str:
        from snapctl.orchestrator import BackupOptions, backup

        manifest = asyncio.run(backup(self.inventory, BackupOptions()))
        assert manifest.status == "succeeded", manifest.error
        return manifest.run_id

    def snapshot_data(self, node: str, run_id: str) -> Path:
        """The data directory of a node's snapshot in the local store."""
        [snap] = (self.directory / "store" / "restore-test" / node).glob(f"{run_id}-*")
        return snap / "data"


def checkpointed(database: Path) -> None:
    """A database changed in a snapshot, its WAL moved into it and emptied: every file of the
    snapshot keeps its recorded size (one that does not is refused as damaged before a restore),
    so only a check of the contents (in place, or the drill's) finds the change."""
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.fixture
def sqlite_cluster(tmp_path: Path) -> SqliteCluster:
    nodes = []
    for name in NODES:
        data = tmp_path / name / "data"
        data.mkdir(parents=True)
        with sqlite3.connect(data / "app.db") as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
            conn.executemany("INSERT INTO items (payload) VALUES (?)", [(f"{name} {i}",) for i in range(ROWS)])
        nodes.append({"name": name, "agent": "embedded", "engine": {"type": "sqlite", "path": f"{name}/data/app.db"},
                      "volumes": [{"name": "data", "path": f"{name}/data"}]})
    inventory = {"cluster": "restore-test", "provider": {"type": "local", "store": "store"},
                 "catalog": {"path": "catalog"}, "drill": {"scratch_dir": "scratch"}, "nodes": nodes}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return SqliteCluster(tmp_path, path)


@pytest.fixture
def mounted():
    """Mounts an empty tmpfs of ``size`` at a directory: a fresh disk where a node is restored, or
    a small one that really runs out of space. Skips the test where mounting needs root."""
    mounts = []

    def mount(path: Path, size: str = "16m") -> Path:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def scratch_agent(directory: Path, token_file: Path, database: Path, name: str = "n1-scratch",
                  engine_type: str = "sqlite", plugins: Path | None = None, restore_root: Path | None = None,
                  restore_target: bool = True):
    """A real snapctl-agent beside where a drill or restore puts n1: its engine comes up once the file is there.
    ``name``: its node name (a node's own agent answers with the inventory's name for it). ``plugins``: a
    directory on the agent's sys.path alone, for an engine installed on its host and not on this one.
    ``restore_root``: where else its restore-prepare may act (restored disks mounted elsewhere).
    ``restore_target``: False for a node's live agent, which refuses every restore-prepare."""
    port = free_port()
    config = directory / "scratch-agent.yaml"
    config.write_text(yaml.safe_dump({"node": name, "listen": "127.0.0.1", "port": port,
                                      "token_file": str(token_file), "restore_target": restore_target,
                                      "engine": {"type": engine_type, "path": str(database)},
                                      **({"restore_root": str(restore_root)} if restore_root else {})}))
    env = None if plugins is None else {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))}
    with open(directory / "scratch-agent.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "node_agent.main", "--config", str(config)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, (directory / "scratch-agent.log").read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def node_without_engine_block(cluster: SqliteCluster, node: str, engine_type: str = "sqlite",
                              plugins: Path | None = None):
    """``node`` served by a real agent process and described in the inventory without an engine
    block, as README's provider examples are: the run learns its engine from the agent's prepare.
    ``engine_type`` and ``plugins``: as ``scratch_agent`` takes them."""
    token_file = cluster.directory / "agent-token"
    token_file.write_text("agent-token\n")
    with scratch_agent(cluster.directory, token_file, cluster.database(node), name=node, engine_type=engine_type,
                       plugins=plugins) as url:
        data = yaml.safe_load(cluster.inventory_path.read_text())
        entry = next(n for n in data["nodes"] if n["name"] == node)
        del entry["engine"]
        entry["agent"] = url
        data["auth"] = {"token_file": str(token_file)}
        cluster.inventory_path.write_text(yaml.safe_dump(data, sort_keys=False))
        yield url


def vendordb_plugin(directory: Path) -> Path:
    """A directory holding a third-party engine plugin, ``vendordb`` (SQLite under another name),
    found by its entry point by whatever process has the directory on its sys.path: an engine
    installed on the database hosts alone (README: engines are entry points). Its engine keeps
    SQLite's name, as a subclass or an alias may: what its agent was configured with is what counts."""
    plugins = directory / "plugins"
    (plugins / "vendordb_plugin-0.1.dist-info").mkdir(parents=True, exist_ok=True)
    (plugins / "vendordb_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vendordb-plugin\nVersion: 0.1\n")
    (plugins / "vendordb_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[snapctl.engines]\nvendordb = vendordb_engine:VendorDbEngine\n")
    (plugins / "vendordb_engine.py").write_text(
        "from typing import Literal\n\n"
        "from node_agent.engines.sqlite import SqliteEngine, SqliteSettings\n\n\n"
        "class VendorDbSettings(SqliteSettings):\n"
        "    type: Literal['vendordb'] = 'vendordb'\n\n\n"
        "class VendorDbEngine(SqliteEngine):\n"
        "    settings_model = VendorDbSettings\n")
    return plugins
