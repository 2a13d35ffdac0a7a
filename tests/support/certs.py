"""Test certificates and Kubernetes-Secret-like volumes, made with ``cryptography``.

``make_ca`` makes a self-signed CA; ``server_cert`` and ``client_cert`` issue
leaves from it (EC P-256, short-lived, serverAuth / clientAuth). Every
``Issued`` carries its key and certificate as PEM and can write them to files.

``write_secret_volume`` and ``rotate_secret_volume`` lay files out the way the
kubelet's AtomicWriter does for a Secret volume: the payload lives in a
timestamped ``..<ts>`` directory, ``..data`` is a symlink to it, and each
visible file (``tls.crt``) is a symlink to ``..data/<file>``. A rotation writes
a new timestamped directory, points a ``..data_tmp`` symlink at it, renames
that over ``..data`` (one atomic step) and removes the old directory.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=1)
DATA = "..data"


@dataclass(frozen=True)
class Issued:
    """A private key and its certificate, both PEM."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    def write(self, directory, name: str) -> tuple[str, str]:
        """Write ``<name>.crt`` and ``<name>.key`` into ``directory``; returns (cert, key) paths."""
        cert, key = Path(directory) / f"{name}.crt", Path(directory) / f"{name}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        return str(cert), str(key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: x509.Name, key, issuer: Issued | None, extensions) -> Issued:
    """Sign a certificate for ``key``: by ``issuer``, or self-signed when it is None."""
    now = datetime.datetime.now(datetime.timezone.utc)
    signer_key = serialization.load_pem_private_key(issuer.key_pem, None) if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    cert = builder.sign(signer_key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Issued(key_pem, cert.public_bytes(serialization.Encoding.PEM))


def make_ca(common_name: str = "kubeinfer test CA") -> Issued:
    return _issue(_name(common_name), ec.generate_private_key(ec.SECP256R1()), None, [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                       encipher_only=False, decipher_only=False), True),
    ])


def _leaf(ca: Issued, common_name: str, usage, sans: list[x509.GeneralName]) -> Issued:
    extensions = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([usage]), False),
    ]
    if sans:
        extensions.append((x509.SubjectAlternativeName(sans), False))
    return _issue(_name(common_name), ec.generate_private_key(ec.SECP256R1()), ca, extensions)


def server_cert(ca: Issued, dns_names=("localhost",), ips=("127.0.0.1",)) -> Issued:
    sans = [x509.DNSName(d) for d in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    return _leaf(ca, dns_names[0] if dns_names else ips[0], ExtendedKeyUsageOID.SERVER_AUTH, sans)


def client_cert(ca: Issued, name: str) -> Issued:
    return _leaf(ca, name, ExtendedKeyUsageOID.CLIENT_AUTH, [])


def tls_secret(server: Issued, ca: Issued) -> dict[str, bytes]:
    """The payload of a cert-manager style TLS Secret: tls.crt, tls.key, ca.crt."""
    return {"tls.crt": server.cert_pem, "tls.key": server.key_pem, "ca.crt": ca.cert_pem}


def _write_payload(directory: Path, files: dict[str, bytes]) -> str:
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    payload = Path(tempfile.mkdtemp(prefix=stamp, dir=directory))
    for name, content in files.items():
        (payload / name).write_bytes(content)
    return payload.name


def write_secret_volume(directory, files: dict[str, bytes]) -> Path:
    """Lay out ``files`` in ``directory`` like a freshly mounted Secret volume."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.symlink(_write_payload(directory, files), directory / DATA)
    for name in files:
        os.symlink(f"{DATA}/{name}", directory / name)
    return directory


def rotate_secret_volume(directory, files: dict[str, bytes]) -> None:
    """Swap in new contents for the same file names in one atomic rename, as the kubelet does."""
    directory = Path(directory)
    old = os.readlink(directory / DATA)
    new = _write_payload(directory, files)
    os.symlink(new, directory / "..data_tmp")
    os.rename(directory / "..data_tmp", directory / DATA)
    shutil.rmtree(directory / old)
