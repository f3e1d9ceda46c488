"""A small private certificate authority for the fleet's MQTT broker: one CA, a server certificate naming
the broker's host names and addresses, and client certificates whose common name is the MQTT identity.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.contract.errors import EdgefleetError

# Backdating covers clocks of devices that are a little behind the host's.
_CLOCK_SKEW = datetime.timedelta(hours=1)


class CertificateError(EdgefleetError):
    """A certificate or key could not be made, read or written."""


@dataclass(frozen=True)
class Issued:
    """A private key and the certificate issued for it."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def write(self, cert_path: Path, key_path: Path) -> None:
        write_certificate(cert_path, self.cert)
        write_private_key(key_path, self.key)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: supported by every TLS stack an MQTT client or broker uses, and fast on small devices.
    return ec.generate_private_key(ec.SECP256R1())


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - _CLOCK_SKEW, now + datetime.timedelta(days=days)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    """Signatures for everyone; a CA signs certificates and CRLs, a leaf agrees keys (ECDHE in TLS)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(common_name: str = "edgefleet fleet CA", days: int = 3650) -> Issued:
    key = _new_key()
    not_before, not_after = _validity(days)
    subject = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def _leaf(
    ca: Issued,
    common_name: str,
    usage: x509.ObjectIdentifier,
    days: int,
    alt_names: list[x509.GeneralName] | None = None,
) -> Issued:
    key = _new_key()
    not_before, not_after = _validity(days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def make_server_cert(ca: Issued, hostnames: list[str], days: int = 825) -> Issued:
    """A broker certificate valid for every name in `hostnames` (DNS names or IP addresses): clients check
    that the host they connect to is one of them."""
    if not hostnames:
        raise CertificateError("the broker certificate needs at least one host name or IP address")
    alt_names: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    return _leaf(ca, hostnames[0], ExtendedKeyUsageOID.SERVER_AUTH, days, alt_names)


def make_client_cert(ca: Issued, identity: str, days: int = 825) -> Issued:
    """A client certificate whose common name is the MQTT identity (brokers configured to take the
    certificate's identity as the user name apply that user's ACL)."""
    return _leaf(ca, identity, ExtendedKeyUsageOID.CLIENT_AUTH, days)


def write_certificate(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Unencrypted PEM (a daemon must read it unattended), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def load_issued(cert_path: Path, key_path: Path) -> Issued:
    """Read back a certificate and its key written by `Issued.write`."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CertificateError(
            f"cannot read the certificate {cert_path} or its key {key_path}: {exc}; "
            "delete both to have new ones made"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_path} is not an elliptic-curve key made by edgefleet; delete it")
    return Issued(key, cert)
