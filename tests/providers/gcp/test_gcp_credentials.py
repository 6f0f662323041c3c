"""GcpProvider's credentials, with the real google-auth and google-cloud-compute SDKs against local
HTTP servers: the token fetched before any hold, keys that cannot load, grants refused, and
servers that echo a token or a signed assertion back, none of which reaches a message."""

from __future__ import annotations

import json

import pytest

from snapctl.errors import ProviderError
from snapctl.providers import SnapshotRef, snapshot_tags
from tests.fakes.json_http import JsonHttpFake
from tests.fakes.serving import serving
from tests.providers.gcp.conftest import deadline, volumes_of


def _credentials(error: Exception | None = None):
    from google.auth.credentials import Credentials

    class Expired(Credentials):
        """No token yet, as Application Default Credentials start: the first use fetches one."""

        def __init__(self) -> None:
            super().__init__()
            self.refreshes = 0

        def refresh(self, request) -> None:
            self.refreshes += 1
            if error is not None:
                raise error
            self.token = "fake-token-for-tests"

    return Expired()


def _with_credentials(provider, credentials):
    from snapctl_gcp.client import GcpApi

    class Api(GcpApi):
        def _credentials(self):
            return credentials

    provider.api = Api(provider.settings)
    return provider


def test_warm_up_fetches_the_token_before_any_request_and_the_snapshot_calls_reuse_it(gcp, make_provider):
    credentials = _credentials()
    provider = _with_credentials(make_provider(anonymous=False), credentials)
    provider.warm_up()
    assert credentials.refreshes == 1 and credentials.valid
    assert gcp.requests == []  # a token, and no request to the cloud: warm_up changes nothing there
    refs = provider.snapshot(volumes_of(provider), snapshot_tags("Prod.EU", "r1", "n1"))
    assert len(refs) == 2
    assert credentials.refreshes == 1


def test_warm_up_with_credentials_that_cannot_refresh_fails_before_any_hold(gcp, make_provider):
    from google.auth.exceptions import RefreshError

    provider = _with_credentials(make_provider(anonymous=False), _credentials(RefreshError("invalid_grant: account gone")))
    with pytest.raises(ProviderError) as caught:
        provider.warm_up()
    assert caught.value.message == ("gcp get an access token: credentials could not be refreshed: "
                                    "invalid_grant: account gone")
    assert caught.value.hint
    assert gcp.requests == []


@pytest.mark.parametrize("content, reason", [
    (None, "credentials could not be loaded: File {path} was not found"),
    ('{"type": "service_account", "client_email": "a@b.iam.gserviceaccount.com", "token_uri": "https://x.invalid",'
     ' "private_key": "-----BEGIN PRIVATE KEY-----\\nSECRET-KEY-MARKER\\n-----END PRIVATE KEY-----\\n"}',
     "credentials could not be loaded: Failed to load service account credentials from {path}"),
    ("{not json SECRET-KEY-MARKER", "credentials could not be loaded: File {path} is not a valid json file"),
], ids=["missing", "bad-key", "not-json"])
def test_a_key_file_that_cannot_be_loaded_is_named_with_google_auths_reason(gcp, make_provider, monkeypatch,
                                                                           tmp_path, content, reason):
    # google-auth fails on GOOGLE_APPLICATION_CREDENTIALS before it tries anything else (no network).
    path = tmp_path / "sa.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))

    with pytest.raises(ProviderError) as caught:
        make_provider(anonymous=False).warm_up()

    assert caught.value.message == f"gcp find credentials: {reason.format(path=path)}"
    assert f"GOOGLE_APPLICATION_CREDENTIALS names {path}" in caught.value.hint
    assert "SECRET-KEY-MARKER" not in caught.value.message + caught.value.hint
    assert gcp.requests == []


