"""What snapctl reads of an agent's answer is bounded: a rogue or broken service at an agent's
address that answers with an endless body (announced as 100 GB, chunked, or delimited by a close
that never comes) is a node error naming the node and the limit, and never grows snapctl further.
Real sockets on loopback and the real CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from snapctl.agent_client import open_agents
from snapctl.agent_transport import MAX_BODY, _parse_response
from snapctl.config import load_inventory
from snapctl.errors import AgentError, ExitCode, NotAnAgent
from tests.conftest import LOOPBACK

_BLOB = b"\0" * (1 << 20)
# What the rogue sends of its body, past the limit, before it goes quiet with the connection open:
# a client without a limit waits for the rest until its timeout instead of failing.
_SENT = MAX_BODY + 8 * len(_BLOB)

HEADS = {
    "announced": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n",
    "chunked": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    "unannounced": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
}


@contextmanager
def rogue_agent(kind: str) -> Iterator[str]:
    """An address answering every request with an endless body of ``kind``; yields its URL."""
    server = socket.create_server((LOOPBACK, 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            body = 0
            try:
                conn.recv(65536)
                conn.sendall(HEADS[kind])
                while body < _SENT and not stop.is_set():
                    chunk = b"%x\r\n%s\r\n" % (len(_BLOB), _BLOB) if kind == "chunked" else _BLOB
                    conn.sendall(chunk)
                    body += len(_BLOB)
            except OSError:
                pass
            stop.wait(60)  # quiet, the connection open: the rest "is coming"

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://{LOOPBACK}:{server.getsockname()[1]}"
    finally:
        stop.set()
        server.close()


def write_inventory(tmp_path: Path, url: str) -> Path:
    (tmp_path / "cluster.token").write_text("answer-limits-token-4c1d9e\n")
    (tmp_path / "cluster.token").chmod(0o600)
    (tmp_path / "n1" / "data").mkdir(parents=True)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({
        "cluster": "limits", "provider": {"type": "local", "store": "store"}, "catalog": {"path": "catalog"},
        "auth": {"token_file": "cluster.token"}, "policy": {"agent_timeout_s": 20},
        "nodes": [{"name": "n1", "agent": url, "volumes": [{"name": "data", "path": "n1/data"}]}],
    }))
    return inventory


@pytest.mark.parametrize("kind", list(HEADS))
def test_an_endless_answer_is_a_node_error_naming_the_limit_not_a_wait(tmp_path: Path, kind: str) -> None:
    with rogue_agent(kind) as url:
        inventory = load_inventory(write_inventory(tmp_path, url))

        async def status() -> None:
            async with open_agents(inventory) as agents:
                await agents["n1"].status()

        began = time.monotonic()
        with pytest.raises(NotAnAgent) as refused:
            asyncio.run(status())
        took = time.monotonic() - began
    assert refused.value.node == "n1" and refused.value.status == 200
    assert refused.value.reason.startswith(f"the agent at {url} answered /v1/status with a body over snapctl's "
                                           f"limit of {MAX_BODY // (1024 * 1024)} MiB for one answer")
    assert took < 10, f"waited {took:.1f}s for the rest of the answer"  # the timeout is 20 s
    if kind == "announced":  # refused on its head: hardly any of the body was read
        assert "(100000000000 bytes announced)" in refused.value.reason
    else:
        assert "announced" not in refused.value.reason


def test_status_and_a_forced_backup_refuse_a_node_that_answers_endlessly(tmp_path: Path) -> None:
    with rogue_agent("announced") as url:
        inventory = write_inventory(tmp_path, url)

        def snapctl(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "snapctl.cli", *args, "-i", str(inventory)],
                                  cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)

        status = snapctl("status", "-o", "json")
        assert status.returncode == ExitCode.CRITICAL, status.stderr
        [finding] = [f for f in json.loads(status.stdout)["data"]["verdict"]["findings"] if f["subject"] == "n1"]
        assert "over snapctl's limit of 64 MiB" in finding["message"], finding
        assert finding["severity"] == "critical" and not finding["forceable"], finding
        forced = snapctl("backup", "--force")
    assert forced.returncode == ExitCode.PREFLIGHT_REFUSED, forced.stdout + forced.stderr
    assert "n1:" in forced.stderr and "over snapctl's limit of 64 MiB" in forced.stderr
    assert "--force did not override these" in forced.stderr


@pytest.mark.parametrize("framing", [
    b"Transfer-Encoding: chunked\r\n\r\n-6\r\nxx",  # int() took "-6": the parse walked back to its start for ever
    b"Transfer-Encoding: chunked\r\n\r\n+6\r\nxxxxxx\r\n0\r\n\r\n",
    b"Content-Length: -5\r\n\r\n",
    b"Content-Length: 1_0\r\n\r\n0123456789",
])
def test_an_answer_framed_with_a_bad_length_is_refused(framing: bytes) -> None:
    def endless(*_: object) -> None:
        raise AssertionError("the parse did not end")

    # The old parse of "-6" never returned and grew without bound: an alarm ends it, not the machine.
    previous = signal.signal(signal.SIGALRM, endless)
    signal.alarm(3)
    try:
        with pytest.raises(ValueError, match="^bad (chunk size|Content-Length)"):
            _parse_response(bytearray(b"HTTP/1.1 200 OK\r\n" + framing), "GET", False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_an_agent_answering_with_a_bad_length_is_a_malformed_answer(tmp_path: Path) -> None:
    server = socket.create_server((LOOPBACK, 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n{\"a\": 12}")
            time.sleep(5)

    threading.Thread(target=answer, daemon=True).start()
    inventory = load_inventory(write_inventory(tmp_path, f"http://{LOOPBACK}:{server.getsockname()[1]}"))

    async def status() -> None:
        async with open_agents(inventory) as agents:
            await agents["n1"].status()

    try:
        with pytest.raises(AgentError) as refused:
            asyncio.run(status())
    finally:
        server.close()
    assert refused.value.node == "n1" and "malformed answer: bad Content-Length" in str(refused.value), refused.value
