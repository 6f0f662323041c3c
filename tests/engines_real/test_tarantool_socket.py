"""The Tarantool adapter over a unix socket (``socket:``), against a real instance listening on one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.engines.base import create_engine, validate_engine_settings
from snapctl.errors import BadInputError
from tests.realdb.procs import ServerProcess, require_binary, wait_until

PASSWORD = "tt-socket-secret"
SOCKET_LUA = """
local listen, password = arg[1], arg[2]
local cfg = {listen = listen, work_dir = '.', checkpoint_interval = 0}
-- A build without the feedback daemon refuses the option (snapctl/drill_engines.py, TARANTOOL_LUA).
if require('box.internal').feedback_daemon ~= nil then cfg.feedback_enabled = false end
box.cfg(cfg)
box.once('socket-test', function()
    box.schema.user.create('snapctl', {password = password})
    box.schema.user.grant('snapctl', 'read,write,execute', 'universe')
    box.schema.space.create('items'):create_index('pk')
    for i = 1, 7 do box.space.items:replace{i} end
end)
"""


@pytest.fixture
def on_a_socket(tmp_path: Path) -> Iterator[tuple[Path, dict]]:
    """A standalone instance listening on ``tt.sock`` only, and the engine block that reaches it."""
    binary = require_binary("tarantool")
    (tmp_path / "instance.lua").write_text(SOCKET_LUA)
    (tmp_path / "password").write_text(PASSWORD + "\n")
    process = ServerProcess([binary, "instance.lua", "unix/:./tt.sock", PASSWORD], cwd=tmp_path,
                            log_path=tmp_path / "tt.log")
    process.start()
    try:
        wait_until(lambda: (tmp_path / "tt.sock").exists(), timeout_s=30, what="tarantool on a socket",
                   processes=[process])
        yield tmp_path / "tt.sock", {"type": "tarantool", "socket": str(tmp_path / "tt.sock"), "user": "snapctl",
                                     "password_file": "password", "work_dir": str(tmp_path), "timeout_s": 5.0}
    finally:
        process.kill()


@pytest.mark.slow
def test_the_adapter_reaches_an_instance_through_its_socket(on_a_socket, tmp_path):
    sock, settings = on_a_socket
    engine = create_engine(settings, base_dir=tmp_path)

    def answering() -> bool:
        return engine.status().reachable

    wait_until(answering, timeout_s=30, what="the instance answering on its socket")
    status = engine.status()
    assert status.details["address"] == f"unix/:{sock}" and status.details["status"] == "running"
    state = engine.prepare("run-socket")
    try:
        assert state.facts.tables["items"].rows == 7
        assert engine.status().held
    finally:
        engine.complete("run-socket")
    assert engine.verify().tables["items"].rows == 7


def test_a_socket_nothing_listens_on_is_named_in_the_error(tmp_path):
    engine = create_engine({"type": "tarantool", "socket": "gone.sock", "work_dir": str(tmp_path), "timeout_s": 2.0},
                           base_dir=tmp_path)

    status = engine.status()

    assert not status.reachable
    assert status.error == (f"tarantool at unix/:{tmp_path / 'gone.sock'}: connecting failed: no such file or "
                            "directory (hint: is tarantool running and listening there?)")


def test_a_socket_reached_through_another_name_is_named_by_its_own_path(tmp_path):
    """The drill reaches a socket whose path is too long for AF_UNIX through /proc/self/fd/N/: a
    name that means nothing in a report read later, or outside the drill's process."""
    engine = create_engine({"type": "tarantool", "socket": "gone.sock", "work_dir": str(tmp_path), "timeout_s": 2.0},
                           base_dir=tmp_path)
    engine.reach_socket_through(str(tmp_path / "elsewhere" / "gone.sock"))

    status = engine.status()

    assert not status.reachable
    assert status.error.startswith(f"tarantool at unix/:{tmp_path / 'gone.sock'}: connecting failed: ")
    assert "elsewhere" not in status.error


@pytest.mark.parametrize("address", [{"port": 3302}, {"host": "10.0.0.5"}])
def test_a_socket_with_a_host_or_port_is_refused(tmp_path, address):
    with pytest.raises(BadInputError) as refused:
        validate_engine_settings({"type": "tarantool", "work_dir": str(tmp_path), "socket": "tt.sock", **address})

    assert "give socket or host/port, not both" in refused.value.message
    assert "\n" not in refused.value.message
