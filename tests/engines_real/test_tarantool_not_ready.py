"""A real Tarantool (Debian's 2.6.0) that is up but not ready: loading its data, or a hot standby.

Neither answers a request: a loading instance refuses every one with error 116 once it listens,
and before that (local recovery) and as a hot standby it does not listen at all. The adapter
must say which it is, not "connection refused (is tarantool running?)".
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from node_agent.engines.base import create_engine
from node_agent.engines.tarantool import TarantoolEngine
from snapctl.errors import EngineError
from tests.conftest import LOOPBACK, free_port
from tests.realdb.procs import wait_until
from tests.realdb.tarantool import TarantoolInstance, TarantoolReplicaSet

pytestmark = pytest.mark.slow

LOADING_HINT = ("(hint: wait for recovery to finish; check the instance's log (box.cfg.log) for its progress or "
                "what it waits for)")


def engine_for(rs: TarantoolReplicaSet, inst: TarantoolInstance, tmp_path: Path) -> TarantoolEngine:
    return create_engine(rs.engine_settings(inst, timeout_s=2.0), base_dir=tmp_path)


def listening(port: int) -> bool:
    """Whether a socket listens on the port, read from /proc: a connection would be a request too."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(wanted) and fields[3] == "0A":
                return True
    return False


def test_an_instance_waiting_for_its_peers_is_said_to_be_loading_with_a_hint(tmp_path):
    with TarantoolReplicaSet(tmp_path / "tt", size=1) as rs:
        inst = rs.master
        inst.process.kill()
        # Restarted with a peer that is not there: box.cfg{} waits for it, listening and loading.
        inst.process.argv[4] = f"{inst.port},{free_port()}"
        inst.process.env = {"TT_CONNECT_TIMEOUT": "300"}
        inst.process.start()
        engine = engine_for(rs, inst, tmp_path)
        wait_until(lambda: listening(inst.port), timeout_s=30, what="tarantool to listen", processes=[inst.process])

        status = engine.status()
        prefix = f"tarantool at {LOOPBACK}:{inst.port} is still loading its data"
        assert not status.reachable
        assert status.error == (f"{prefix} (local recovery, or bootstrap waiting for its replication peers): it "
                                f"answers no request until it finishes {LOADING_HINT}")
        with pytest.raises(EngineError, match="is still loading its data") as caught:
            engine.prepare("run-loading")
        assert caught.value.hint and caught.value.hint.startswith("wait for recovery to finish")


def test_an_instance_in_local_recovery_is_said_to_be_loading(tmp_path):
    with TarantoolReplicaSet(tmp_path / "tt", size=1) as rs:
        # Enough rows that replaying the xlog takes a while (0.2 s here), to look at it meanwhile.
        rs.eval("box.begin() for i = 1, 400000 do box.space.items:replace{i, 'row'} "
                "if i % 10000 == 0 then box.commit() box.begin() end end box.commit()")
        inst = rs.master
        engine = engine_for(rs, inst, tmp_path)
        where = f"tarantool at {LOOPBACK}:{inst.port}"
        refused = f"{where}: connecting failed: connection refused (hint: is tarantool running and listening there?)"
        answering = (f"{where} is still loading its data (local recovery, or bootstrap waiting for its replication "
                     f"peers): it answers no request until it finishes {LOADING_HINT}")
        said: set[str | None] = set()
        for _attempt in range(5):
            inst.process.kill()
            inst.process.start()
            # Before the WAL lock: refused; then holding it, not listening yet; then listening, refusing requests.
            not_listening = (f"{where} is still loading its data: tarantool pid {inst.process.pid} holds the WAL "
                             f"lock of {inst.work_dir.resolve()} and does not listen yet {LOADING_HINT}")
            said.clear()
            while not (status := engine.status()).reachable:
                said.add(status.error)
            if {not_listening, answering} <= said:
                break
        assert said - {refused} == {not_listening, answering}, said


def test_a_hot_standby_is_said_to_be_one_and_what_that_means_for_a_backup(tmp_path):
    with TarantoolReplicaSet(tmp_path / "tt", size=1) as rs:
        rs.write(5)
        primary = rs.master
        standby = rs.start_hot_standby(0)
        engine = engine_for(rs, standby, tmp_path)

        status = engine.status()
        work_dir = primary.work_dir.resolve()
        assert not status.reachable
        assert status.error == (
            f"tarantool at {LOOPBACK}:{standby.port} is a hot standby (tarantool pid {standby.process.pid}, "
            f"box.cfg.hot_standby): it waits for the WAL lock of {work_dir}, held by its primary (pid "
            f"{primary.process.pid}), and answers no request until the primary stops; a backup cannot pin a "
            f"checkpoint through it, and a disk snapshot of {work_dir} holds the primary's files (hint: back up "
            "through the primary: point this engine at the address the primary listens on; give the standby the same "
            "box.cfg.listen, so that it takes that address over on failover)")
        with pytest.raises(EngineError, match="is a hot standby"):
            engine.prepare("run-standby")

        # The primary gone, the standby takes the lock, opens its port and is the instance: a backup works.
        rs.kill(0)
        wait_until(lambda: engine.status().reachable, timeout_s=30, what="the standby to take over",
                   processes=[standby.process])
        state = engine.prepare("run-after-takeover")
        try:
            assert state.facts.tables["items"].rows == 5
        finally:
            engine.complete("run-after-takeover")


def test_a_refused_connection_with_nothing_on_the_data_dir_is_still_connection_refused(tmp_path):
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        engine = create_engine({"type": "tarantool", "host": LOOPBACK, "port": port, "work_dir": str(tmp_path),
                                "timeout_s": 2.0}, base_dir=tmp_path)
        status = engine.status()
    assert status.error and "connection refused (hint: is tarantool running and listening there?)" in status.error


def test_a_port_where_nothing_listens_beside_a_running_instance_on_the_same_data_says_so(tmp_path):
    with TarantoolReplicaSet(tmp_path / "tt", size=1) as rs:
        primary = rs.master
        wrong = free_port()
        engine = create_engine(rs.engine_settings(primary, port=wrong, timeout_s=2.0), base_dir=tmp_path)
        status = engine.status()
    assert status.error == (
        f"tarantool at {LOOPBACK}:{wrong} refuses connections, yet tarantool pid {primary.process.pid} (tarantool "
        f"instance.lua <running>) holds the WAL lock of {primary.work_dir.resolve()}: that instance listens "
        "elsewhere, or the one configured here is a hot standby waiting for it (hint: point this engine at the "
        "address that instance listens on (its box.cfg.listen))")