@pytest.mark.parametrize("indent", [None, 2], ids=["one-line", "pretty-printed"])
def test_a_key_pasted_into_the_variable_is_said_without_any_of_the_key(gcp, make_provider, monkeypatch, indent):
    # A CI secret exported as is: google-auth took the key for a file name and said
    # "File {...} was not found", and its first 300 characters, private_key_id and the start of
    # the private key, went into the message.
    key = {"type": "service_account", "project_id": gcp.project, "private_key_id": "KEY-ID-MARKER-0123456789",
           "private_key": "-----BEGIN PRIVATE KEY-----\nSECRET-KEY-MARKER\n-----END PRIVATE KEY-----\n",
           "client_email": "backup@p.iam.gserviceaccount.com", "client_id": "1"}
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", json.dumps(key, indent=indent))

    with pytest.raises(ProviderError) as caught:
        make_provider(anonymous=False).warm_up()

    said = str(caught.value)
    assert caught.value.message == ("gcp find credentials: GOOGLE_APPLICATION_CREDENTIALS holds what looks like "
                                    "a key's content, not the path of a key file")
    assert "set GOOGLE_APPLICATION_CREDENTIALS to its path" in caught.value.hint
    assert "MARKER" not in said and "BEGIN" not in said and "backup@" not in said
    assert gcp.requests == []


def _service_account_key(directory, project: str, token_url: str):
    """A service account's key file, a real RSA key in it, whose token endpoint is ``token_url``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    path = directory / "sa.json"
    path.write_text(json.dumps({"type": "service_account", "project_id": project, "private_key_id": "k1",
                                "private_key": key, "client_email": "backup@p.iam.gserviceaccount.com",
                                "client_id": "1", "token_uri": f"{token_url}/token"}))
    return path


class _TokenEndpoint(JsonHttpFake):
    """Google's OAuth token endpoint refusing a service account's signed grant (a deleted key)."""

    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes):
        return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, {}


def test_a_service_account_whose_grant_is_refused_is_one_line_with_googles_reason(gcp, make_provider, monkeypatch,
                                                                                 tmp_path):
    with _TokenEndpoint() as token:
        key_file = _service_account_key(tmp_path, gcp.project, token.url)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))

        with pytest.raises(ProviderError) as caught:
            make_provider(anonymous=False).warm_up()

    # google-auth's RefreshError carries the token endpoint's whole answer as a second argument.
    assert caught.value.message == ("gcp get an access token: credentials could not be refreshed: "
                                    "invalid_grant: Invalid JWT Signature.")
    assert caught.value.hint and gcp.requests == []


def test_a_gateway_that_echoes_the_request_does_not_put_the_access_token_in_the_message(make_provider):
    # google-api-core puts an answer that is not JSON in its message whole: a proxy or gateway
    # that echoes the request it refused carried "Authorization: Bearer <the access token>" into
    # snapctl's error, its output and the run's manifest.
    from http.server import BaseHTTPRequestHandler

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = f"request refused: {self.requestline} Authorization: {self.headers['Authorization']}".encode()
            self.send_response(400)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    ref = SnapshotRef(provider="gcp", snapshot_id="snap1", node="n1", volume="data",
                      extra={"zone": "europe-west1-b"})
    with serving(Echo) as url:
        provider = _with_credentials(make_provider(api_endpoint=url, anonymous=False, max_retries=0), _credentials())
        with pytest.raises(ProviderError) as caught:
            provider.wait([ref], deadline())
    said = str(caught.value)
    assert "request refused: GET /compute/v1/projects/" in said  # the gateway's words are kept...
    assert "fake-token-for-tests" not in said and "Authorization: <redacted>" in said  # ...but not the token


class _EchoingTokenEndpoint(JsonHttpFake):
    """A proxy in front of Google's token endpoint refusing the grant, its answer a string echoing it."""

    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes):
        return 400, f"request refused: {raw_body.decode()}", {}


def test_a_token_endpoint_that_echoes_the_grant_does_not_put_the_signed_assertion_in_the_message(
        gcp, make_provider, monkeypatch, tmp_path):
    # google-auth makes a plain-text refusal its RefreshError's reason whole: the echoed grant,
    # "assertion=<JWT signed with the service account's key>" (good for an hour of access tokens),
    # went into snapctl's message.
    with _EchoingTokenEndpoint() as token:
        key_file = _service_account_key(tmp_path, gcp.project, token.url)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        with pytest.raises(ProviderError) as caught:
            make_provider(anonymous=False).warm_up()

    said = str(caught.value)
    assert "credentials could not be refreshed: request refused: assertion=<redacted>" in said
    assert "eyJ" not in said, said  # no part of the JWT
