"""Engines started from restored files on this machine: what a drill of the embedded default runs.

SQLite reads the restored file directly. Tarantool gets a scratch instance on the restored
directories (read-only, no replication). etcd gets a scratch single-member cluster that the
adapter's own restore-prepare rebuilds from the run's saved snapshot (``etcdctl snapshot restore``).
Scratch servers listen on unix sockets in the drill's private (0700) work directory, never on a TCP
port: restored production data that the source served without auth (Tarantool's guest with rights,
etcd with auth off) would otherwise be open to every local user while the drill runs. They are
killed on exit, whatever happened.

Engines whose servers cannot run here (QuestDB, DingoDB, AresDB) are drilled through a scratch
agent instead (``nodes[].restore.agent``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from node_agent.engines.base import Engine, create_engine
from snapctl.drill_leftovers import PID_SUFFIX, RECORD_THEN_EXEC
from snapctl.errors import BadInputError, EngineError, interrupted_by_signal
from snapctl.fsmodes import make_dirs

if TYPE_CHECKING:
    from snapctl.config import Inventory, Node
    from snapctl.manifest import NodeRecord

# Engines the drill can run on this machine from restored files, and those of them that need no server.
SCRATCH_ENGINES = ("sqlite", "tarantool", "etcd")
FILE_ENGINES = ("sqlite",)

# Read-only and without replication: the scratch instance recovers the restored files and never
# writes to them, nor reaches out to the live replica set, nor to tarantool.io (its feedback daemon
# reports there hourly by default). A tarantool built without that daemon (ENABLE_FEEDBACK_DAEMON=OFF,
# some distributions' builds) refuses every feedback_* option in box.cfg: the option is given only
# where the daemon exists, tested as tarantool's own load_cfg does (box.internal.feedback_daemon,
# there before box.cfg). It listens on a socket in its working directory (the drill's work
# directory), named relatively: a deep scratch_dir makes absolute paths longer than AF_UNIX takes.
TARANTOOL_SOCKET = "tarantool.sock"
TARANTOOL_LUA = f"""
local work_dir, memtx_dir, wal_dir, vinyl_dir = arg[1], arg[2], arg[3], arg[4]
local cfg = {{listen = 'unix/:./{TARANTOOL_SOCKET}', work_dir = work_dir, memtx_dir = memtx_dir, wal_dir = wal_dir,
             vinyl_dir = vinyl_dir, read_only = true, checkpoint_interval = 0}}
local ok, internal = pcall(require, 'box.internal')
if ok and internal.feedback_daemon ~= nil then cfg.feedback_enabled = false end
box.cfg(cfg)
"""
# What a scratch server gets of snapctl's environment. Not the rest: the agent token, the clouds'
# credentials (AWS_*, GOOGLE_*, AZURE_*), nor ETCD_* and TT_* variables, which etcd and tarantool
# read as settings of their own (an ETCD_ENABLE_PPROF meant for the live cluster, say).
SCRATCH_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME")
# etcd 3.4 takes unix://NAME:PORT only (a path is refused) and makes the socket file NAME:PORT in its
# working directory. The peer URL too: the member is alone, and no other may reach it.
ETCD_CLIENT_SOCKET, ETCD_PEER_SOCKET = "etcd-client:2379", "etcd-peer:2380"
# sun_path holds 108 bytes, its NUL included.
UNIX_PATH_MAX = 107


def can_run_here(engine_type: str | None) -> bool:
    return engine_type in SCRATCH_ENGINES


def engine_type(node: Node, record: NodeRecord) -> str | None:
    """The node's engine: as the run recorded it, else as the inventory has it."""
    return record.engine or (record.state.engine if record.state else None) or node.engine.get("type")


def engine_block(inventory: Inventory, node: Node, record: NodeRecord) -> dict[str, Any] | None:
    """The engine settings a restore of ``node`` starts from: its inventory block (checked: its
    errors name file:line), else what the run recorded of the engine at prepare, for engines whose
    record is all they need (SQLite: the database file); None when neither says enough. A node
    whose agent runs elsewhere need not repeat the agent's engine block in the inventory."""
    if node.engine:
        inventory.engine_settings(node)
        return node.engine
    state = record.state
    if state is not None and state.engine == "sqlite":
        path = state.details.get("path") or next(iter(state.files), None)
        if isinstance(path, str) and path:
            return {"type": "sqlite", "path": path}
    return None


