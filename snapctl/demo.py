"""The local demo cluster: real agent processes on loopback, SQLite databases being written to.

State lives in ``.snapctl-demo/`` beside the inventory: agent configs, logs, pid files, the token,
the databases, the snapshot store and the catalog.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import yaml

from snapctl.config import Inventory, Node
from snapctl.errors import BadInputError, ExitCode, SnapctlError

DEMO_DIR = ".snapctl-demo"
START_TIMEOUT_S = 20.0
AGENT, WRITER = "node_agent.main", "snapctl.demo_writer"  # what the demo's processes run: `python -m ...`


@dataclass
class DemoNode:
    name: str
    url: str
    database: str
    pid: int | None
    running: bool


@dataclass
class DemoCluster:
    directory: str
    nodes: list[DemoNode] = field(default_factory=list)
    writer_pid: int | None = None
    action: str = "up"


def up(inventory: Inventory) -> DemoCluster:
    """Start every node's agent and one writer for all databases; already running ones are kept."""
    state = inventory.resolve(DEMO_DIR)
    state.mkdir(parents=True, exist_ok=True)
    token_file = _token_file(inventory)
    cluster = DemoCluster(str(state))
    databases = []
    for node in inventory.nodes:
        host, port = _loopback_address(node)
        database = _database(inventory, node)
        database.parent.mkdir(parents=True, exist_ok=True)
        _create_schema(database)
        databases.append(str(database))
        pid = _read_pid(state / f"{node.name}.pid", AGENT)
        if pid is None:
            config = state / f"{node.name}.agent.yaml"
            config.write_text(yaml.safe_dump({
                "node": node.name, "listen": host, "port": port, "token_file": str(token_file),
                "engine": {"type": "sqlite", "path": str(database)},
            }))
            pid = _spawn([sys.executable, "-m", AGENT, "--config", str(config)],
                         state / f"{node.name}.agent.log", state / f"{node.name}.pid")
        cluster.nodes.append(DemoNode(node.name, node.agent, str(database), pid, True))
    cluster.writer_pid = _read_pid(state / "writer.pid", WRITER) or _spawn(
        [sys.executable, "-m", WRITER, *databases], state / "writer.log", state / "writer.pid"
    )
    _wait_healthy(inventory, state)
    return cluster


def down(inventory: Inventory) -> DemoCluster:
    """Stop the writer and the agents. SIGTERM first: an agent completes any held lease on its way out."""
    state = inventory.resolve(DEMO_DIR)
    cluster = DemoCluster(str(state), action="down")
    cluster.writer_pid = _stop(state / "writer.pid", WRITER)
    for node in inventory.nodes:
        pid = _stop(state / f"{node.name}.pid", AGENT)
        cluster.nodes.append(DemoNode(node.name, node.agent, str(_database(inventory, node)), pid, False))
    return cluster


def run(inventory: Inventory, renderer, *, keep: bool = False) -> int:
    """The whole story: start, back up while writers run, show status and list, restore the
    newest backup into a scratch directory, and show that the rows match PREPARE's record."""
    from snapctl.catalog import open_catalog
    from snapctl.orchestrator import BackupOptions, backup
    from snapctl.restore import restore_run
    from snapctl.runner import interrupts_deferred
    from snapctl.runner import run as run_coroutine  # SIGTERM cancels the backup: it rolls back
    from snapctl.status import collect_status

    with renderer.bundle("demo"):
        try:
            renderer.demo_cluster(up(inventory))  # in the try: what it started is stopped, whatever happens
            time.sleep(0.5)  # let the writers put some rows in first
            progress = renderer.progress()
            try:
                manifest = run_coroutine(backup(inventory, BackupOptions(), progress))
            finally:
                progress.close()
            renderer.backup_result(manifest)
            renderer.status(run_coroutine(collect_status(inventory)))
            renderer.run_list(*open_catalog(inventory).list())
            newest = open_catalog(inventory).resolve("latest")
            scratch = inventory.resolve(DEMO_DIR) / "restore" / newest
            result = restore_run(inventory, newest, scratch)
            code = renderer.restore_result(result)
        finally:
            if not keep:
                with interrupts_deferred():  # a Ctrl-C or SIGTERM now waits until every process is stopped
                    renderer.demo_cluster(down(inventory))
    return code if code else ExitCode.OK


def _loopback_address(node: Node) -> tuple[str, int]:
    url = urlparse(node.agent)
    if node.agent == "embedded" or url.hostname not in ("127.0.0.1", "localhost") or not url.port:
        raise BadInputError(f"node {node.name}: the demo runs agents on loopback, not at {node.agent!r}",
                            hint="use agent: http://127.0.0.1:PORT for demo nodes")
    return url.hostname, url.port


def _database(inventory: Inventory, node: Node) -> Path:
    if node.engine.get("type") != "sqlite" or not node.engine.get("path"):
        raise BadInputError(f"node {node.name}: the demo needs a sqlite engine with a path",
                            hint="engine: {type: sqlite, path: .snapctl-demo/NODE/data/demo.db}")
    return inventory.resolve(node.engine["path"]).resolve()


def _token_file(inventory: Inventory) -> Path:
    if not inventory.auth.token_file:
        raise BadInputError("the demo needs auth.token_file in the inventory", hint="token_file: .snapctl-demo/agent-token")
    path = inventory.resolve(inventory.auth.token_file)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return path.resolve()


def _create_schema(database: Path) -> None:
    from snapctl.demo_writer import open_db

    open_db(str(database)).close()


def _spawn(argv: list[str], log: Path, pid_file: Path) -> int:
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # survives this command; `demo down` stops it
    pid_file.write_text(str(process.pid))
    return process.pid


def _read_pid(pid_file: Path, runs: str) -> int | None:
    """The pid in ``pid_file`` if that process is still the demo's (its command line runs ``runs``);
    else None, and the file is removed. A pid is reused once its process is gone: `demo down`
    must not stop whatever process has it now."""
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        cmdline = Path(f"/proc/{pid}/cmdline")
        if Path("/proc/self").exists() and runs not in cmdline.read_bytes().decode(errors="replace").split("\0"):
            raise ProcessLookupError(pid)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pid_file.unlink(missing_ok=True)
        return None
    except PermissionError:
        return None  # another user's process: not one this demo started
    return pid


def _stop(pid_file: Path, runs: str, grace_s: float = 10.0) -> int | None:
    pid = _read_pid(pid_file, runs)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return pid


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child; otherwise just ask whether it still exists.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_healthy(inventory: Inventory, state: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = {node.name: node.agent for node in inventory.nodes}
    while pending and time.monotonic() < deadline:
        for name, url in list(pending.items()):
            try:
                if httpx.get(f"{url}/v1/health", timeout=1.0).status_code == 200:
                    del pending[name]
            except httpx.HTTPError:
                pass
        if pending:
            time.sleep(0.1)
    if pending:
        name = next(iter(pending))
        log = state / f"{name}.agent.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise SnapctlError(f"demo agent {name} did not become healthy within {START_TIMEOUT_S:g}s"
                           + (f": {tail[0]}" if tail else ""), hint=f"see {log}")
