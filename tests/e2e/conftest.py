"""A real demo cluster per test: agent processes on loopback ports, SQLite databases with a writer,
and the real `snapctl` CLI run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port

THIRD_PARTY = Path(__file__).parent / "thirdparty"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Cluster:
    directory: Path
    inventory: Path
    nodes: dict[str, str]  # name -> agent url

    def snapctl(self, *args: str, timeout: float = 120, check_json: bool = False, inventory: Path | None = None):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(THIRD_PARTY), str(REPO)])}
        env.pop("SNAPCTL_AGENT_TOKEN", None)
        cmd = [sys.executable, "-m", "snapctl.cli", *args]
        if "-i" not in args:
            cmd += ["-i", str(inventory or self.inventory)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if check_json:
            result.json = json.loads(result.stdout)
        return result

    def popen(self, *args: str) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(THIRD_PARTY), str(REPO)])}
        inventory = [] if "-i" in args else ["-i", str(self.inventory)]
        return subprocess.Popen([sys.executable, "-m", "snapctl.cli", *args, *inventory],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    @property
    def token(self) -> str:
        return (self.directory / ".snapctl-demo" / "agent-token").read_text().strip()

    def agent_status(self, node: str) -> dict:
        response = httpx.get(f"{self.nodes[node]}/v1/status", headers={"Authorization": f"Bearer {self.token}"},
                             timeout=5)
        response.raise_for_status()
        return response.json()

    def write_inventory(self, path: Path | None = None, **changes) -> Path:
        data = yaml.safe_load(self.inventory.read_text())
        for key, value in changes.items():
            data[key] = value
        target = path or self.inventory
        target.write_text(yaml.safe_dump(data))
        return target

    def stop_writer(self) -> None:
        from snapctl import demo

        assert demo._stop(self.directory / demo.DEMO_DIR / demo.WRITER_PID, demo.WRITER) is not None

    def rows(self, node: str) -> int:
        import sqlite3

        db = self.directory / ".snapctl-demo" / node / "data" / "demo.db"
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("SELECT count(*) FROM events").fetchone()[0]


def make_inventory(directory: Path, *, provider: dict | None = None, policy: dict | None = None) -> tuple[Path, dict]:
    nodes = {f"node{i}": f"http://127.0.0.1:{free_port()}" for i in (1, 2, 3)}
    inventory = {
        "cluster": "e2e",
        "provider": provider or {"type": "local", "store": ".snapctl-demo/snapshots"},
        "catalog": {"path": ".snapctl-demo/catalog"},
        "auth": {"token_file": ".snapctl-demo/agent-token"},
        "policy": {"lease_ttl_s": "3s", "max_freeze_s": "60s", "agent_timeout_s": "5s", "lock_ttl_s": "3s",
                   **(policy or {})},
        "nodes": [
            {"name": name, "agent": url, "engine": {"type": "sqlite", "path": f".snapctl-demo/{name}/data/demo.db"},
             "volumes": [{"name": "data", "path": f".snapctl-demo/{name}/data"}]}
            for name, url in nodes.items()
        ],
    }
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path, nodes


@pytest.fixture
def cluster(tmp_path: Path):
    from snapctl import demo
    from snapctl.config import load_inventory

    path, nodes = make_inventory(tmp_path, provider={"type": "slow", "store": ".snapctl-demo/snapshots"})
    sys.path.insert(0, str(THIRD_PARTY))
    try:
        demo.up(load_inventory(path))
        yield Cluster(tmp_path, path, nodes)
    finally:
        demo.down(load_inventory(path))
        sys.path.remove(str(THIRD_PARTY))