def no_engine_block(node: Node, record: NodeRecord) -> BadInputError:
    kind = engine_type(node, record)
    recorded = f"too little of its {kind} engine to start it" if kind else "no engine for it"
    return BadInputError(f"node {node.name}: no engine block in the inventory, and the run recorded {recorded}",
                         hint="add the node's engine block to the inventory, as in its agent's config")


@contextmanager
def scratch_engine(settings: dict[str, Any], *, base_dir: Path, workdir: Path, start_timeout_s: float,
                   cancelled: threading.Event | None = None) -> Iterator[Engine]:
    """An engine whose data is the restored files ``settings`` point at (paths already moved onto
    the restored volumes), restore-prepared and answering; everything started is stopped on exit.
    ``cancelled`` (an interrupted drill) ends the wait for a starting engine at once."""
    kind = settings.get("type")
    starters: dict[str, Callable[..., Any]] = {"sqlite": _sqlite, "tarantool": _tarantool, "etcd": _etcd}
    if kind not in starters:
        raise BadInputError(f"a {kind} engine cannot be started on this machine for a drill",
                            hint="give the node a scratch agent (restore.agent) where its engine runs")
    _private_dir(workdir)
    with starters[kind](dict(settings), base_dir, workdir, start_timeout_s, cancelled) as engine:
        try:
            yield engine
        finally:
            engine.close()


@contextmanager
def _sqlite(settings: dict[str, Any], base_dir: Path, workdir: Path, start_timeout_s: float,
            cancelled: threading.Event | None) -> Iterator[Engine]:
    engine = create_engine(settings, base_dir=base_dir)
    engine.restore_prepare(None)
    yield engine


@contextmanager
def _tarantool(settings: dict[str, Any], base_dir: Path, workdir: Path, start_timeout_s: float,
               cancelled: threading.Event | None) -> Iterator[Engine]:
    binary = _binary("tarantool", "tarantool")
    roots = [_resolve(base_dir, p) for p in (settings.get("data_paths") or [settings.get("work_dir")]) if p]
    memtx_dir = _newest_parent(roots, "*.snap")
    if memtx_dir is None:
        raise EngineError(f"no tarantool .snap file in the restored {', '.join(map(str, roots))}",
                          hint="the restored volumes must cover memtx_dir")
    with ExitStack() as stack:
        settings.pop("host", None)
        settings.pop("port", None)
        settings["socket"], through = _socket_path(workdir, TARANTOOL_SOCKET, stack)
        engine = create_engine(settings, base_dir=base_dir)
        engine.reach_socket_through(through)
        engine.restore_prepare(memtx_dir)  # drops *.inprogress leftovers before recovery could trip on them
        wal_dir = _newest_parent(roots, "*.xlog") or memtx_dir
        vinyl_dir = _newest_parent(roots, "*.vylog") or memtx_dir
        script = workdir / "tarantool-drill.lua"
        script.write_text(TARANTOOL_LUA)
        argv = [binary, str(script), str(workdir), str(memtx_dir), str(wal_dir), str(vinyl_dir)]
        process = stack.enter_context(ScratchProcess(argv, workdir, "tarantool"))

        def running() -> bool:
            status = engine.status()
            return status.reachable and status.details.get("status") == "running"

        process.wait_until(running, start_timeout_s, f"tarantool on {memtx_dir}", cancelled)
        yield engine


@contextmanager
def _etcd(settings: dict[str, Any], base_dir: Path, workdir: Path, start_timeout_s: float,
          cancelled: threading.Event | None) -> Iterator[Engine]:
    binary = _binary("etcd", "etcd-server")
    _binary("etcdctl", "etcd-client")
    client_url, peer_url = f"unix://{ETCD_CLIENT_SOCKET}", f"unix://{ETCD_PEER_SOCKET}"
    name, token = "snapctl-drill", f"snapctl-drill-{os.getpid()}-{secrets.token_hex(4)}"
    data_dir = workdir / "etcd-data"
    # TLS, the client URL and peers belong to the live cluster: the scratch member is plain HTTP on
    # sockets in the private work directory, alone.
    for key in ("ca_file", "cert_file", "key_file", "endpoint"):
        settings.pop(key, None)
    with ExitStack() as stack:
        client_socket, through = _socket_path(workdir, ETCD_CLIENT_SOCKET, stack)
        settings.update(socket=client_socket, data_dir=str(data_dir),
                        probe_peers=False,
                        restore={"name": name, "initial_cluster": f"{name}={peer_url}",
                                 "initial_advertise_peer_urls": peer_url, "initial_cluster_token": token})
        engine = create_engine(settings, base_dir=base_dir)
        engine.reach_socket_through(through)
        engine.restore_prepare(data_dir)  # etcdctl snapshot restore of the newest saved snapshot
        argv = [binary, "--name", name, "--data-dir", str(data_dir),
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"{name}={peer_url}", "--initial-cluster-token", token]
        process = stack.enter_context(ScratchProcess(argv, workdir, "etcd"))

        def serving() -> bool:
            status = engine.status()
            return status.reachable and bool(status.raft) and status.raft[0].role == "leader"

        process.wait_until(serving, start_timeout_s, f"etcd from the saved snapshot in {settings['backup_dir']}",
                           cancelled)
        yield engine


