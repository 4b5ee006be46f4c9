"""A site's small PKI for the broker: a CA, the broker's server certificate, client certificates.

Keys are ECDSA P-256 (small, fast, understood by every OpenSSL a Mosquitto links against).
Private keys are written 0600; certificates are public. A site may bring its own CA (cert and
key) instead of the generated one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meterhub.security.files import read_private_file, write_private_file

CA_DAYS = 3650
SERVER_DAYS = 825  # what browsers and most TLS stacks still accept for a leaf
CLIENT_DAYS = 365


class CertificateError(ValueError):
    """A certificate or key that cannot be used as asked."""


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        """Load a CA (generated here or brought by the site); the key file must be 0600."""
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(
            read_private_file(key_path, f"CA key {key_path.name}"), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"{key_path}: only EC CA keys are supported here")
        if cert.public_key() != key.public_key():
            raise CertificateError(f"{key_path} is not the key of {cert_path}")
        return cls(cert, key)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_private_file(path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meterhub"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create_ca(cert_path: Path, key_path: Path, *, site: str,
              days: int = CA_DAYS) -> CertificateAuthority:
    """A new CA for one site; it signs only leaf certificates (path length 0)."""
    key = _new_key()
    now = datetime.now(UTC)
    name = _name(f"meterhub {site} CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return CertificateAuthority(cert, key)


def _san(hostnames: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def issue_certificate(
    ca: CertificateAuthority,
    cert_path: Path,
    key_path: Path,
    *,
    common_name: str,
    server_names: tuple[str, ...] = (),
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    days: int = CLIENT_DAYS,
) -> x509.Certificate:
    """Issue a leaf: a server certificate when ``server_names`` (DNS names or IPs, put in the
    SAN, which is what clients check) is given, else a client certificate whose CN is the
    MQTT identity (``use_identity_as_username``)."""
    if not server_names and not common_name:
        raise CertificateError("a client certificate needs a common name")
    key = _new_key()
    start = not_before or datetime.now(UTC) - timedelta(minutes=5)
    end = not_after or start + timedelta(days=days)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_agreement=True, key_cert_sign=False, crl_sign=False,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
    )
    if server_names:
        builder = builder.add_extension(_san(server_names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert
