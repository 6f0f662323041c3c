"""The S3 side of the retention and shared-catalog tests: the run's moto server (this process's
account reset per test, dummy credentials) and a bucket named for this process (S3's names are
global). The server answers racing conditional writes as S3 does, one winner (tests/moto_host.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.moto_server import DEFAULT_REGION, MotoServer, dummy_aws_credentials, shared_moto_server, worker_tag

BUCKET = f"snapctl-catalog-{worker_tag()}"


@contextmanager
def s3_bucket(bucket: str = BUCKET) -> Iterator[MotoServer]:
    """This process's account emptied but for one empty bucket, dummy credentials in the environment."""
    import boto3

    server = shared_moto_server()
    server.reset()
    with dummy_aws_credentials():
        boto3.client("s3", endpoint_url=server.endpoint_url, region_name=DEFAULT_REGION).create_bucket(Bucket=bucket)
        yield server


def s3_client(server: MotoServer) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=server.endpoint_url, region_name=DEFAULT_REGION)
