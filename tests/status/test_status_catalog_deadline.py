"""`snapctl status` against an S3 catalog that accepts connections and never answers: one deadline
for all its catalog reads (``catalog.status_timeout_s``), past which the catalog is reported
unreadable. Without it a status took 30 s a call, 5 times over (5 minutes), so an hourly cron
status overlapped the next and `status --watch` froze. A catalog that is only slow is read."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pydantic import ValidationError

from snapctl.config import CatalogConfig, load_inventory
from snapctl.errors import ExitCode
from snapctl.status import watch_status
from tests.faults.proxy import LoopbackProxy
from tests.moto_server import DUMMY_AWS_ENV
from tests.retention.s3_helpers import BUCKET, s3_bucket
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
        catalog = {"url": "s3://snapctl-silent/cat", "endpoint_url": f"http://127.0.0.1:{port}", "region": "us-east-1",
                   "status_timeout_s": "3s"}
        write_inventory(tmp_path, sqlite_nodes(tmp_path, 1), catalog=catalog)

        # Each S3 call alone waits 30 s for an answer: far past this command's limit without the deadline.
        result = snapctl("status", "-i", "inventory.yaml", "-o", "json", cwd=tmp_path, timeout=25)

    assert result.returncode == ExitCode.CRITICAL, result.stderr
    findings = json.loads(result.stdout)["data"]["verdict"]["findings"]
    catalog_findings = [f for f in findings if f["subject"] == "catalog"]
    assert [f["severity"] for f in catalog_findings] == ["critical"]
    assert catalog_findings[0]["message"] == "cannot read the catalog: it did not answer within 3s (catalog.status_timeout_s)"
    assert catalog_findings[0]["hint"].endswith("a store that is only slow needs a longer catalog.status_timeout_s")


def test_a_watch_on_a_catalog_that_never_answers_keeps_one_look_waiting_not_one_a_refresh(tmp_path, monkeypatch):
    # Each refresh past the deadline left its thread blocked on the catalog for boto's 5 minutes:
    # a --watch piled up one a refresh, and asked the silent store again each time.
    for key, val in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(key, val)
    with blackhole() as port:
        catalog = {"url": "s3://snapctl-silent/cat", "endpoint_url": f"http://127.0.0.1:{port}", "region": "us-east-1",
                   "status_timeout_s": "3s"}
        inventory = load_inventory(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1), catalog=catalog,
                                                   cluster="watch-silent"))
        seen: list[str] = []

        def show(status) -> None:
            seen.append(next(f.message for f in status.verdict.findings if f.subject == "catalog"))

        asyncio.run(watch_status(inventory, 0.1, show, refreshes=3))
        looking = [t for t in threading.enumerate() if t.name == "snapctl-status-catalog"]

    assert seen[0] == "cannot read the catalog: it did not answer within 3s (catalog.status_timeout_s)"
    assert all(message.startswith("cannot read the catalog: an earlier look has not answered for ")
               for message in seen[1:]), seen
    assert len(seen) == 3 and len(looking) == 1


def test_a_slow_but_healthy_catalog_is_read_however_short_the_agents_timeout(tmp_path):
    # The deadline was 3 x policy.agent_timeout_s: with agents that must answer within 1 s, a store
    # that took 4 s for status's reads was reported unreadable, critical, failing CI's status step.
    with s3_bucket() as moto, slowed(moto.endpoint_url, "GET ", 4.0) as (endpoint, held):
        catalog = {"url": f"s3://{BUCKET}/cat", "endpoint_url": endpoint, "region": "us-east-1"}
        write_inventory(tmp_path, sqlite_nodes(tmp_path, 1), catalog=catalog, policy={"agent_timeout_s": "1s"})

        result = snapctl("status", "-i", "inventory.yaml", "-o", "json", cwd=tmp_path)

    assert held.is_set()
    findings = json.loads(result.stdout)["data"]["verdict"]["findings"]
    assert [(f["severity"], f["message"]) for f in findings if f["subject"] == "catalog"] == [], findings
    assert result.returncode == ExitCode.DEGRADED, result.stderr  # no backup yet, and nothing worse


def test_the_catalog_deadline_is_a_setting_of_its_own_with_a_default_a_slow_store_fits_in():
    assert CatalogConfig().status_timeout_s == 120.0
    assert CatalogConfig(status_timeout_s="90s").status_timeout_s == 90.0
    with pytest.raises(ValidationError):
        CatalogConfig(status_timeout_s=0)


@contextmanager
def slowed(endpoint_url: str, prefix: str, delay_s: float) -> Iterator[tuple[str, threading.Event]]:
    """``endpoint_url`` behind a loopback proxy that holds the first request starting with
    ``prefix`` (and what follows on its connection) for ``delay_s``, then lets everything through;
    with the event set once a request was held."""
    proxy = LoopbackProxy(int(endpoint_url.rsplit(":", 1)[1].rstrip("/")))
    gate, held, done = proxy.gate(prefix), threading.Event(), threading.Event()

    def release() -> None:
        while not gate.caught.wait(0.1):
            if done.is_set():
                return
        held.set()
        time.sleep(delay_s)
        gate.open()

    releaser = threading.Thread(target=release, daemon=True)
    releaser.start()
    try:
        yield proxy.url, held
    finally:
        done.set()
        releaser.join()
        proxy.close()
