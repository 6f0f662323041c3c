"""The S3 side of the retention and shared-catalog tests: the process's moto server (reset per
test, dummy credentials), a bucket, and moto made as atomic as S3 about conditional writes.

S3 documents that of several racing ``PutObject`` calls with ``If-None-Match: *`` (or the same
``If-Match`` ETag) exactly one succeeds. moto 5 checks the condition and stores the object as two
steps, unlocked, on a threaded server: racing writers can both pass (seen: 1 race in 100 with 8
threads). ``atomic_conditional_puts`` serialises moto's PutObject handler, which is what S3
promises; without it a race test would be testing moto, not snapctl.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.moto_server import DEFAULT_REGION, MotoServer, dummy_aws_credentials, shared_moto_server

BUCKET = "snapctl-catalog"
_put_lock = threading.Lock()


@contextmanager
def atomic_conditional_puts() -> Iterator[None]:
    from moto.s3.responses import S3Response

    original = S3Response.put_object

    def serialised(self: Any) -> Any:
        with _put_lock:
            return original(self)

    S3Response.put_object = serialised  # type: ignore[method-assign]
    try:
        yield
    finally:
        S3Response.put_object = original  # type: ignore[method-assign]


@contextmanager
def s3_bucket(bucket: str = BUCKET) -> Iterator[MotoServer]:
    """A fresh moto server state with one empty bucket, dummy credentials in the environment."""
    import boto3

    server = shared_moto_server()
    server.reset()
    with dummy_aws_credentials(), atomic_conditional_puts():
        boto3.client("s3", endpoint_url=server.endpoint_url, region_name=DEFAULT_REGION).create_bucket(Bucket=bucket)
        yield server


def s3_client(server: MotoServer) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=server.endpoint_url, region_name=DEFAULT_REGION)
