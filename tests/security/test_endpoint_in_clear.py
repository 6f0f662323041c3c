"""An S3 catalog or an EC2 endpoint over plain http to another host is warned about, once: an
onlooker sees the requests (a session token among them) and can change the answers (the
manifests that restore and prune read). The clients are only made: nothing is sent anywhere."""

from __future__ import annotations

import pytest

from snapctl import secret_files
from snapctl.catalog.s3 import S3BlobStore


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, caplog):
    monkeypatch.setattr(secret_files, "_WARNED_IN_CLEAR", set())
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    caplog.set_level("WARNING")


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_an_s3_catalog_over_http_beyond_this_host_is_warned_about_once(caplog):
    S3BlobStore("s3://backups/prod", endpoint_url="http://minio.internal:9000", region="eu-west-1")
    S3BlobStore("s3://backups/prod", endpoint_url="http://minio.internal:9000", region="eu-west-1")
    [warning] = _warnings(caplog)
    assert warning.startswith("catalog.endpoint_url http://minio.internal:9000 is plain http to another host")
    assert "can change the manifests" in warning


@pytest.mark.parametrize("endpoint", ["https://minio.internal:9000", "http://127.0.0.1:9000", None])
def test_https_loopback_or_aws_itself_is_not(caplog, endpoint):
    S3BlobStore("s3://backups/prod", endpoint_url=endpoint, region="eu-west-1")
    assert _warnings(caplog) == []


def test_an_ec2_endpoint_over_http_beyond_this_host_is_warned_about(caplog):
    from snapctl_aws.client import Ec2
    from snapctl_aws.settings import AwsSettings

    Ec2(AwsSettings.model_validate({"type": "aws", "region": "eu-west-1",
                                    "endpoint_url": "http://ec2.vpce.internal"})).client
    [warning] = _warnings(caplog)
    assert warning.startswith("the aws provider's endpoint_url http://ec2.vpce.internal is plain http to another host")
