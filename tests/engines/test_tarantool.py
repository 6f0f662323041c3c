"""The Tarantool adapter against a listener that is not a working Tarantool (no real server needed)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.engines.base import create_engine
from snapctl.errors import EngineError

pytest.importorskip("tarantool")


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port whose kernel completes the TCP handshake and nobody ever greets: a Tarantool stopped
    with SIGSTOP, or with its event loop stuck, looks exactly so."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_an_instance_that_never_greets_fails_prepare_within_timeout_s_not_snapshot_timeout_s(silent_listener,
                                                                                              tmp_path: Path):
    engine = create_engine({"type": "tarantool", "port": silent_listener, "work_dir": str(tmp_path),
                            "timeout_s": 0.5, "snapshot_timeout_s": 30}, base_dir=tmp_path)
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"no answer to connecting within 0.5s"):
        engine.prepare("run-stopped")
    assert time.monotonic() - started < 5, "connecting waited for snapshot_timeout_s"
    started = time.monotonic()
    assert not engine.status().reachable
    assert time.monotonic() - started < 5


def test_with_election_mode_off_the_writable_instance_leads_though_box_info_election_says_follower():
    # box.info on 2.6.1+ with election_mode=off, the default: raft reports every instance as a
    # follower with no leader (0), the writable master included.
    from node_agent.engines.tarantool_info import raft_group

    info = {
        "uuid": "u1", "id": 1, "ro": False, "status": "running", "group": "rs", "vclock": {1: 10}, "signature": 10,
        "election": {"state": "follower", "term": 1, "vote": 0, "leader": 0}, "election_mode": "off",
        "replication": [{"id": 1, "uuid": "u1", "lsn": 10},
                        {"id": 2, "uuid": "u2", "lsn": 0, "upstream": {"status": "follow", "lag": 0.01},
                         "downstream": {"status": "follow", "vclock": {1: 10}}}],
    }
    master = raft_group(info)
    assert (master.role, master.leader) == ("leader", "u1")
    replica = raft_group({**info, "uuid": "u2", "id": 2, "ro": True})
    assert (replica.role, replica.leader) == ("follower", None)
    assert master.extra["election_mode"] == "off"


def test_a_peer_whose_link_is_down_has_no_lag_in_seconds():
    # What a master showed 3 s after a replica was stopped with SIGSTOP: upstream.lag keeps the
    # value of the last row received, long after the link went down.
    from node_agent.engines.tarantool_info import raft_group

    info = {
        "uuid": "u1", "id": 1, "ro": False, "status": "running", "group": "rs", "vclock": {1: 113}, "signature": 113,
        "replication": [
            {"id": 1, "uuid": "u1", "lsn": 113},
            {"id": 2, "uuid": "u2", "lsn": 0, "upstream": {"status": "follow", "lag": 0.0001, "idle": 0.1},
             "downstream": {"status": "follow", "vclock": {1: 113}}},
            {"id": 3, "uuid": "u3", "lsn": 0,
             "upstream": {"status": "connect", "lag": 6.4e-05, "idle": 3.1, "message": "timed out"},
             "downstream": {"status": "stopped", "message": "timed out"}},
        ],
    }
    live, stopped = raft_group(info).replication
    assert live.lag_seconds == 0.0001
    assert stopped.state == "connect/stopped" and stopped.lag_seconds is None and stopped.error


def test_box_info_status_loading_comes_with_the_hint_to_wait(tmp_path: Path):
    # 2.6.0 refuses every request while loading (error 116, tests/engines_real/test_tarantool_not_ready.py);
    # a server that answered box.info while loading would be said the same way.
    engine = create_engine({"type": "tarantool", "port": 3301, "work_dir": str(tmp_path)}, base_dir=tmp_path)
    assert engine._not_running("loading") == (
        "tarantool at 127.0.0.1:3301 is still loading its data (recovery or bootstrap): read-only until it finishes "
        "(hint: wait for recovery to finish; check the instance's log (box.cfg.log) for its progress or what it "
        "waits for)")
