"""Fixtures for the agent: real SQLite files, the app served by uvicorn on loopback, agent processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from node_agent.engines.sqlite import SqliteEngine, SqliteSettings
from tests.conftest import LOOPBACK, free_port

AGENT_BIN = Path(sys.executable).with_name("snapctl-agent")
TOKEN = "t0ken-for-tests-5f2c"


def make_db(path: Path, rows: int = 10, *, wal: bool = True) -> Path:
    conn = sqlite3.connect(path)
    try:
        if wal:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, value TEXT)")
        conn.executemany("INSERT INTO items (value) VALUES (?)", [(f"v{i}",) for i in range(rows)])
        conn.commit()
    finally:
        conn.close()
    return path


def try_write(path: Path, busy_timeout_s: float = 0.05) -> bool:
    """True when a writer got in; False when it was kept out ("database is locked")."""
    conn = sqlite3.connect(path, timeout=busy_timeout_s)
    try:
        conn.execute("INSERT INTO items (value) VALUES ('writer')")
        conn.commit()
        return True
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return False
        raise
    finally:
        conn.close()


def count_rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM items").fetchone()[0]
    finally:
        conn.close()


def wait_until(predicate, *, timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "data.db")


@pytest.fixture
def engine(db: Path) -> Iterator[SqliteEngine]:
    eng = SqliteEngine(SqliteSettings(path=db.name, timeout_s=5), base_dir=db.parent)
    yield eng
    eng.close()


@contextmanager
def serve(app) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        assert server.started, "uvicorn did not start"
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class AgentProcess:
    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path) -> None:
        self.proc, self.url, self.log_path = proc, url, log_path

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@contextmanager
def agent_process(config: Path, *args: str, env: dict[str, str] | None = None, verify: object = False,
                  scheme: str = "http") -> Iterator[AgentProcess]:
    """A real ``snapctl-agent`` on a free loopback port, stopped (SIGTERM, then kill) on exit."""
    port = free_port()
    log_path = config.with_name(f"agent-{port}.log")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [str(AGENT_BIN), "--config", str(config), "--port", str(port), *args],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
    agent = AgentProcess(proc, f"{scheme}://{LOOPBACK}:{port}", log_path)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"snapctl-agent exited with {proc.returncode}:\n{agent.log}")
            try:
                return httpx.get(agent.url + "/v1/health", timeout=1, verify=verify).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, what="snapctl-agent to answer /v1/health")
        yield agent
    finally:
        agent.stop()


def write_config(tmp_path: Path, db: Path, *, extra: str = "", token: str | None = TOKEN) -> Path:
    lines = ["node: n1", "engine:", "  type: sqlite", f"  path: {db.name}", "  timeout_s: 5"]
    if token is not None:
        (tmp_path / "agent.token").write_text(token + "\n")
        (tmp_path / "agent.token").chmod(0o600)  # as deployed: a looser mode is warned about at start
        lines.append("token_file: agent.token")
    config = tmp_path / "agent.yaml"
    config.write_text("\n".join(lines) + "\n" + extra)
    return config
