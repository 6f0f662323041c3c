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

from snapctl.config import Inventory, Node, load_inventory
from snapctl.errors import BadInputError, ExitCode, InventoryError, SnapctlError
from snapctl.runner import interrupts_deferred
from snapctl.secret_files import read_first_line

DEMO_DIR = ".snapctl-demo"
EXAMPLE = "inventory.example.yaml"  # the demo's inventory, at the top of snapctl's source
START_TIMEOUT_S = 20.0
AGENT, WRITER = "node_agent.main", "snapctl.demo_writer"  # what the demo's processes run: `python -m ...`
# The writer's files: a node name never starts with "_", so no node's agent shares them.
WRITER_PID, WRITER_LOG = "_writer.pid", "_writer.log"


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


def load_demo_inventory(path: str | os.PathLike[str]) -> Inventory:
    """The demo's inventory at ``path``. Where there is none, the error says where the demo's own
    is: run from elsewhere than the clone, "copy inventory.example.yaml to inventory.yaml" (every
    other command's advice) helped no one."""
    file = Path(path)
    if not file.exists():
        example = Path(__file__).resolve().parents[1] / EXAMPLE  # there in a clone, as ./dev installs snapctl
        if example.is_file():
            hint = (f"pass -i {example}, or run the demo from {example.parent}; it keeps its state beside its "
                    f"inventory, in {DEMO_DIR}/")
        else:
            hint = (f"pass -i FILE, a copy of {EXAMPLE} from snapctl's source; the demo keeps its state beside "
                    f"it, in {DEMO_DIR}/")
        where = "" if file.is_absolute() else f" in {Path.cwd()}"
        raise InventoryError(f"{file}: inventory file not found{where}", hint=hint)
    inventory = load_inventory(file)
    check_demo_inventory(inventory)
    return inventory


def check_demo_inventory(inventory: Inventory) -> None:
    """Refuse an inventory whose databases are not the demo's own: `demo up` switches each to WAL,
    creates its table and starts a writer inserting rows. Pointed at a production inventory
    (through $SNAPCTL_INVENTORY, which the demo once read) it did all that to the real databases.
    A demo database lives in the demo's state directory and either does not exist yet or holds
    the demo's table only: a path check alone would pass a real database moved there, a schema
    check alone a real database that happens to have one `events` table."""
    state = inventory.resolve(DEMO_DIR).resolve()
    for node in inventory.nodes:
        database = _database(inventory, node)
        if not database.is_relative_to(state):
            raise BadInputError(f"node {node.name}: {database} is not a demo database: the demo's databases live "
                                f"in {state}/", hint=f"the demo runs on its own inventory ({EXAMPLE}), not a real "
                                "cluster's; engine: {type: sqlite, path: .snapctl-demo/NODE/data/demo.db}")
        problem = _not_the_demos_schema(database)
        if problem:
            raise BadInputError(f"node {node.name}: {database} is not a demo database: {problem}",
                                hint=f"the demo makes its databases itself: give it an inventory whose databases do "
                                     f"not exist yet, as {EXAMPLE}'s do before the first `demo up`")


