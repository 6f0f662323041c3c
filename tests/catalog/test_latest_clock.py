"""`latest` on a host whose clock is wrong, judged by the store's clock: a reader whose clock is
behind still gets the true newest backup; a run a writer's clock stamped ahead is still passed
over. Over a real local catalog (its files' mtimes) and S3 on moto (LastModified)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from snapctl.catalog import Catalog, LocalBlobStore
from snapctl.catalog.s3 import S3BlobStore
from tests.moto_server import DEFAULT_REGION
from tests.retention.s3_helpers import BUCKET, s3_bucket

from .conftest import START, FakeClock, make_manifest

DAY = 24 * 60


def _daily(catalog: Catalog, days: int, *, first: datetime = START) -> list[str]:
    """One succeeded backup a day, started at ``first`` + n days (make_manifest counts from START)."""
    offset = round((first - START).total_seconds() / 60)
    run_ids = []
    for day in range(days):
        started = first + timedelta(days=day)
        run_id = f"{started:%Y%m%dT%H%M%SZ}-aaaa{day:02d}"
        catalog.save(make_manifest(run_id, minutes=offset + day * DAY))
        run_ids.append(run_id)
    return run_ids


def _written_as_started(store: LocalBlobStore, run_id: str, started: datetime, after_s: float = 120) -> None:
    """Set the manifest's mtime as the store would have stamped it: a little after the run started."""
    stamp = (started + timedelta(seconds=after_s)).timestamp()
    os.utime(store.root / "prod" / "manifests" / f"{run_id}.json", (stamp, stamp))


def test_local_latest_on_a_host_whose_clock_is_days_behind_is_the_true_newest(tmp_path) -> None:
    store = LocalBlobStore(tmp_path / "catalog")
    clock = FakeClock(START + timedelta(days=10, minutes=1))
    catalog = Catalog(store, "prod", clock=clock)
    run_ids = _daily(catalog, 10)
    for day, run_id in enumerate(run_ids):
        _written_as_started(store, run_id, START + timedelta(days=day))
    clock.now = START + timedelta(days=7)  # a recovery host booted without NTP
    skipped: list[str] = []

    assert catalog.resolve("latest", skipped) == run_ids[-1]
    assert len(skipped) == 1, skipped
    assert skipped[0].startswith(f"latest is run {run_ids[-1]}, which started 2024-05-10 12:00:00Z, 2 days ahead "
                                 "of this host's clock, but the catalog's store wrote its manifest at 2024-05-10 12:02:00Z")
    assert skipped[0].endswith("this host's clock is behind the catalog's; hint: check this host's clock (NTP)")


def test_local_latest_passes_over_a_run_a_writers_clock_stamped_ahead(tmp_path) -> None:
    store = LocalBlobStore(tmp_path / "catalog")
    clock = FakeClock(START + timedelta(days=3))
    catalog = Catalog(store, "prod", clock=clock)
    run_ids = _daily(catalog, 3)
    for day, run_id in enumerate(run_ids):
        _written_as_started(store, run_id, START + timedelta(days=day))
    # Made on a host whose clock ran 30 days ahead; the store stamped it as it wrote, today.
    future = "20240603T120000Z-ffff0000"
    catalog.save(make_manifest(future, minutes=33 * DAY))
    _written_as_started(store, future, START + timedelta(days=3), after_s=-60)
    skipped: list[str] = []

    assert catalog.resolve("latest", skipped) == run_ids[-1]
    assert len(skipped) == 1, skipped
    assert skipped[0].startswith(f"latest is run {run_ids[-1]}, not run {future}, which started 2024-06-03 12:00:00Z")
    assert "its real age is unknown" in skipped[0]


@pytest.fixture
def s3_store() -> Iterator[S3BlobStore]:
    with s3_bucket() as server:
        yield S3BlobStore(f"s3://{BUCKET}/team/catalog", endpoint_url=server.endpoint_url, region=DEFAULT_REGION)


def test_s3_latest_on_a_host_whose_clock_is_days_behind_is_the_true_newest(s3_store: S3BlobStore) -> None:
    # S3 stamps LastModified now: the runs started in the hour before, by right clocks.
    now = datetime.now(UTC).replace(microsecond=0)
    clock = FakeClock(now)
    catalog = Catalog(s3_store, "prod", clock=clock)
    run_ids = _daily(catalog, 3, first=now - timedelta(days=2, hours=1))
    clock.now = now - timedelta(days=3)
    skipped: list[str] = []

    assert catalog.resolve("latest", skipped) == run_ids[-1]
    assert len(skipped) == 1, skipped
    assert skipped[0].startswith(f"latest is run {run_ids[-1]}, which started ")
    assert skipped[0].endswith("this host's clock is behind the catalog's; hint: check this host's clock (NTP)")


def test_s3_latest_passes_over_a_run_a_writers_clock_stamped_ahead(s3_store: S3BlobStore) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    catalog = Catalog(s3_store, "prod", clock=lambda: now)
    run_ids = _daily(catalog, 2, first=now - timedelta(days=1, hours=1))
    future = _daily(catalog, 1, first=now + timedelta(days=30))[0]
    skipped: list[str] = []

    assert catalog.resolve("latest", skipped) == run_ids[-1]
    assert len(skipped) == 1, skipped
    assert skipped[0].startswith(f"latest is run {run_ids[-1]}, not run {future}, which started ")
