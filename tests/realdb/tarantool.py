"""A real Tarantool replica set on loopback for tests.

``TarantoolReplicaSet(root, size=3)``: instance 1 is the read-write master, the others are
read-only replicas, all replicating from each other (full mesh). The master creates a user with
``read,write,execute`` on universe (its password in a file, as the adapter reads it), a memtx
space ``items`` and a vinyl space ``vitems``. ``size=1`` gives one standalone instance, and
``work_dirs=[path]`` starts instances on existing data (a restored snapshot) instead of fresh dirs.
``start_hot_standby(i)`` adds a hot standby of instance ``i`` (same ``work_dir``, its own port).

Use it as a context manager: every process is killed on exit, whatever happened.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import LOOPBACK, free_port
from tests.realdb.procs import ServerProcess, require_binary, wait_until

USER = "snapctl"
PASSWORD = "tt-test-secret"
MEMTX_SPACE = "items"
VINYL_SPACE = "vitems"
START_TIMEOUT_S = 30.0

INSTANCE_LUA = r"""
local port, work_dir, peers, master, user, password_file = arg[1], arg[2], arg[3], arg[4] == '1', arg[5], arg[6]
local hot_standby = arg[7] == '1'
local f = assert(io.open(password_file)); local password = f:read('*l'); f:close()
local replication = {}
for p in string.gmatch(peers, '[^,]+') do
    table.insert(replication, user .. ':' .. password .. '@127.0.0.1:' .. p)
end
local cfg = {
    listen = '127.0.0.1:' .. port,
    work_dir = work_dir,
    replication = replication,
    read_only = not master,
    hot_standby = hot_standby,
    -- how long a restarted instance waits for its peers, loading (TT_CONNECT_TIMEOUT: longer)
    replication_connect_timeout = tonumber(os.getenv('TT_CONNECT_TIMEOUT')) or 5,
    replication_timeout = 0.3,  -- reconnect quickly while the others bootstrap
    memtx_memory = 32 * 1024 * 1024,
    vinyl_memory = 16 * 1024 * 1024,
    checkpoint_interval = 0,
}
-- No report to tarantool.io: tests reach loopback only. A build without the feedback daemon
-- refuses the option (snapctl/drill_engines.py, TARANTOOL_LUA).
if require('box.internal').feedback_daemon ~= nil then cfg.feedback_enabled = false end
box.cfg(cfg)
if master then
    box.once('snapctl-test-bootstrap', function()
        box.schema.user.create(user, {password = password})
        box.schema.user.grant(user, 'replication')
        box.schema.user.grant(user, 'read,write,execute', 'universe')
        box.schema.space.create('items'):create_index('pk')
        box.schema.space.create('vitems', {engine = 'vinyl'}):create_index('pk')
    end)
