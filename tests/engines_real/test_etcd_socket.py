"""The etcd adapter over a unix socket (``socket:``), against a real member listening on one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from node_agent.engines.base import create_engine, validate_engine_settings
from snapctl.errors import BadInputError
from tests.conftest import LOOPBACK, free_port
from tests.realdb.etcd import b64
from tests.realdb.procs import ServerProcess, require_binary, wait_until

# etcd makes the socket of unix://NAME:PORT as the file NAME:PORT in its working directory.
CLIENT, PEER = "unix://etcd-client:2379", "unix://etcd-peer:2380"


@pytest.fixture
def on_a_socket(tmp_path: Path) -> Iterator[tuple[Path, dict]]:
    """A single member serving clients and peers on unix sockets only, and the engine block that reaches it."""
    binary = require_binary("etcd")
    process = ServerProcess([binary, "--name", "s1", "--data-dir", "data", "--listen-client-urls", CLIENT,
                             "--advertise-client-urls", CLIENT, "--listen-peer-urls", PEER,
                             "--initial-advertise-peer-urls", PEER, "--initial-cluster", f"s1={PEER}"],
                            cwd=tmp_path, log_path=tmp_path / "etcd.log")
    process.start()
    sock = tmp_path / "etcd-client:2379"
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)))
    try:
        def put() -> bool:
            for i in range(5):
                client.post("http://localhost/v3/kv/put", json={"key": b64(f"k{i}"), "value": b64("v")}).raise_for_status()
            return True

        wait_until(put, timeout_s=30, what="etcd on a socket", processes=[process])
        yield sock, {"type": "etcd", "socket": str(sock), "backup_dir": str(tmp_path / "backups"),
                     "probe_peers": True, "timeout_s": 5.0}
    finally:
        client.close()
        process.kill()


@pytest.mark.slow
def test_the_adapter_reaches_a_member_through_its_socket(on_a_socket, tmp_path):
    sock, settings = on_a_socket
    engine = create_engine(settings, base_dir=tmp_path)
    try:
        status = engine.status()
        assert status.reachable, status.error
        assert status.details["endpoint"] == f"unix:{sock}"
        assert status.raft[0].role == "leader" and status.raft[0].replication == []
        state = engine.prepare("run-socket")
        engine.complete("run-socket")
        assert state.facts.tables["keys"].rows == 5
        assert Path(state.files[0]).stat().st_size > 0, "the snapshot streamed through the socket"
        assert engine.verify().tables["keys"].rows == 5
    finally:
        engine.close()


@pytest.mark.slow
def test_other_members_are_not_probed_through_the_socket(tmp_path):
    """Every request through the socket reaches this member: a peer's status asked that way would be
    this member's own, shown as the peer's progress."""
    binary = require_binary("etcd")
    other = f"http://{LOOPBACK}:{free_port()}"
    cluster = f"a={PEER},b=unix://etcd-peer-b:2380"
    members = [ServerProcess([binary, "--name", name, "--data-dir", f"data-{name}", "--listen-client-urls", client,
                              "--advertise-client-urls", client, "--listen-peer-urls", peer,
                              "--initial-advertise-peer-urls", peer, "--initial-cluster", cluster],
                             cwd=tmp_path, log_path=tmp_path / f"etcd-{name}.log")
               for name, client, peer in [("a", CLIENT, PEER), ("b", other, "unix://etcd-peer-b:2380")]]
    engine = create_engine({"type": "etcd", "socket": "etcd-client:2379", "backup_dir": "backups",
                            "probe_peers": True, "timeout_s": 5.0}, base_dir=tmp_path)
    try:
        for member in members:
            member.start()

        def two_with_a_leader() -> bool:
            status = engine.status()
            return status.reachable and len(status.raft[0].peers) == 1 and status.raft[0].leader is not None

        wait_until(two_with_a_leader, timeout_s=30, what="a two-member cluster", processes=members)
        assert engine.status().raft[0].replication == []
    finally:
        engine.close()
        for member in members:
            member.kill()


@pytest.mark.parametrize("through", [None, "elsewhere"])
def test_a_socket_nothing_listens_on_is_named_by_its_own_path_in_the_error(tmp_path, through):
    """Also when the drill reaches it through another name (/proc/self/fd/N/, for a path too long
    for AF_UNIX): that name means nothing in a report read later, or outside the drill's process."""
    engine = create_engine({"type": "etcd", "socket": "gone:2379", "backup_dir": "backups", "timeout_s": 2.0},
                           base_dir=tmp_path)
    if through:
        engine.reach_socket_through(str(tmp_path / through / "gone:2379"))
    try:
        status = engine.status()
    finally:
        engine.close()

    assert not status.reachable
    assert status.error.startswith(f"etcd at unix:{tmp_path / 'gone:2379'}: /v3/maintenance/status failed: ")
    assert "elsewhere" not in status.error


@pytest.mark.parametrize(("extra", "refusal"), [
    ({"endpoint": "http://127.0.0.1:22379"}, "give socket or endpoint, not both"),
    ({"ca_file": "ca.pem"}, "a socket is plain HTTP: ca_file would not be used"),
])
def test_a_socket_with_an_endpoint_or_tls_is_refused(tmp_path, extra, refusal):
    with pytest.raises(BadInputError) as refused:
        validate_engine_settings({"type": "etcd", "backup_dir": "backups", "socket": "etcd:2379", **extra})

    assert refusal in refused.value.message and "\n" not in refused.value.message
