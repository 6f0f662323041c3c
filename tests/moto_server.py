"""The test run's one moto server, and this process's handle on it.

One server per test run. Under xdist the controller starts it before any worker
(``start_for_run``, from the root conftest's ``pytest_configure``) and the workers find its URL in
``$SNAPCTL_TEST_MOTO_URL``; a run without workers (or a benchmark) starts it in its own process
on first use. boto3 talks to it over real HTTP on 127.0.0.1.

Each access key is an AWS account of its own (``account_of``): the server's front sets the
account header moto honours from the key a request was signed with. Every test process signs
with a key naming it (``DUMMY_AWS_ENV``), so one worker's reset, resources and recordings never
touch another's. S3 bucket names are global across accounts, as in AWS: tests name theirs per
worker (``worker_tag``).

What a test does to moto's objects beyond the AWS API (a snapshot's state, new snapshots made
pending, the requests seen) goes through a small control API on the same server,
``/_snapctl-test/``, for the handle's account only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

LOOPBACK = "127.0.0.1"
DEFAULT_REGION = "us-east-1"
URL_ENV = "SNAPCTL_TEST_MOTO_URL"


def worker_tag() -> str:
    """This test process's name, fit for a bucket name or an access key: gw0, gw1... or main."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def account_of(access_key: str) -> str:
    """The moto account an access key signs into: 12 digits, the same on both sides of the wire."""
    return str(10**11 + int(hashlib.sha256(access_key.encode()).hexdigest(), 16) % (9 * 10**11))


# Dummy credentials: moto accepts anything, and a developer's real ones must never be used. The
# key names the process, so the process is an account of its own on the run's one server.
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": f"testing-{worker_tag()}",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": DEFAULT_REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


class MotoServer:
    """The run's moto server as one account sees it: its URL and the control API's calls."""

    def __init__(self, endpoint_url: str, access_key: str = DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"]) -> None:
        self.endpoint_url = endpoint_url
        self.access_key = access_key
        self.account_id = account_of(access_key)

    def as_key(self, access_key: str) -> MotoServer:
        """The same server, as the account ``access_key`` signs into."""
        return MotoServer(self.endpoint_url, access_key)

    def client(self, service: str) -> Any:
        """A boto3 client signed with this handle's key. (``boto3.client()`` signs with the key its
        default session read first: the process's.)"""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=DEFAULT_REGION,
                            aws_access_key_id=self.access_key, aws_secret_access_key="testing")

    def _control(self, action: str, **fields: object) -> dict:
        body = json.dumps({"account": self.account_id, **fields}).encode()
        request = urllib.request.Request(f"{self.endpoint_url}/_snapctl-test/{action}", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def reset(self) -> None:
        """Forget every resource of this account, in every service and region."""
        self._control("reset")

    def set_snapshot(self, snapshot_id: str, *, status: str | None = None, progress: str | None = None,
                     state_message: str | None = None, region: str = DEFAULT_REGION) -> None:
        """Put an EBS snapshot in a state EC2's API cannot ask for (``pending``, ``error``...)."""
        self._control("set-snapshot", region=region, snapshot_id=snapshot_id, status=status, progress=progress,
                      state_message=state_message)

    def snapshot_ids(self, region: str = DEFAULT_REGION) -> set[str]:
        """Every EBS snapshot of this account in ``region``, whatever its state or tags."""
        return set(self._control("snapshot-ids", region=region)["ids"])

    @contextlib.contextmanager
    def new_snapshots_pending(self) -> Iterator[None]:
        """Snapshots made meanwhile start ``pending`` (moto makes them ``completed``), until
        ``set_snapshot`` says otherwise: an upload that takes its time."""
        self._control("new-snapshots-pending", on=True)
        try:
            yield
        finally:
            self._control("new-snapshots-pending", on=False)

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[tuple[str, str]]]:
        """Each query-protocol request (EC2's) of this account received meanwhile, as (Action,
        User-Agent): which SDK made a call, say boto3 or aiobotocore, as only the server sees it.
        The list is filled when the block ends."""
        seen: list[tuple[str, str]] = []
        self._control("record", on=True)
        try:
            yield seen
        finally:
            seen.extend((action, agent) for action, agent in self._control("record", on=False)["seen"])

    @contextlib.contextmanager
    def senders(self, action: str) -> Iterator[list[list[tuple[int, ...]]]]:
        """For each ``action`` request (EC2's) of this account received meanwhile, the processes
        that sent it, each as its line of descent (``tests/fakes/callers.py``): which process made
        an SDK's call. The list is filled when the block ends."""
        seen: list[list[tuple[int, ...]]] = []
        self._control("senders-of", of=action, on=True)
        try:
            yield seen
        finally:
            answer = self._control("senders-of", of=action, on=False)["senders"]
            seen.extend([tuple(line) for line in who] for who in answer)


_lock = threading.Lock()
_server: MotoServer | None = None


def start_for_run() -> str:
    """Start the run's server in this process (the xdist controller, or a run without workers)
    and tell the processes started from now on where it is. Its URL."""
    from tests.moto_host import MotoHost

    host = MotoHost(LOOPBACK)
    os.environ[URL_ENV] = host.endpoint_url
    return host.endpoint_url


def shared_moto_server() -> MotoServer:
    """The run's moto server, as this process's account sees it; started here on first use when
    no other process of the run has one."""
    global _server
    with _lock:
        if _server is None:
            _server = MotoServer(os.environ.get(URL_ENV) or start_for_run())
        return _server


@contextlib.contextmanager
def dummy_aws_credentials(**overrides: str) -> Iterator[None]:
    """Point the SDK's credential chain at dummy values (and ``overrides``) for the duration, then
    restore."""
    wanted = {**DUMMY_AWS_ENV, **overrides}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    _forget_boto3_default_session()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _forget_boto3_default_session()


def _forget_boto3_default_session() -> None:
    # boto3.client() signs with the credentials its default session read first, whatever the
    # environment says since: another test's key would be another account on the run's server.
    if (boto3 := sys.modules.get("boto3")) is not None:
        boto3.DEFAULT_SESSION = None


def signed_by(authorization: str) -> str | None:
    """The access key an ``Authorization`` header (SigV4) names, if any."""
    match = _CREDENTIAL.search(authorization)
    return match.group(1) if match else None
