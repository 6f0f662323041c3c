"""`snapctl status` against an S3 catalog that accepts connections and never answers: one deadline
for all its catalog reads (``CATALOG_DEADLINE_FACTOR`` x policy.agent_timeout_s), past which the
catalog is reported unreadable. Without it a status took 30 s a call, 5 times over (5 minutes),
so an hourly cron status overlapped the next and `status --watch` froze."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from snapctl.config import load_inventory
from snapctl.errors import ExitCode
from snapctl.status import watch_status
from tests.moto_server import DUMMY_AWS_ENV
from tests.status.conftest import sqlite_nodes, write_inventory
from tests.status.test_cli_status import snapctl


@contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port that accepts every connection and never answers one."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_a_catalog_that_never_answers_is_reported_unreadable_past_the_deadline(tmp_path, monkeypatch):
    for key, val in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(key, val)
    with blackhole() as port:
        catalog = {"url": "s3://snapctl-silent/cat", "endpoint_url": f"http://127.0.0.1:{port}", "region": "us-east-1"}
        write_inventory(tmp_path, sqlite_nodes(tmp_path, 1), catalog=catalog, policy={"agent_timeout_s": "1s"})

        # Each S3 call alone waits 30 s for an answer: far past this command's limit without the deadline.
        result = snapctl("status", "-i", "inventory.yaml", "-o", "json", cwd=tmp_path, timeout=25)

    assert result.returncode == ExitCode.CRITICAL, result.stderr
    findings = json.loads(result.stdout)["data"]["verdict"]["findings"]
    catalog_findings = [f for f in findings if f["subject"] == "catalog"]
    assert [f["severity"] for f in catalog_findings] == ["critical"]
    assert catalog_findings[0]["message"] == (
        "cannot read the catalog: it did not answer within 3s (3 x policy.agent_timeout_s)")


def test_a_watch_on_a_catalog_that_never_answers_keeps_one_look_waiting_not_one_a_refresh(tmp_path, monkeypatch):
    # Each refresh past the deadline left its thread blocked on the catalog for boto's 5 minutes:
    # a --watch piled up one a refresh, and asked the silent store again each time.
    for key, val in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(key, val)
    with blackhole() as port:
        catalog = {"url": "s3://snapctl-silent/cat", "endpoint_url": f"http://127.0.0.1:{port}", "region": "us-east-1"}
        inventory = load_inventory(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1), catalog=catalog,
                                                   cluster="watch-silent", policy={"agent_timeout_s": "1s"}))
        seen: list[str] = []

        def show(status) -> None:
            seen.append(next(f.message for f in status.verdict.findings if f.subject == "catalog"))

        asyncio.run(watch_status(inventory, 0.1, show, refreshes=3))
        looking = [t for t in threading.enumerate() if t.name == "snapctl-status-catalog"]

    assert seen[0] == "cannot read the catalog: it did not answer within 3s (3 x policy.agent_timeout_s)"
    assert all(message.startswith("cannot read the catalog: an earlier look has not answered for ")
               for message in seen[1:]), seen
    assert len(seen) == 3 and len(looking) == 1
