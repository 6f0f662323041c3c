"""A throwaway PKI for TLS tests: a CA, a server certificate for 127.0.0.1, two client certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path  # another client of the same CA (CN "another client"), for tls.client_names
    other_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)  # as deployed: a looser key is warned about, by the agent and by snapctl
    return path


def _issue(subject: str, key, issuer: x509.Name, issuer_key, *, ca: bool, usage=None, san=None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("snapctl test ca", ca_key, _name("snapctl test ca"), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue("127.0.0.1", server_key, ca_cert.subject, ca_key, ca=False,
                         usage=ExtendedKeyUsageOID.SERVER_AUTH,
                         san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue("snapctl", client_key, ca_cert.subject, ca_key, ca=False,
                         usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_cert = _issue("another client", other_key, ca_cert.subject, ca_key, ca=False,
                        usage=ExtendedKeyUsageOID.CLIENT_AUTH)

    def pem(cert: x509.Certificate, name: str) -> Path:
        path = directory / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    return Pki(
        ca=pem(ca_cert, "ca.pem"),
        server_cert=pem(server_cert, "server.pem"),
        server_key=_write_key(server_key, directory / "server.key"),
        client_cert=pem(client_cert, "client.pem"),
        client_key=_write_key(client_key, directory / "client.key"),
        other_client_cert=pem(other_cert, "other-client.pem"),
        other_client_key=_write_key(other_key, directory / "other-client.key"),
    )