def up(inventory: Inventory) -> DemoCluster:
    """Start every node's agent and one writer for all databases; already running ones are kept.
    When one does not come up, what this call started is stopped again: a failed `demo up` leaves
    nothing behind to get in the way of the next."""
    check_demo_inventory(inventory)  # before anything is made: the writer and the agents change a database
    state = inventory.resolve(DEMO_DIR)
    # Every node is checked before anything starts: a bad second node left the first one's agent running.
    places = [(node, _loopback_address(node), _database(inventory, node)) for node in inventory.nodes]
    state.mkdir(parents=True, exist_ok=True)
    token_file = _token_file(inventory)
    for _, _, database in places:
        database.parent.mkdir(parents=True, exist_ok=True)
        _create_schema(database)
    cluster = DemoCluster(str(state))
    started: list[tuple[str | None, Path, subprocess.Popen]] = []  # (node, or None for the writer; pid file; it)
    try:
        for node, (host, port), database in places:
            pid_file = state / f"{node.name}.pid"
            pid = _read_pid(pid_file, AGENT)
            if pid is None:
                config = state / f"{node.name}.agent.yaml"
                config.write_text(yaml.safe_dump({
                    "node": node.name, "listen": host, "port": port, "token_file": str(token_file),
                    "engine": {"type": "sqlite", "path": str(database)},
                    "state_dir": str(state / "agent-state"),  # its hold records stay with the demo's files
                }))
                pid = _spawn([sys.executable, "-m", AGENT, "--config", str(config)],
                             state / f"{node.name}.agent.log", pid_file, started, node.name)
            cluster.nodes.append(DemoNode(node.name, node.agent, str(database), pid, True))
        cluster.writer_pid = _read_pid(state / WRITER_PID, WRITER)
        if cluster.writer_pid is None:
            cluster.writer_pid = _spawn([sys.executable, "-m", WRITER, *(str(d) for _, _, d in places)],
                                        state / WRITER_LOG, state / WRITER_PID, started, None)
        kept = {node.name for node in cluster.nodes} - {whose for whose, _, _ in started}
        ports = {node.name: f"{node.agent} ({inventory.where(*inventory.node_loc(node.name), 'agent')})"
                 for node, _, _ in places}
        _wait_healthy(state, token_file, cluster, kept, ports)
    except BaseException as exc:
        with interrupts_deferred():  # a Ctrl-C now waits until every process it started is stopped
            stopped = [whose for whose, pid_file, process in started if _stop_started(process, pid_file)]
        if type(exc) is SnapctlError and stopped:
            raise SnapctlError(f"{exc.message}; stopped what it had started: {_listed(stopped)}",
                               hint=exc.hint) from exc
        raise
    return cluster


def down(inventory: Inventory) -> DemoCluster:
    """Stop the writer and the agents. SIGTERM first: an agent completes any held lease on its way out."""
    state = inventory.resolve(DEMO_DIR)
    cluster = DemoCluster(str(state), action="down")
    cluster.writer_pid = _stop(state / WRITER_PID, WRITER)
    if cluster.writer_pid is None and "writer" not in {node.name for node in inventory.nodes}:
        cluster.writer_pid = _stop(state / "writer.pid", WRITER)  # a writer started before the rename
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


def _not_the_demos_schema(database: Path) -> str | None:
    """Why ``database`` is not one the demo made, or None: it does not exist, is empty, or holds
    the demo writer's table alone. Read-only: nothing is written to a database being judged."""
    import sqlite3

    from snapctl.demo_writer import COLUMNS, TABLE

    if not database.exists():
        return None
    try:
        conn = sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)
        try:
            objects = conn.execute("SELECT type, name FROM sqlite_master ORDER BY type, name").fetchall()
            columns = tuple(row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})"))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"cannot read it as a sqlite database ({exc})"
    others = [name for _, name in objects if name != TABLE]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        return f"it holds {shown}, not only the demo's table {TABLE}"
    if objects and columns != COLUMNS:
        return f"its table {TABLE} has columns {', '.join(columns)}, not the demo's {', '.join(COLUMNS)}"
    return None


def _create_schema(database: Path) -> None:
    from snapctl.demo_writer import open_db

    open_db(str(database)).close()


def _spawn(argv: list[str], log: Path, pid_file: Path, started: list, whose: str | None) -> int:
    """Start a process of the demo, its pid in ``pid_file``, and add it to ``started`` (with
    ``whose`` it is) for `demo up` to stop if the start fails. A Ctrl-C is held off meanwhile: one
    between the start and those records would leave a process nothing knows to stop."""
    with interrupts_deferred(), open(log, "ab") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # survives this command; `demo down` stops it
        pid_file.write_text(str(process.pid))
        started.append((whose, pid_file, process))
    return process.pid


