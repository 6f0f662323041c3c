"""Fixtures for the catalog tests: a catalog in a temp directory and a clock the test moves."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from snapctl.catalog import Catalog, LocalBlobStore
from snapctl.manifest import Manifest, NodeRecord
from snapctl.providers import SnapshotRef

START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


class FakeClock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "catalog")


@pytest.fixture
def catalog(store: LocalBlobStore, clock: FakeClock) -> Catalog:
    return Catalog(store, "prod", clock=clock)


def make_manifest(run_id: str, *, minutes: int = 0, status: str = "succeeded", cluster: str = "prod") -> Manifest:
    ref = SnapshotRef(provider="local", snapshot_id=f"{run_id}-n1-data", node="n1", volume="data", state="completed")
    return Manifest(
        cluster=cluster,
        run_id=run_id,
        status=status,
        provider="local",
        snapctl_version="0.1.0",
        owner="ops@host:1",
        started_at=START + timedelta(minutes=minutes),
        nodes={"n1": NodeRecord(name="n1", engine="sqlite", snapshots=[ref])},
        snapshots_completed=status == "succeeded",  # a backup that waited for them
    )
