"""Fixtures of the security suite: a real agent process (the fault suite's harness, one node), and
the agent's app served by uvicorn in a thread where a test must look inside it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from tests.conftest import LOOPBACK
from tests.faults.harness import FaultCluster


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[FaultCluster]:
    """One real ``snapctl-agent`` (SQLite) with a token; ``solo.url("solo")`` is the agent itself."""
    cluster = FaultCluster(tmp_path, nodes=("solo",))
    try:
        yield cluster.start()
    finally:
        cluster.close()


@contextmanager
def serve(app) -> Iterator[str]:
    """``app`` behind uvicorn on a loopback port the kernel picks; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
