"""Label encoding, snapshot names, settings and volumes: no SDK, no server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from snapctl_gcp import GcpProvider, GcpSettings
from snapctl_gcp.labels import (
    cluster_prefix,
    decode_label,
    encode_key,
    encode_label,
    filter_for,
    snapshot_name,
    tags_of,
)

from snapctl.errors import BadInputError

LEGAL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
LEGAL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@given(st.text(max_size=80))
def test_every_value_becomes_a_legal_label_that_reads_back_when_it_fits(text):
    label = encode_label(text)
    assert LEGAL_VALUE.match(label)
    if not label.startswith("_h"):
        assert decode_label(label) == text
    else:
        assert decode_label(label) is None


@given(st.text(min_size=1, max_size=80))
def test_every_key_becomes_a_legal_label_key(key):
    assert LEGAL_KEY.match(encode_key(key))


def test_snapctl_keys_and_typical_values_stay_readable():
    assert encode_key("snapctl-cluster") == "snapctl-cluster"
    assert encode_label("prod-eu-1") == "prod-eu-1"
    assert encode_label("0.1.0") == "0_2e1_2e0"
    assert filter_for({"snapctl-run": "R.1"}) == '(labels.snapctl-run = "_52_2e1")'


def test_raw_tags_come_back_from_the_description_or_the_labels():
    raw = {"snapctl-cluster": "Prod.EU", "Team": "x"}
    from snapctl_gcp.labels import description_for, labels_for

    assert tags_of(description_for(raw), {}) == raw
    assert tags_of("", labels_for(raw)) == {"snapctl-cluster": "Prod.EU"}  # "k"-prefixed keys are not reversible
    assert tags_of("someone's note", {"env": "prod"}) == {"env": "prod"}


@given(st.text(max_size=100), st.text(max_size=100), st.text(max_size=100))
def test_snapshot_names_are_legal_and_unique(cluster, node, volume):
    first, second = snapshot_name(cluster, node, volume), snapshot_name(cluster, node, volume)
    assert NAME.match(first) and len(first) <= 63 and first != second


@given(st.text(max_size=40), st.text(max_size=3), st.text(max_size=40), st.text(max_size=30), st.text(max_size=30))
def test_a_clusters_name_prefix_matches_no_other_clusters_snapshots(cluster, separator, tail, node, volume):
    # The IAM condition docs/providers/gcp.md gives: startsWith(".../snapshots/" + prefix). The
    # other cluster's name often starts with this one's: "prod" and "prod-eu".
    other = cluster + separator + tail
    prefix, theirs = cluster_prefix(cluster), snapshot_name(other, node, volume)
    assert snapshot_name(cluster, node, volume).startswith(prefix)
    assert theirs.startswith(prefix) == (cluster_prefix(other) == prefix)


def test_a_cluster_named_like_the_start_of_another_does_not_share_its_prefix():
    assert cluster_prefix("prod") == "snapctl-prod--"
    assert not snapshot_name("prod-eu", "node1", "data").startswith(cluster_prefix("prod"))
    assert not snapshot_name("prod.x", "n", "d").startswith(cluster_prefix("prod"))
    assert cluster_prefix("Prod.EU") == cluster_prefix("prod-eu")  # the documented caveat: equal slugs share it


def settings(**extra):
    return GcpSettings.model_validate({"type": "gcp", "project": "my-project-1", **extra})


def test_anonymous_credentials_only_for_a_loopback_endpoint():
    assert settings(api_endpoint="http://127.0.0.1:9", anonymous=True).anonymous
    with pytest.raises(ValidationError, match="loopback"):
        settings(api_endpoint="https://compute.googleapis.com", anonymous=True)
    with pytest.raises(ValidationError, match="loopback"):
        settings(anonymous=True)


def test_an_http_endpoint_beyond_loopback_is_refused_it_would_carry_the_access_token_in_clear(tmp_path):
    # google-auth adds "Authorization: Bearer <token>" to every request, https or not: a private
    # endpoint given as http:// sent an hour's worth of the service account's rights over the network.
    from snapctl.config import load_inventory
    from snapctl.errors import InventoryError
    from snapctl.providers import provider_settings

    (tmp_path / "inv.yaml").write_text(
        "cluster: c\nprovider: {type: gcp, project: proj-one, api_endpoint: 'http://10.20.30.40:8080'}\n"
        "nodes:\n  - {name: n1, agent: 'http://127.0.0.1:7701', volumes: [{disk: d1, zone: europe-west1-b}]}\n")
    with pytest.raises(InventoryError) as caught:
        provider_settings(load_inventory(tmp_path / "inv.yaml"))
    assert caught.value.message.endswith("inv.yaml:2: provider gcp: api_endpoint: must be https beyond loopback: every "
                                         "request carries an access token")
    for loopback in ("http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9"):
        assert settings(api_endpoint=loopback).api_endpoint == loopback  # tests and local emulators
    assert settings(api_endpoint="https://10.20.30.40:8443").api_endpoint == "https://10.20.30.40:8443"


@pytest.mark.parametrize("labels", [{"Team": "x"}, {"team": "Storage"}, {"snapctl-run": "x"}])
def test_user_labels_must_be_legal_and_not_snapctls(labels):
    with pytest.raises(ValidationError):
        settings(labels=labels)


def test_unknown_keys_are_rejected():
    with pytest.raises(ValidationError, match="extra"):
        settings(region="us-east-1")


@pytest.mark.parametrize(("raw", "message"), [
    ([], "no volumes"),
    ([{"disk": "Data", "zone": "europe-west1-b"}], r"volumes\[0\]: disk"),
    ([{"disk": "data", "zone": "europe-west1-b", "size": 3}], "unknown key 'size'"),
    ([{"disk": "data"}], r"volumes\[0\]: missing required key 'zone'"),
    ([{"disk": "data", "zone": "europe-west1"}], r"zone: 'europe-west1' is not a GCP zone, such as europe-west1-b"),
    ([{"disk": "a", "zone": "europe-west1-b", "name": "x"}, {"disk": "b", "zone": "europe-west1-b", "name": "x"}],
     "used twice"),
    ([{"disk": "a", "zone": "europe-west1-b"}, {"disk": "a", "zone": "europe-west1-b", "name": "y"}], "listed twice"),
])
def test_volume_problems_name_the_node_and_entry(raw, message):
    provider = GcpProvider(settings(), cluster="c", base_dir=Path("."))
    with pytest.raises(BadInputError, match=message) as err:
        provider.validate_volumes("n1", raw, base_dir=Path("."))
    assert err.value.message.startswith("node n1")


def test_a_volume_name_defaults_to_the_disk():
    provider = GcpProvider(settings(), cluster="c", base_dir=Path("."))
    volumes = provider.validate_volumes("n1", [{"disk": "pg-data", "zone": "us-central1-a"}], base_dir=Path("."))
    assert volumes.volumes[0].name == "pg-data"
