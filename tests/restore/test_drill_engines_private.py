"""A drill's scratch engines serve restored production data: while they run, only the user running
the drill may reach them. Real Tarantool and etcd, started by the drill's own ``scratch_engine`` on
restored files; what listens is read from /proc, and another user (``nobody``) tries to connect.
Nor do they inherit snapctl's secrets (the agent token, cloud credentials): /proc/PID/environ."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.engines.base import create_engine
from snapctl.drill_engines import TARANTOOL_LUA, scratch_engine
from snapctl.errors import EngineError
from tests.realdb.etcd import EtcdCluster
from tests.realdb.procs import require_binary
from tests.realdb.tarantool import TarantoolReplicaSet

pytestmark = pytest.mark.slow

NOBODY = 65534
# A child run as another user: connecting to the socket ``name`` in ``directory`` must be refused,
# and by the directory: that is what the drill makes private (the socket file's own mode is
# tarantool's and etcd's, from the umask).
_CONNECT_AS_ANOTHER_USER = """
import os, socket, sys
directory, name = sys.argv[1:3]
try:
    os.chdir(directory)
except PermissionError:
    print("refused by the directory")
    sys.exit()
try:
    socket.socket(socket.AF_UNIX).connect(name)
except PermissionError:
    print("refused by the socket file")
else:
    print("connected")
"""


@pytest.fixture(params=["short", "long"])
def scratch(request) -> Iterator[Path]:
    """A drill's scratch directory whose sockets' paths fit AF_UNIX (as in $TMPDIR), or do not
    (a deep drill.scratch_dir): both must leave the engine reachable by the drill alone."""
    # Not under tmp_path: pytest's directories are 0700, and another user must be refused by the
    # engine directory itself, not before it (see open_the_way_to).
    top = Path(tempfile.mkdtemp(prefix="sd-"))
    try:
        if request.param == "long":
            deep = top / ("deep-" * 16) / "scratch"
            assert too_long(deep / ".engines" / "t1" / "tarantool.sock")
            yield deep
        else:
            assert not too_long(top / ".engines" / "e1" / "etcd-client:2379")
            yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def tcp_sockets(pid: int) -> list[str]:
    """The TCP sockets (any state, IPv4 or IPv6) the process holds, as /proc/net/tcp lines."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
        except OSError:
            continue
        if match:
            inodes.add(match.group(1))
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            if line.split()[9] in inodes:
                found.append(line.strip())
    return found


def too_long(path: Path) -> bool:
    """A socket path AF_UNIX does not take (108 bytes with its NUL): reached through /proc/self/fd."""
    return len(os.fsencode(str(path))) > 107


# Set in snapctl's environment by the tests below: the scratch engine must not inherit them.
SECRETS = {"SNAPCTL_AGENT_TOKEN": "agent-token-of-the-drill", "AWS_SECRET_ACCESS_KEY": "aws-secret-of-the-drill"}


def assert_no_secrets(environ: dict[str, str], name: str) -> None:
    assert "PATH" in environ, environ  # the environment was read: a server needs its PATH
    assert not set(SECRETS) & set(environ), f"the scratch {name} has snapctl's secrets"


