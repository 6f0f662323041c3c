"""A fresh local Azure Resource Manager per test, and providers pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.azure_compute import FakeAzureCompute, StaticTokenCredential

RESOURCE_GROUP = "rg-snapctl"
DISKS = ("pgdata", "pgwal")


@pytest.fixture
def azure() -> Iterator[FakeAzureCompute]:
    with FakeAzureCompute(op_polls=2, provisioning_polls=1) as fake:
        fake.disk_ids = [fake.add_disk(RESOURCE_GROUP, disk) for disk in DISKS]
        yield fake


@pytest.fixture
def make_provider(azure: FakeAzureCompute):
    """``make_provider(cluster=..., **settings)``: an AzureProvider talking to this test's fake."""
    from snapctl_azure import AzureProvider, AzureSettings

    def make(cluster: str = "Prod.EU", **settings: Any) -> AzureProvider:
        raw = {"type": "azure", "subscription_id": azure.subscription, "resource_group": RESOURCE_GROUP,
               "location": "westeurope", "base_url": azure.url, "insecure_http_for_tests": True,
               "polling_interval_s": 0.01, **settings}
        return AzureProvider(AzureSettings.model_validate(raw), cluster=cluster, base_dir=Path("."),
                             credential=StaticTokenCredential())

    return make


@pytest.fixture
def provider(make_provider):
    return make_provider()


@pytest.fixture
def volumes(provider, azure):
    raw = [{"disk_id": disk_id, "name": disk_id.rsplit("/", 1)[-1][2:]} for disk_id in azure.disk_ids]
    return provider.validate_volumes("n1", raw, base_dir=Path("."))
