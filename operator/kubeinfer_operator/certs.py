"""Certificates for one InferenceDeployment: a CA, a server certificate, client certificates.

Pure functions over ``cryptography`` objects and a clock: callers pass ``now``
and the fresh private keys (``new_key``), so issuance and the renew-or-keep
decision are testable without waiting for time to pass. A certificate is
renewed when a third of its life is left. Keys are ECDSA P-256: fast to make,
and accepted by gRPC (BoringSSL), OpenSSL and Go.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Callable, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLOCK_SKEW = dt.timedelta(minutes=5)
PrivateKey = ec.EllipticCurvePrivateKey
KeyFactory = Callable[[], PrivateKey]


@dataclasses.dataclass(frozen=True)
class Pair:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def issue_ca(
    common_name: str, key: PrivateKey, now: dt.datetime, duration: dt.timedelta, unit: str | None = None
) -> x509.Certificate:
    """A self-signed CA certificate that may sign leaf certificates only.

    X.509 caps CN and OU at 64 characters each: callers pass short parts
    (an InferenceDeployment name is at most 48, a namespace at most 63).
    """
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if unit:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    name = x509.Name(attributes)
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )
    builder = (
        _validity(x509.CertificateBuilder(), now, duration)
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def issue_leaf(
    ca: Pair,
    key: PrivateKey,
    common_name: str,
    now: dt.datetime,
    duration: dt.timedelta,
    dns_names: Sequence[str] = (),
    server: bool = False,
    *,
    ip_addresses: Sequence[str] = (),
    organization: str | None = None,
) -> x509.Certificate:
    """A certificate signed by ``ca``: for serving (with DNS SANs) or for a client.

    ``ip_addresses`` adds IP SANs and ``organization`` an O attribute to the subject
    (Kubernetes reads client certificates' O as groups); the operator passes neither.
    """
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
    )
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        subject.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    builder = (
        _validity(x509.CertificateBuilder(), now, duration)
        .subject_name(x509.Name(subject))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    sans = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def _validity(builder: x509.CertificateBuilder, now: dt.datetime, duration: dt.timedelta) -> x509.CertificateBuilder:
    # Backdated so that a node whose clock is a little behind accepts it at once.
    start = now - CLOCK_SKEW
    return builder.not_valid_before(start).not_valid_after(start + duration)


def renewal_time(cert: x509.Certificate) -> dt.datetime:
    """When a third of the certificate's life is left."""
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - life / 3


def needs_renewal(cert: x509.Certificate, now: dt.datetime) -> bool:
    return now >= renewal_time(cert)


def lifetime(cert: x509.Certificate) -> dt.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName)


def common_name(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def load_pair(data: Mapping[str, bytes] | None) -> Pair | None:
    """The pair in a Secret's decoded data (``tls.crt``/``tls.key``), or None if absent or broken."""
    if not data or "tls.crt" not in data or "tls.key" not in data:
        return None
    try:
        cert = x509.load_pem_x509_certificate(data["tls.crt"])
        key = serialization.load_pem_private_key(data["tls.key"], password=None)
    except ValueError:
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return Pair(cert, key)


def load_bundle(pem: bytes) -> list[x509.Certificate]:
    """The certificates in a PEM bundle; an unreadable bundle is an empty one."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []
