"""A fresh local Compute Engine API per test, and providers pointed at it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.gcp_compute import FakeGcpCompute

ZONE = "europe-west1-b"
DISKS = ("data-disk", "wal-disk")


@pytest.fixture
def gcp() -> Iterator[FakeGcpCompute]:
    with FakeGcpCompute(op_running_polls=2, creating_polls=1, uploading_polls=1) as fake:
        for disk in DISKS:
            fake.add_disk(ZONE, disk, size_gb=20)
        yield fake


@pytest.fixture
def make_provider(gcp: FakeGcpCompute):
    """``make_provider(cluster=..., **settings)``: a GcpProvider talking to this test's fake."""
    from snapctl_gcp import GcpProvider, GcpSettings

    def make(cluster: str = "Prod.EU", **settings: Any) -> GcpProvider:
        raw = {"type": "gcp", "project": gcp.project, "api_endpoint": gcp.url, "anonymous": True,
               "poll_interval_s": 0.01, "max_backoff_s": 5, **settings}
        return GcpProvider(GcpSettings.model_validate(raw), cluster=cluster, base_dir=Path("."))

    return make


@pytest.fixture
def provider(make_provider):
    return make_provider()


def deadline(seconds: float = 30) -> float:
    return time.monotonic() + seconds


def volumes_of(provider, node: str = "n1", disks: tuple[str, ...] = DISKS):
    raw = [{"disk": disk, "zone": ZONE, "name": disk.split("-")[0]} for disk in disks]
    return provider.validate_volumes(node, raw, base_dir=Path("."))


@pytest.fixture
def volumes(provider):
    return volumes_of(provider)