def _stop_started(process: subprocess.Popen, pid_file: Path, grace_s: float = 10.0) -> bool:
    """Stop a process this command started; True if it was still running. By its ``Popen``, not as
    `demo down` does by the pid file: just started, its command line may not read as the demo's
    yet (the kernel sets it up after releasing the parent), and a pid of a child is never another's."""
    pid_file.unlink(missing_ok=True)
    if process.poll() is not None:
        return False
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return True


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


def _wait_healthy(state: Path, token_file: Path, cluster: DemoCluster, kept: set[str], ports: dict[str, str]) -> None:
    """Until every node's own agent answers, as that node, with the demo's token. A process of the
    demo that exits (an agent whose port is taken, say) fails it at once with its own last words,
    and another server answering on an agent's port (another demo's agent) is not taken for it.
    An agent ``kept`` running from an earlier `demo up` owns its port: its refusal of the token
    (the token file changed since it started) fails it at once too. ``ports``: each node's agent
    URL and where the inventory sets it, for an agent that could not listen."""
    headers = {"Authorization": f"Bearer {read_first_line(token_file)[0]}"}  # as the agent reads it
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = {node.name: node.url for node in cluster.nodes}
    pids = {node.name: node.pid for node in cluster.nodes}
    while pending and time.monotonic() < deadline:
        for name, url in list(pending.items()):
            if pids[name] is not None and not _alive(pids[name]):
                raise _agent_exited(state / f"{name}.agent.log", name, ports[name])
            answer = _answer_of(name, url, headers)
            if answer == "ok":
                del pending[name]
            elif answer == "unauthorized" and name in kept:
                raise SnapctlError(f"demo agent {name}, left running by an earlier `demo up`, refuses the demo's "
                                   f"token: {token_file} changed since it started",
                                   hint="run `snapctl demo down`, then `snapctl demo up`")
        if cluster.writer_pid is not None and not _alive(cluster.writer_pid):
            raise _start_failed(state / WRITER_LOG, "demo writer exited")
        if pending:
            time.sleep(0.1)
    if pending:
        name = next(iter(pending))
        raise _start_failed(state / f"{name}.agent.log",
                            f"demo agent {name} did not become healthy within {START_TIMEOUT_S:g}s")


def _answer_of(name: str, url: str, headers: dict[str, str]) -> str:
    """"ok" (the agent of ``name`` answered), "unauthorized" (a 401) or "not yet"."""
    try:
        response = httpx.get(f"{url}/v1/status", headers=headers, timeout=1.0)
        if response.status_code == 401:
            return "unauthorized"
        return "ok" if response.status_code == 200 and response.json().get("node") == name else "not yet"
    except (httpx.HTTPError, ValueError, AttributeError):
        return "not yet"


def _agent_exited(log: Path, name: str, port: str) -> SnapctlError:
    failed = _start_failed(log, f"demo agent {name} exited")
    if "cannot listen on" not in failed.message:
        return failed
    # The agent's own hint says "pick another --port": the demo has none, it gives each agent the
    # port of its node's agent: URL.
    return SnapctlError(failed.message.split(" (hint: ")[0],
                        hint=f"stop what uses it, or set node {name}'s agent: {port} to a free port; {failed.hint}")


def _start_failed(log: Path, what: str) -> SnapctlError:
    """``what`` went wrong, with the last line of the process's log: its own error, as a rule."""
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    return SnapctlError(what + (f": {tail[0]}" if tail else ""), hint=f"see {log}")


def _listed(whose: list[str | None]) -> str:
    """What a failed start stopped, in words: "the agents of node1 and node3, and the writer"."""
    def joined(names: list[str]) -> str:
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

    agents = [name for name in whose if name is not None]
    parts = [f"the agent{'s' if len(agents) > 1 else ''} of {joined(agents)}"] if agents else []
    return (", and " if len(agents) > 1 else " and ").join(parts + (["the writer"] if None in whose else []))
