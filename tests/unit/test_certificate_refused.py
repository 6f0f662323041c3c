"""certificate_refused finds why TLS refused a certificate however an SDK wrapped ssl's error:
aiohttp's certificate error (the async clients' transport) is an SSLCertVerificationError without
ssl's attributes, holding ssl's own error."""

from __future__ import annotations

import ssl
from types import SimpleNamespace

import pytest

from snapctl.errors import certificate_refused


def _ssl_refusal(reason: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {reason}")
    error.verify_message = reason
    error.verify_code = 19
    return error


def test_ssls_own_error_gives_its_reason_wrapped_or_not():
    refused = _ssl_refusal("self-signed certificate in certificate chain")
    assert certificate_refused(refused) == "self-signed certificate in certificate chain"
    try:
        try:
            raise refused
        except ssl.SSLError as exc:
            raise ConnectionError("connection failed") from exc
    except ConnectionError as wrapped:
        assert certificate_refused(wrapped) == "self-signed certificate in certificate chain"


def test_aiohttps_certificate_error_gives_the_reason_of_ssls_error_inside_it():
    aiohttp = pytest.importorskip("aiohttp")  # installed with the aws and azure plugins' async clients
    key = SimpleNamespace(host="127.0.0.1", port=8443, is_ssl=True, ssl=True)
    refused = aiohttp.ClientConnectorCertificateError(key, _ssl_refusal("Hostname mismatch, certificate is not valid"))
    assert not hasattr(refused, "verify_message")
    assert certificate_refused(refused) == "Hostname mismatch, certificate is not valid"


def test_an_error_that_is_no_certificate_refusal_gives_none():
    assert certificate_refused(ConnectionRefusedError(111, "connection refused")) is None
