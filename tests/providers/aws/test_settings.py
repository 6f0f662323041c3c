"""The provider block and the volumes block: what is accepted and what each refusal says."""

from __future__ import annotations

from pathlib import Path

import pytest
from snapctl_aws import InstanceVolumes, VolumeSpec

from snapctl.errors import BadInputError, ProviderError
from snapctl.providers import create_provider

INSTANCE = "i-0123456789abcdef0"
VOL_A = "vol-0123456789abcdef0"
VOL_B = "vol-0123456789abcdef1"


def make(**raw):
    return create_provider({"type": "aws", "region": "eu-west-1", **raw}, cluster="c", base_dir=Path("."))


def test_defaults_follow_ec2s_published_limits():
    provider = make()
    s = provider.settings
    assert (s.create_rate, s.create_burst, s.delete_rate, s.delete_burst) == (5, 100, 5, 100)
    assert (s.describe_rate, s.tag_rate, s.volume_rate, s.per_volume_retry_wait_s) == (20, 10, 5, 15)
    caps = provider.capabilities
    assert caps.crash_consistent_group and caps.incremental and not caps.instant
    assert (caps.max_creates_per_s, caps.create_burst) == (5, 100)


@pytest.mark.parametrize("raw, problem", [
    ({"region": "Europe"}, "region"),
    ({"access_key": "AKIA..."}, "unknown key"),
    ({"tags": {"aws:owner": "x"}}, "reserved"),
    ({"tags": {"snapctl-run": "x"}}, "set by snapctl"),
    ({"create_rate": 0}, "create_rate"),
    ({"endpoint_url": "localhost:5000"}, "endpoint_url"),
])
def test_bad_provider_blocks_are_refused_naming_the_field(raw, problem):
    with pytest.raises(BadInputError, match=problem):
        make(**raw)


def test_instance_and_volume_entries_validate():
    provider = make()
    [entry] = provider.validate_volumes("n1", [{"instance": INSTANCE, "exclude": [VOL_A]}], base_dir=Path(".")).volumes
    assert entry == InstanceVolumes(instance=INSTANCE, exclude_boot=True, exclude=(VOL_A,))
    listed = provider.validate_volumes("n1", [{"volume": VOL_A, "name": "data"}, {"volume": VOL_B}], base_dir=Path("."))
    assert listed.volumes == [VolumeSpec(volume=VOL_A, name="data"), VolumeSpec(volume=VOL_B, name=VOL_B)]


@pytest.mark.parametrize("raw, problem", [
    ([], "no volumes"),
    ([{"instance": "i-123"}], "not an EC2 instance id"),
    ([{"volume": "/dev/sdf"}], "not an EBS volume id"),
    ([{"instance": INSTANCE, "exclude": ["sdf"]}], "not an EBS volume id"),
    ([{"volume": VOL_A, "size": 5}], "unknown key 'size'"),
    ([{"instance": INSTANCE, "volume": VOL_A}], "either 'instance' or 'volume'"),
    ([{"instance": INSTANCE}, {"volume": VOL_A}], "only volumes entry"),
    ([{"volume": VOL_A}, {"volume": VOL_A}], "listed twice"),
    ([{"volume": VOL_A, "name": "d"}, {"volume": VOL_B, "name": "d"}], "used twice"),
])
def test_bad_volume_entries_name_the_node_and_the_problem(raw, problem):
    with pytest.raises(BadInputError, match=problem) as caught:
        make().validate_volumes("db-3", raw, base_dir=Path("."))
    assert "node db-3" in caught.value.message


@pytest.mark.parametrize("first_use", ["find", "warm_up"])
def test_missing_credentials_say_where_boto3_looks(monkeypatch, tmp_path, first_use):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    provider = make(endpoint_url="http://127.0.0.1:9")  # never reached: signing fails first

    with pytest.raises(ProviderError, match="no usable credentials") as caught:
        provider.find({}) if first_use == "find" else provider.warm_up()  # a backup's: before any hold
    assert "environment" in caught.value.hint and "role" in caught.value.hint


SSO_CONFIG = """
[profile legacy]
sso_start_url = https://example.awsapps.com/start
sso_region = us-east-1
sso_account_id = 123456789012
sso_role_name = Backup

[profile session]
sso_session = corp
sso_account_id = 123456789012
sso_role_name = Backup

[sso-session corp]
sso_start_url = https://example.awsapps.com/start
sso_region = us-east-1
"""


@pytest.mark.parametrize("profile, problem", [
    ("legacy", "Token for https://example.awsapps.com/start does not exist"),
    ("session", "Token for corp does not exist"),
])
def test_an_sso_profile_without_a_login_says_to_log_in(monkeypatch, tmp_path, profile, problem):
    # An expired login (`UnauthorizedSSOTokenError`, "The SSO session associated with this profile has
    # expired") is answered the same way; botocore fixes its token cache's path when imported.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    (tmp_path / "config").write_text(SSO_CONFIG)
    provider = make(profile=profile, endpoint_url="http://127.0.0.1:9")  # never reached: no credentials to sign with

    with pytest.raises(ProviderError, match="no usable credentials") as caught:
        provider.warm_up()
    assert problem in caught.value.message
    assert "aws sso login" in caught.value.hint


def test_an_unknown_profile_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    provider = make(profile="nope", endpoint_url="http://127.0.0.1:9")  # never reached: the profile is looked up first
    with pytest.raises(ProviderError, match=r"config profile \(nope\) could not be found") as caught:
        provider.find({})
    assert "fix the provider's 'profile'" in caught.value.hint


def test_the_documented_inventory_block_is_valid():
    import re

    from snapctl.config import parse_inventory

    doc = (Path(__file__).parents[3] / "docs" / "providers" / "aws.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", doc, re.S).group(1)
    inventory = parse_inventory("cluster: docs\n" + block)
    provider = create_provider(inventory.provider, cluster="docs", base_dir=Path("."))
    for node in inventory.nodes:
        assert provider.validate_volumes(node.name, node.volumes, base_dir=Path(".")).volumes
