"""A real cluster for fault tests: ``snapctl-agent`` processes on loopback ports (SQLite engines by
default), each behind a ``LoopbackProxy``, an inventory that reaches the agents only through the
proxies, and the real ``snapctl`` CLI run as a subprocess.

The test sees past the proxies (``lease``, ``held``): whatever the network between snapctl and an
agent does, the test asks the agent itself what it holds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import LOOPBACK, with_ctrl_c
from tests.faults.proxy import LoopbackProxy

REPO = Path(__file__).resolve().parents[2]
THIRD_PARTY = Path(__file__).parent / "thirdparty"
AGENT_BIN = Path(sys.executable).with_name("snapctl-agent")
TOKEN = "fault-suite-token-7c1d0e5a9b"
NODES = ("node1", "node2", "node3")
# Short enough that a dead run's holds and lock pass within a test, long enough for a loaded CI box.
POLICY = {"lease_ttl_s": "3s", "lock_ttl_s": "3s", "agent_timeout_s": "3s", "prepare_timeout_s": "10s",
          "max_freeze_s": "60s", "snapshot_timeout_s": "60s"}


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Agent:
    name: str
    port: int
    config: Path
    log: Path
    proxy: LoopbackProxy | None
    database: Path | None
    volume: Path
    proc: subprocess.Popen | None = None
    log_offset: int = 0  # where this start's lines begin in the log


@dataclass
class FaultCluster:
    directory: Path
    engines: dict[str, dict] = field(default_factory=dict)  # node -> engine block (default: sqlite)
    agent_extra: dict[str, Any] = field(default_factory=dict)  # added to every agent's config
    nodes: tuple[str, ...] = NODES
    agents: dict[str, Agent] = field(default_factory=dict)
    cluster: str = "faults"
    tls: Any = None  # a tests.agent.certs.Pki: agents serve HTTPS and want client certificates (mTLS)
    extra_env: dict[str, str] = field(default_factory=dict)  # for every snapctl the test runs
    _runs: list[subprocess.Popen] = field(default_factory=list)

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultCluster:
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)
        for name in self.nodes:
            engine = self.engines.get(name)
            # The node's volume holds its engine's data, as the preflight insists: a QuestDB root, or
            # the directory of the SQLite file made below.
            volume = Path(engine["root"]) if engine and "root" in engine else self.directory / name / "data"
            volume.mkdir(parents=True, exist_ok=True)
            database = None
            if engine is None:
                database = volume / "db.sqlite"
                create_db(database)
                engine = {"type": "sqlite", "path": str(database), "timeout_s": 2}
            config = self.directory / f"{name}.agent.yaml"
            tls = {"tls": {"cert_file": str(self.tls.server_cert), "key_file": str(self.tls.server_key),
                           "client_ca_file": str(self.tls.ca)}} if self.tls else {}
            # Port 0: the agent binds a free port itself and logs it; no race with anyone for it.
            config.write_text(yaml.safe_dump({"node": name, "port": 0, "token_file": str(self.token_file),
                                              "engine": engine, **tls, **self.agent_extra}))
            self.agents[name] = Agent(name, 0, config, self.directory / f"{name}.agent.log", None, database, volume)
        for name in self.nodes:
            self.start_agent(name, wait=False)
        for agent in self.agents.values():
            self._wait_healthy(agent.name)
            agent.proxy = LoopbackProxy(agent.port)
        self.write_inventory(self.inventory)
        return self

    def new_scene(self, cluster: str) -> None:
        """The same agents for a new test: a new cluster name (so a new catalog and snapshot store
        under it), plain proxies, no held nodes."""
        self._stop_runs()
        for agent in self.agents.values():
            agent.proxy.reset()
            if agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGCONT)  # a test may have left it stopped
            else:
                self.start_agent(agent.name)  # ... or killed
        self.wait_released()
        self.cluster = cluster
        self.write_inventory(self.inventory)

    def close(self) -> None:
        self._stop_runs()
        for agent in self.agents.values():
            if agent.proxy is not None:
                agent.proxy.close()
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGCONT)
                agent.proc.terminate()
        for agent in self.agents.values():
            if agent.proc is not None:
                try:
                    agent.proc.wait(15)
                except subprocess.TimeoutExpired:
                    agent.proc.kill()
                    agent.proc.wait()

    def start_agent(self, name: str, *, wait: bool = True) -> None:
        agent = self.agents[name]
        agent.log_offset = agent.log.stat().st_size if agent.log.exists() else 0
        with open(agent.log, "ab") as log:
            env = {k: v for k, v in os.environ.items() if k != "SNAPCTL_AGENT_TOKEN"}
            agent.proc = subprocess.Popen([str(AGENT_BIN), "--config", str(agent.config)], stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait:
            self._wait_healthy(name)
            if agent.proxy is not None:
                agent.proxy.upstream_port = agent.port  # a restarted agent has a new port

    def kill_agent(self, name: str) -> None:
        proc = self.agents[name].proc
        assert proc is not None
        proc.kill()
        proc.wait(10)

    def pause_agent(self, name: str) -> None:
        self.agents[name].proc.send_signal(signal.SIGSTOP)

    def resume_agent(self, name: str) -> None:
        self.agents[name].proc.send_signal(signal.SIGCONT)

    def _wait_healthy(self, name: str) -> None:
        agent = self.agents[name]

        def healthy() -> bool:
            if agent.proc.poll() is not None:
                raise AssertionError(f"agent {name} exited {agent.proc.returncode}: {agent.log.read_text()}")
            listening = re.search(r"listening on https?://127\.0\.0\.1:(\d+)",
                                  agent.log.read_text(errors="replace")[agent.log_offset:])
            if not listening:
                return False
            agent.port = int(listening.group(1))
            try:
                return httpx.get(self.url(name) + "/v1/health", timeout=1, verify=self.verify).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 30, f"agent {name} to answer /v1/health")

    # ---- the inventory and the CLI ----------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def url(self, name: str) -> str:
        """The agent itself, not its proxy."""
        return f"{self.scheme}://{LOOPBACK}:{self.agents[name].port}"

    @property
    def verify(self) -> Any:
        if not self.tls:
            return False
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context

    @property
    def token_file(self) -> Path:
        return self.directory / "agent.token"

    @property
    def inventory(self) -> Path:
        return self.directory / "inventory.yaml"

    @property
    def control(self) -> Path:
        return self.directory / "control" / self.cluster

    @property
    def store(self) -> Path:
        return self.directory / "snapshots"

    @property
    def catalog_dir(self) -> Path:
        return self.directory / "catalog"

    def write_inventory(self, path: Path, *, provider: dict | None = None, policy: dict | None = None,
                        volumes: Callable[[str], list] | None = None, **top: Any) -> Path:
        """``provider``: changes to the fault provider's block (or a whole block, with a ``type``);
        ``volumes``: node name -> that node's ``volumes:`` for another provider."""
        fault = {"type": "fault", "store": str(self.store), "control": str(self.control)}
        data = {
            "cluster": self.cluster,
            "provider": provider if provider and "type" in provider else {**fault, **(provider or {})},
            "catalog": {"path": str(self.catalog_dir)},
            "auth": {"token_file": str(self.token_file), **self._tls_auth()},
            "policy": {**POLICY, **(policy or {})},
            "nodes": [{"name": a.name, "agent": f"{self.scheme}://{LOOPBACK}:{a.proxy.port}",
                       "engine": self._engine_block(a),
                       "volumes": volumes(a.name) if volumes else [{"name": "data", "path": str(a.volume)}]}
                      for a in self.agents.values()],
            **top,
        }
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def _tls_auth(self) -> dict:
        if not self.tls:
            return {}
        return {"ca_file": str(self.tls.ca), "client_cert_file": str(self.tls.client_cert),
                "client_key_file": str(self.tls.client_key)}

    def _engine_block(self, agent: Agent) -> dict:
        return self.engines.get(agent.name) or {"type": "sqlite", "path": str(agent.database)}

    def plain_inventory(self) -> Path:
        """The same cluster with the plain local provider: for in-process checks (gc, list)."""
        path = self.write_inventory(self.directory / f"{self.cluster}.plain.yaml")
        data = yaml.safe_load(path.read_text())
        data["provider"] = {"type": "local", "store": str(self.store)}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def catalog(self):
        from snapctl.catalog import open_catalog
        from snapctl.config import load_inventory

        return open_catalog(load_inventory(self.plain_inventory()))

    def gc(self, *, delete: bool = False):
        """What `snapctl gc` finds (and with ``delete``, deletes): the same call the CLI makes."""
        from snapctl.config import load_inventory
        from snapctl.prune import gc

        return gc(load_inventory(self.plain_inventory()), delete=delete)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "SNAPCTL_AGENT_TOKEN"}
        env["PYTHONPATH"] = os.pathsep.join([str(THIRD_PARTY), str(REPO)])
        env["XDG_STATE_HOME"] = str(self.directory / "state")  # nothing of a developer's own state
        env.update(self.extra_env)
        return env

    def snapctl(self, *args: str, inventory: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "snapctl.cli", *args, "-i", str(inventory or self.inventory)]
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=self.env())
        result.json = json.loads(result.stdout) if "json" in args and result.stdout.strip() else None
        return result

    def popen(self, *args: str, inventory: Path | None = None) -> subprocess.Popen:
        """The CLI in the background, as Ctrl-C would reach it in a terminal (``with_ctrl_c``)."""
        cmd = [sys.executable, "-m", "snapctl.cli", *args, "-i", str(inventory or self.inventory)]
        process = subprocess.Popen(with_ctrl_c(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env())
        self._runs.append(process)
        return process

    def backup_changed_after_preflight(self, change: Callable[[], None], *args: str,
                                       inventory: Path) -> subprocess.CompletedProcess:
        """``snapctl backup`` with ``inventory``, whose provider must have ``stop_warm_up``: ``change``
        runs once the run's preflight has passed (its manifest is saved) and before its first
        prepare. How a fault the preflight would refuse on, even forced, still reaches a run: an
        agent that goes away, or starts refusing, between the two."""
        process = self.popen("backup", *args, inventory=inventory)
        self.wait_reached("warm_up.entered")
        wait_until(lambda: self.run_ids() or process.poll() is not None, 60, "the run's preflight to pass")
        assert process.poll() is None, process.communicate()
        change()
        self.go("warm_up.go")
        out, err = process.communicate(timeout=120)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def _stop_runs(self) -> None:
        """A test that failed half-way may leave a snapctl standing at a step: it goes first."""
        for process in self._runs:
            if process.poll() is None:
                process.kill()
            process.communicate()
        self._runs.clear()

    # ---- the fault provider's signal files ------------------------------------------------

    def reached(self, signal_name: str) -> bool:
        return (self.control / signal_name).exists()

    def wait_reached(self, signal_name: str, timeout: float = 60) -> None:
        wait_until(lambda: self.reached(signal_name), timeout, f"the provider to reach {signal_name}")

    def go(self, signal_name: str) -> None:
        self.control.mkdir(parents=True, exist_ok=True)
        (self.control / signal_name).touch()

    # ---- what the agents and the stores say -------------------------------------------------

    def lease(self, name: str) -> dict | None:
        """The agent's own answer, past its proxy."""
        response = httpx.get(self.url(name) + "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"},
                             timeout=10, verify=self.verify)
        response.raise_for_status()
        return response.json()["lease"]

    def held(self) -> set[str]:
        return {name for name in self.agents if self.lease(name)}

    def wait_released(self, timeout: float = 15, nodes: tuple[str, ...] | None = None) -> None:
        nodes = nodes or tuple(self.agents)
        wait_until(lambda: not any(self.lease(n) for n in nodes), timeout, f"{', '.join(nodes)} to be released")

    def released_by(self, name: str, run_id: str) -> str | None:
        """How the agent's log says the run's hold on it ended: "completed" (snapctl asked),
        "cancelled" (snapctl's complete came while the prepare still waited for its hold_at, or
        before the prepare arrived at all, so it never held), "expired" (the lease ran out), or None."""
        log = self.agents[name].log.read_text(errors="replace")
        if f"completed run {run_id} " in log:
            return "completed"
        if f"prepare of run {run_id} cancelled by its complete" in log:
            return "cancelled"
        if f"prepare of run {run_id} refused: its complete came first" in log:
            return "cancelled"  # the rollback's complete overtook the prepare: never held
        if f"lease of run {run_id} expired" in log:
            return "expired"
        return None

    def writable(self, name: str) -> bool:
        """A writer gets into the node's SQLite database: the engine is not held."""
        conn = sqlite3.connect(self.agents[name].database, timeout=0.2)
        try:
            conn.execute("INSERT INTO events (note) VALUES ('after the fault')")
            conn.commit()
            return True
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise
        finally:
            conn.close()

    def snapshot_dirs(self, run_id: str | None = None) -> list[Path]:
        """Snapshot directories in the store (a run's, or all), hidden work directories included."""
        root = self.store / self.cluster
        found = sorted(p for p in root.glob("*/*") if p.is_dir()) if root.exists() else []
        return [p for p in found if run_id is None or run_id in p.name]

    def tagged(self, run_id: str) -> list[str]:
        """Snapshot ids carrying the run's tag: what `snapctl gc` can find."""
        from snapctl_local import LocalProvider

        from snapctl.providers import TAG_RUN

        provider = LocalProvider(LocalProvider.settings_model(type="local", store=str(self.store)),
                                 cluster=self.cluster, base_dir=self.directory)
        return sorted(ref.snapshot_id for ref in provider.find({TAG_RUN: run_id}))

    def manifest_file(self, run_id: str) -> Path:
        return self.catalog_dir / self.cluster / "manifests" / f"{run_id}.json"

    def manifest(self, run_id: str) -> dict:
        return json.loads(self.manifest_file(run_id).read_text())

    def lock_record(self, catalog: Path | None = None) -> dict | None:
        path = (catalog or self.catalog_dir) / self.cluster / "lock.json"
        return json.loads(path.read_text()) if path.exists() else None

    def wait_lock_free(self, timeout: float = 30, catalog: Path | None = None) -> None:
        def free() -> bool:
            record = self.lock_record(catalog)
            if record is None or record.get("released_at"):
                return True
            return datetime.fromisoformat(record["expires_at"]) < datetime.now(UTC)

        wait_until(free, timeout, "the cluster lock to expire")

    def run_ids(self) -> list[str]:
        manifests = self.catalog_dir / self.cluster / "manifests"
        return sorted(p.stem for p in manifests.glob("*.json")) if manifests.exists() else []


def create_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, note TEXT)")
        conn.executemany("INSERT INTO events (note) VALUES (?)", [(f"row {i}",) for i in range(20)])
        conn.commit()
    finally:
        conn.close()