end
"""


@dataclass
class TarantoolInstance:
    name: str
    port: int
    work_dir: Path
    master: bool
    process: ServerProcess
    uuid: str | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"


@dataclass
class TarantoolReplicaSet:
    root: Path
    size: int = 3
    work_dirs: list[Path] | None = None  # existing data (e.g. a restored snapshot) instead of fresh dirs
    instances: list[TarantoolInstance] = field(default_factory=list)
    standbys: list[TarantoolInstance] = field(default_factory=list)
    next_id: int = 1

    def __post_init__(self) -> None:
        binary = require_binary("tarantool")
        self.root.mkdir(parents=True, exist_ok=True)
        self.password_file = self.root / "tarantool.password"
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)
        script = self.root / "instance.lua"
        script.write_text(INSTANCE_LUA)
        if self.work_dirs:
            self.size = len(self.work_dirs)
        ports = [free_port() for _ in range(self.size)]
        peers = ",".join(map(str, ports)) if self.size > 1 else ""
        for index, port in enumerate(ports, start=1):
            name = f"tt{index}"
            work_dir = self.work_dirs[index - 1] if self.work_dirs else self.root / name
            work_dir.mkdir(exist_ok=True)
            argv = [binary, str(script), str(port), str(work_dir), peers, "1" if index == 1 else "0", USER,
                    str(self.password_file), "0"]
            proc = ServerProcess(argv, cwd=self.root, log_path=self.root / f"{name}.log")
            self.instances.append(TarantoolInstance(name, port, work_dir, index == 1, proc))

    # ---- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> TarantoolReplicaSet:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        for inst in self.instances:
            inst.process.start()
        for inst in self.instances:
            self.wait_ready(inst)
        self.wait_mesh()

    def close(self) -> None:
        for inst in [*self.standbys, *self.instances]:
            inst.process.kill()

    def start_hot_standby(self, index: int = 0) -> TarantoolInstance:
        """A hot standby of instance ``index``: its box.cfg with ``hot_standby = true`` on the same
        work_dir, but its own listen port, so that the two can be told apart. Returns once the
        standby follows the primary's WAL; it opens its port only when it takes over."""
        primary = self.instances[index]
        name = f"{primary.name}-standby"
        argv = [*primary.process.argv[:-1], "1"]
        argv[2] = str(free_port())
        log_path = self.root / f"{name}.log"
        proc = ServerProcess(argv, cwd=self.root, log_path=log_path)
        standby = TarantoolInstance(name, int(argv[2]), primary.work_dir, primary.master, proc)
        self.standbys.append(standby)
        proc.start()
        wait_until(lambda: "Entering hot standby mode" in log_path.read_text(errors="replace"),
                   timeout_s=START_TIMEOUT_S, what=f"{name} to enter hot standby", processes=[proc])
        return standby

    def kill(self, index: int) -> TarantoolInstance:
        inst = self.instances[index]
        inst.process.kill()
        return inst

    def restart(self, index: int) -> TarantoolInstance:
        inst = self.instances[index]
        inst.process.kill()
        inst.process.start()
        self.wait_ready(inst)
        self.wait_mesh()
        return inst

    def wait_mesh(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every running instance follows every other running instance."""
        running = [i for i in self.instances if i.process.alive()]
        alive_uuids = {i.uuid for i in running}

        lua = ("local r = {} for _, e in pairs(box.info.replication) do "
               "r[#r + 1] = {uuid = e.uuid, status = e.upstream and e.upstream.status} end return r")

        def connected() -> bool:
            for inst in running:
                for entry in self.eval(lua, inst=inst)[0]:
                    peer = entry["uuid"]
                    if peer in alive_uuids and peer != inst.uuid and entry.get("status") != "follow":
                        return False
            return True

        if len(running) > 1:
            wait_until(connected, timeout_s=timeout_s, what="tarantool replication mesh",
                       processes=[i.process for i in running])

    def wait_ready(self, inst: TarantoolInstance, timeout_s: float = START_TIMEOUT_S) -> None:
        def ready() -> bool:
            conn = self.connect(inst)
            try:
                status, uuid, has_spaces = conn.eval(
                    "return box.info.status, box.info.uuid, box.space.items ~= nil and box.space.vitems ~= nil"
                ).data
            finally:
                conn.close()
            inst.uuid = uuid
            return status == "running" and has_spaces

        wait_until(ready, timeout_s=timeout_s, what=f"tarantool {inst.name}", processes=[inst.process])

    # ---- clients -----------------------------------------------------------------------

    @property
    def master(self) -> TarantoolInstance:
        return self.instances[0]

    def connect(self, inst: TarantoolInstance | int | None = None, timeout_s: float = 5.0) -> Any:
        import tarantool

        inst = self._pick(inst)
        return tarantool.Connection(
            LOOPBACK, inst.port, user=USER, password=PASSWORD, socket_timeout=timeout_s,
            connection_timeout=timeout_s, reconnect_max_attempts=0, fetch_schema=False,
        )

    def eval(self, lua: str, *args: Any, inst: TarantoolInstance | int | None = None) -> list[Any]:
        conn = self.connect(inst)
        try:
            return conn.eval(lua, list(args)).data
        finally:
            conn.close()

    @contextlib.contextmanager
    def evaluating(self, lua: str, *args: Any) -> Iterator[list[Any]]:
        """``lua`` evaluated meanwhile on a connection of its own, in a thread: a prepare a test cuts
        across (a killed agent's, one whose answer never came). Its answer's first value is in the
        list once the block has ended; the call is waited for (30 s at most) however it ends."""
        answers: list[Any] = []
        conn = self.connect(timeout_s=60)
        call = threading.Thread(target=lambda: answers.append(conn.eval(lua, list(args)).data[0]))
        call.start()
        try:
            yield answers
        finally:
            call.join(timeout=30)
            conn.close()

    def write(self, n: int) -> None:
        """Insert ``n`` new tuples into both spaces on the master."""
        first, self.next_id = self.next_id, self.next_id + n
        self.eval(
            "local first, n = ... for i = first, first + n - 1 do "
            "box.space.items:replace{i, 'memtx ' .. i} box.space.vitems:replace{i, 'vinyl ' .. i} end",
            first, n,
        )

    def wait_replicated(self, timeout_s: float = 10.0) -> None:
        """Until every running replica has the master's vclock."""
        target = self.eval("return box.info.lsn")[0]
        master_id = self.eval("return box.info.id")[0]
        for inst in self.instances[1:]:
            if inst.process.alive():
                def caught_up(inst: TarantoolInstance = inst) -> bool:
                    return self.eval("return box.info.vclock[...] or 0", master_id, inst=inst)[0] >= target

                wait_until(caught_up, timeout_s=timeout_s, what=f"replication to {inst.name}")

    def engine_settings(self, inst: TarantoolInstance | int | None = None, **overrides: Any) -> dict[str, Any]:
        """The ``engine:`` block an agent beside this instance would carry."""
        inst = self._pick(inst)
        settings: dict[str, Any] = {
            "type": "tarantool", "host": LOOPBACK, "port": inst.port, "user": USER,
            "password_file": str(self.password_file), "work_dir": str(inst.work_dir), "timeout_s": 5.0,
            "snapshot_timeout_s": 30.0,
        }
        settings.update(overrides)
        return settings

    def _pick(self, inst: TarantoolInstance | int | None) -> TarantoolInstance:
        if inst is None:
            return self.master
        return self.instances[inst] if isinstance(inst, int) else inst
