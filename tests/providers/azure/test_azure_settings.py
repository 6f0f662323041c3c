"""Settings, volumes and snapshot names: no SDK, no server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from snapctl_azure import AzureProvider, AzureSettings
from snapctl_azure.put import snapshot_name
from snapctl_azure.settings import RESOURCE_NAME

from snapctl.errors import BadInputError

SUB = "00000000-0000-4000-8000-000000000001"
DISK = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/disks/pg-data"


def settings(**extra):
    return AzureSettings.model_validate({"type": "azure", "subscription_id": SUB, "resource_group": "rg",
                                         "location": "westeurope", **extra})


def test_plain_http_only_for_loopback_tests():
    assert settings(base_url="http://127.0.0.1:8080", insecure_http_for_tests=True).insecure_http_for_tests
    with pytest.raises(ValidationError, match="127.0.0.1"):
        settings(base_url="http://arm.example.com", insecure_http_for_tests=True)
    with pytest.raises(ValidationError, match="127.0.0.1"):
        settings(insecure_http_for_tests=True)
    with pytest.raises(ValidationError, match="https"):
        settings(base_url="http://127.0.0.1:8080")
    assert settings(base_url="https://management.usgovcloudapi.net").base_url


@pytest.mark.parametrize("tags", [{"snapctl-run": "x"}, {"microsoft.owner": "x"}, {"a/b": "x"}, {"k": "v" * 257},
                                  {"Team": "a", "team": "b"}])
def test_user_tags_must_be_legal_and_not_reserved(tags):
    with pytest.raises(ValidationError):
        settings(tags=tags)


def test_subscription_must_be_a_guid_and_unknown_keys_are_rejected():
    with pytest.raises(ValidationError, match="subscription_id"):
        settings(subscription_id="my-subscription")
    with pytest.raises(ValidationError, match="extra"):
        settings(region="westeurope")


@pytest.mark.parametrize(("raw", "message"), [
    ([], "no volumes"),
    ([{"disk_id": "pg-data"}], r"volumes\[0\]: disk_id: expected /subscriptions/"),
    ([{"disk_id": DISK, "size": 3}], "unknown key 'size'"),
    ([{"disk_id": DISK}, {"disk_id": DISK.replace("resourceGroups/rg", "resourcegroups/RG"), "name": "x"}],
     "listed twice"),
    ([{"disk_id": DISK, "name": "x"}, {"disk_id": DISK + "2", "name": "x"}], "used twice"),
])
def test_volume_problems_name_the_node_and_entry(raw, message):
    provider = AzureProvider(settings(), cluster="c", base_dir=Path("."))
    with pytest.raises(BadInputError, match=message) as err:
        provider.validate_volumes("n1", raw, base_dir=Path("."))
    assert err.value.message.startswith("node n1")


def test_a_volume_name_defaults_to_the_disk_name():
    provider = AzureProvider(settings(), cluster="c", base_dir=Path("."))
    assert provider.validate_volumes("n1", [{"disk_id": DISK}], base_dir=Path(".")).volumes[0].name == "pg-data"


@given(st.text(max_size=100), st.text(max_size=100), st.text(max_size=100))
def test_snapshot_names_are_legal_and_unique(cluster, node, volume):
    first, second = snapshot_name(cluster, node, volume), snapshot_name(cluster, node, volume)
    assert RESOURCE_NAME.match(first) and len(first) <= 80 and first != second
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", first)
