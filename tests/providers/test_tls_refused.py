"""A cloud endpoint whose TLS certificate does not verify (a proxy that inspects TLS, a private CA
not trusted here), through each real SDK: a refusal that says so, not "no answer, check network
access", which would also have a backup's wait poll it until its deadline."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from snapctl.errors import ProviderError, ProviderUnavailable, ProviderUnreachable
from snapctl.providers import SnapshotRef, snapshot_tags
from tests.agent.certs import Pki, make_pki

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


class _Failing(BaseHTTPRequestHandler):
    """Behind the certificate, a cloud that is down: any answer at all means TLS let the call through."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def endpoint(pki) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _aws(url: str, **settings):
    from snapctl_aws import AwsProvider
    from snapctl_aws.settings import AwsSettings

    provider = AwsProvider(AwsSettings.model_validate({"type": "aws", "region": "eu-west-1", "endpoint_url": url,
                                                       **settings}),
                           cluster="c", base_dir=Path("."))
    return provider, SnapshotRef(node="n1", volume="data", snapshot_id="snap-0123456789abcdef0", provider="aws")


def _gcp(url: str):
    from snapctl_gcp import GcpProvider, GcpSettings

    settings = {"type": "gcp", "project": "my-project", "api_endpoint": url, "anonymous": True, "max_retries": 1,
                "max_backoff_s": 1}
    provider = GcpProvider(GcpSettings.model_validate(settings), cluster="c", base_dir=Path("."))
    return provider, SnapshotRef(node="n1", volume="data", snapshot_id="s1", provider="gcp")


def _azure(url: str):
    from snapctl_azure import AzureProvider, AzureSettings

    settings = {"type": "azure", "subscription_id": SUBSCRIPTION, "resource_group": "rg", "location": "westeurope",
                "base_url": url, "dummy_credential_for_tests": True}
    provider = AzureProvider(AzureSettings.model_validate(settings), cluster="c", base_dir=Path("."))
    snapshot = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Compute/snapshots/s1"
    return provider, SnapshotRef(node="n1", volume="data", snapshot_id=snapshot, provider="azure")


CLOUDS = {"aws": (_aws, "AWS_CA_BUNDLE"), "gcp": (_gcp, "REQUESTS_CA_BUNDLE"), "azure": (_azure, "REQUESTS_CA_BUNDLE")}


@pytest.fixture(autouse=True)
def _sdk_environment(monkeypatch):
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_a_certificate_that_does_not_verify_is_a_refusal_saying_so(cloud, endpoint):
    make, bundle_variable = CLOUDS[cloud]
    provider, ref = make(endpoint)
    with pytest.raises(ProviderError) as raised:
        provider.describe([ref])
    error = raised.value
    assert not isinstance(error, ProviderUnreachable), error.message
    assert "TLS certificate was refused: unable to get local issuer certificate" in error.message
    assert "\n" not in error.message
    assert bundle_variable in error.hint


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_trusting_the_ca_as_the_hint_says_lets_the_call_through(cloud, endpoint, pki, monkeypatch):
    make, bundle_variable = CLOUDS[cloud]
    monkeypatch.setenv(bundle_variable, str(pki.ca))
    provider, ref = make(endpoint)
    with pytest.raises(ProviderError) as raised:  # the cloud behind it answers 503
        provider.describe([ref])
    assert isinstance(raised.value, ProviderUnavailable), raised.value.message


def _async_client_refuses_or_lets_through(provider, call, trusted: bool, bundle_variable: str) -> None:
    """``call`` (a coroutine function) through the provider's async client, closed after: refused
    as a TLS certificate the blocking client refuses, or, trusted, let through to the 503 behind."""
    async def called() -> None:
        try:
            await call()
        finally:
            await provider.aclose()

    with pytest.raises(ProviderError) as raised:
        asyncio.run(asyncio.wait_for(called(), 120))
    if trusted:  # the cloud behind it answers 503
        assert isinstance(raised.value, ProviderUnavailable), raised.value.message
    else:
        assert not isinstance(raised.value, ProviderUnreachable), raised.value.message
        assert "TLS certificate was refused: unable to get local issuer certificate" in raised.value.message
        assert bundle_variable in raised.value.hint


@pytest.mark.parametrize("trusted", [False, True], ids=["refused", "trusted"])
def test_the_aws_async_client_refuses_the_certificate_alike_and_trusts_the_ca_bundle(endpoint, pki, monkeypatch,
                                                                                       trusted):
    """aiobotocore's TLS is aiohttp's, not urllib3's: its warm-up (before any hold) must say the same."""
    if trusted:
        monkeypatch.setenv("AWS_CA_BUNDLE", str(pki.ca))
    provider, _ = _aws(endpoint, max_attempts=2)  # botocore's backoff between 8 would take most of a minute
    _async_client_refuses_or_lets_through(provider, provider.warm_up_async, trusted, "AWS_CA_BUNDLE")


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted-by-bundle"])
def test_azure_async_creates_trust_what_the_sync_client_trusts(endpoint, pki, monkeypatch, trusted):
    # A backup's creates go through aiohttp (snapshot_async), which reads no REQUESTS_CA_BUNDLE of its own.
    from snapctl_azure import AzureProvider, AzureSettings

    if trusted:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca))
    settings = {"type": "azure", "subscription_id": SUBSCRIPTION, "resource_group": "rg", "location": "westeurope",
                "base_url": endpoint, "dummy_credential_for_tests": True, "max_retries": 0}
    provider = AzureProvider(AzureSettings.model_validate(settings), cluster="c", base_dir=Path("."))
    disk = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Compute/disks/pg"
    volumes = provider.validate_volumes("n1", [{"disk_id": disk}], base_dir=Path("."))
    tags = snapshot_tags("c", "r1", "n1")
    _async_client_refuses_or_lets_through(provider, lambda: provider.snapshot_async(volumes, tags), trusted,
                                          "REQUESTS_CA_BUNDLE")