def proc_environ(pid: int) -> dict[str, str]:
    found = (v.decode().split("=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in v)
    return dict(found)


def assert_only_this_user_reaches(workdir: Path, name: str, socket_file: str) -> None:
    pid = json.loads((workdir / f"{name}.pid.json").read_text())["pid"]
    assert tcp_sockets(pid) == [], f"the scratch {name} holds a TCP socket"
    assert (workdir / socket_file).is_socket()
    assert workdir.stat().st_mode & 0o777 == 0o700
    # Only root can run a child as another user, and that user needs a python it may run (not one
    # under root's home, as pyenv's and this venv's are).
    python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or python is None:
        return
    open_the_way_to(workdir)
    tried = subprocess.run([python, "-c", _CONNECT_AS_ANOTHER_USER, str(workdir), socket_file],
                           user=NOBODY, group=NOBODY, capture_output=True, text=True, timeout=30, check=False)
    assert tried.stdout.strip() == "refused by the directory", tried.stdout + tried.stderr


def open_the_way_to(workdir: Path) -> None:
    """Every directory above ``workdir`` traversable by others (0755), up to the system's temporary
    directory, so that only the engine directory's own mode can refuse another user: mkdtemp's
    directory and the drill's .engines are 0700, and would refuse them first."""
    top = Path(tempfile.gettempdir())
    assert workdir.is_relative_to(top) and top.stat().st_mode & 0o001, f"{workdir}: not under a temp dir all may enter"
    for parent in workdir.parents:
        if parent == top:
            break
        parent.chmod(0o755)


def test_a_scratch_tarantool_listens_on_no_tcp_port_and_refuses_other_users(tmp_path, scratch, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    with TarantoolReplicaSet(tmp_path / "tt", size=1) as rs:
        rs.write(20)
        rs.eval("box.snapshot()")
        settings = rs.engine_settings(0)
    workdir = scratch / ".engines" / "t1"

    with scratch_engine(settings, base_dir=tmp_path, workdir=workdir, start_timeout_s=60) as engine:
        assert engine.verify().tables["items"].rows == 20
        # Reached through /proc/self/fd/N/ when too long, but named by the path an operator can find.
        assert engine.address == f"unix/:{workdir.absolute() / 'tarantool.sock'}"
        assert engine.status().details["address"] == engine.address
        assert_only_this_user_reaches(workdir, "tarantool", "tarantool.sock")
        with engine._session() as conn:  # nor does it report to tarantool.io, as a default instance would hourly
            assert conn.eval("return box.cfg.feedback_enabled").data == [False]
            # Asked of tarantool itself: its process title rewrites what /proc/PID/environ shows.
            assert_no_secrets(conn.eval("return os.environ()").data[0], "tarantool")


# The drill's script run by the real tarantool, as a build with or without the feedback daemon
# would see it before box.cfg (load_cfg's own test: box.internal.feedback_daemon), with box.cfg
# only printing the options it was given.
_AS_BUILT = """
local script, daemon = arg[1], arg[2] == 'with'
if not daemon then
    local without = {}
    for k, v in pairs(require('box.internal')) do
        if k ~= 'feedback_daemon' then without[k] = v end
    end
    package.loaded['box.internal'] = without
end
rawset(box, 'cfg', function(cfg)
    local keys = {}
    for k in pairs(cfg) do table.insert(keys, k) end
    table.sort(keys)
    print(table.concat(keys, ' '))
    os.exit(0)
end)
arg = {[0] = script, 'work', 'memtx', 'wal', 'vinyl'}
dofile(script)
"""


@pytest.mark.parametrize("daemon", ["with", "without"])
def test_the_scratch_tarantool_is_given_feedback_enabled_only_where_its_build_has_the_daemon(tmp_path, daemon):
    """Built with ENABLE_FEEDBACK_DAEMON=OFF, tarantool's box.cfg refuses feedback_* options: given
    there, the option would fail every tarantool drill."""
    (tmp_path / "drill.lua").write_text(TARANTOOL_LUA)
    (tmp_path / "as_built.lua").write_text(_AS_BUILT)

    ran = subprocess.run([require_binary("tarantool"), "as_built.lua", "drill.lua", daemon], cwd=tmp_path,
                         capture_output=True, text=True, timeout=30, check=False)

    options = ran.stdout.split()
    assert "read_only" in options, ran.stdout + ran.stderr
    assert ("feedback_enabled" in options) == (daemon == "with")


def test_a_scratch_etcd_listens_on_no_tcp_port_and_refuses_other_users(tmp_path, scratch, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    with EtcdCluster(tmp_path / "etcd", size=1) as etcd:
        etcd.write(20)
        settings = etcd.engine_settings(0)
        source = create_engine(settings, base_dir=tmp_path)
        try:
            source.prepare("run-1")  # the saved snapshot the drill restores from
            source.complete("run-1")
        finally:
            source.close()
    workdir = scratch / ".engines" / "e1"

    with scratch_engine(settings, base_dir=tmp_path, workdir=workdir, start_timeout_s=60) as engine:
        assert engine.verify().tables["keys"].rows == 20
        assert engine.endpoint == f"unix:{workdir.absolute() / 'etcd-client:2379'}"
        assert_only_this_user_reaches(workdir, "etcd", "etcd-client:2379")
        assert_no_secrets(proc_environ(json.loads((workdir / "etcd.pid.json").read_text())["pid"]), "etcd")
        assert (workdir / "etcd-peer:2380").is_socket(), "the peer URL is a private socket too"


def test_an_engine_directory_others_may_enter_is_refused(tmp_path):
    workdir = tmp_path / "scratch" / ".engines" / "t1"
    workdir.mkdir(parents=True)
    workdir.chmod(0o755)

    with pytest.raises(EngineError, match=r"engine directory .* is not private \(mode drwxr-xr-x"):
        with scratch_engine({"type": "tarantool", "work_dir": str(tmp_path)}, base_dir=tmp_path, workdir=workdir,
                            start_timeout_s=1):
            pass


def test_the_engine_directory_is_made_private_under_umask_0(tmp_path):
    (tmp_path / "app.db").touch()
    previous = os.umask(0)  # no help from the umask: the mode is the drill's own
    try:
        with scratch_engine({"type": "sqlite", "path": str(tmp_path / "app.db")}, base_dir=tmp_path,
                            workdir=tmp_path / "scratch" / ".engines" / "n1", start_timeout_s=1):
            pass
    finally:
        os.umask(previous)

    assert (tmp_path / "scratch" / ".engines" / "n1").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "scratch" / ".engines").stat().st_mode & 0o777 == 0o700