class ScratchProcess:
    """A server in its own session with its output in a log file; killed (the whole group) on exit."""

    def __init__(self, argv: list[str], workdir: Path, name: str) -> None:
        self.argv, self.name = argv, name
        self.log_path = workdir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        # If this drill is killed outright, the next one stops the engine by its pid file, which the
        # child writes before it becomes the engine: written here, a kill just after the start
        # would leave the engine running, unrecorded.
        pid_file = self.log_path.parent / f"{self.name}{PID_SUFFIX}"
        argv = [sys.executable, "-c", RECORD_THEN_EXEC, str(pid_file), *self.argv]
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(argv, cwd=self.log_path.parent, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True, env=scratch_env())
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(timeout=30)

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str,
                   cancelled: threading.Event | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        cancelled = cancelled or threading.Event()
        while True:
            if cancelled.is_set():
                raise EngineError(f"{what}: the drill was {interrupted_by_signal()} while {self.name} was starting")
            if self.popen is not None and self.popen.poll() is not None:
                raise EngineError(f"{what}: {self.name} exited with code {self.popen.returncode}: {self.last_line()}",
                                  hint=f"its log: {self.log_path}")
            try:
                if ready():
                    return
            except EngineError:
                pass  # still starting
            if time.monotonic() >= deadline:
                raise EngineError(f"{what}: {self.name} did not come up within {timeout_s:g}s: {self.last_line()}",
                                  hint=f"raise drill.start_timeout_s if recovery is just slow; its log: {self.log_path}")
            cancelled.wait(0.1)

    def last_line(self) -> str:
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no log"
        return lines[-1].strip()[-300:] if lines else "no output"


def scratch_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name in SCRATCH_ENV or name.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    return env


def _private_dir(workdir: Path) -> None:
    """``workdir``, 0700 and this user's: the scratch engines' sockets in it are then reachable by
    this user alone (and root)."""
    make_dirs(workdir, 0o700)
    found = workdir.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid() or found.st_mode & 0o077:
        raise EngineError(f"the drill's engine directory {workdir} is not private (mode {stat.filemode(found.st_mode)}, "
                          f"owner uid {found.st_uid}): other local users could reach the scratch engine's socket",
                          hint="remove it; the drill makes it 0700 itself")


def _socket_path(directory: Path, name: str, stack: ExitStack) -> tuple[str, str]:
    """The path of the socket ``directory/name``, which errors and status name it by, and a path
    this process can connect to it by. Past AF_UNIX's 107 bytes (a deep drill.scratch_dir or
    TMPDIR), the directory is reached through a descriptor of it held open until ``stack``
    closes: /proc/self/fd/N is that directory, in this process only."""
    path = str(directory.absolute() / name)
    if len(os.fsencode(path)) <= UNIX_PATH_MAX:
        return path, path
    o_path = getattr(os, "O_PATH", None)
    if o_path is not None and Path("/proc/self/fd").is_dir():
        fd = os.open(directory, o_path | os.O_DIRECTORY)
        stack.callback(os.close, fd)
        return path, f"/proc/self/fd/{fd}/{name}"
    raise EngineError(f"the scratch engine's socket path {path} is longer than the {UNIX_PATH_MAX} bytes a unix "
                      "socket takes", hint="set drill.scratch_dir (or TMPDIR) to a shorter directory")


def _binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise EngineError(f"the drill needs {name} on this machine to start the restored engine",
                          hint=f"install it (Debian: apt-get install {package}), or give the node a restore.agent")
    return found


def _resolve(base_dir: Path, path: str) -> Path:
    p = Path(os.path.expanduser(path))
    return (p if p.is_absolute() else base_dir / p).resolve()


def _newest_parent(roots: list[Path], pattern: str) -> Path | None:
    """The directory of the newest file matching ``pattern`` under ``roots``."""
    found = [p for root in roots if root.is_dir() for p in root.rglob(pattern) if p.is_file()]
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name)).parent if found else None
