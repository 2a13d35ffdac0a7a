"""Every certificate the development tooling and the tests make, issued through the product.

Issuance is written once, in ``kubeinfer_operator.certs`` (the operator's own CA, server
and client certificates: ECDSA P-256, backdated five minutes); this module only picks
names and lifetimes and writes files. Users: the test and e2e certificates
(``make_ca``, ``server_cert``, ``client_cert``: a day's lifetime) and the local control
plane's PKI (``localcluster.pki``: ``issue`` with its own lifetimes, ``write_signing_key``).

An ``Issued`` is the product's ``Pair`` (certificate and key) that can write itself as
``NAME.crt`` and ``NAME.key`` (mode 0600).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from kubeinfer_operator import certs

VALIDITY = dt.timedelta(days=1)


class Issued(certs.Pair):
    """A certificate and its private key (``cert``, ``key``, ``cert_pem``, ``key_pem``)."""

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    def write(self, directory: Path | str, name: str) -> tuple[str, str]:
        """Write ``<name>.crt`` and ``<name>.key`` into ``directory``; returns (cert, key) paths."""
        cert, key = Path(directory) / f"{name}.crt", Path(directory) / f"{name}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        os.chmod(key, 0o600)
        return str(cert), str(key)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(common_name: str = "kubeinfer test CA", duration: dt.timedelta = VALIDITY) -> Issued:
    """A self-signed CA that signs leaf certificates only."""
    key = certs.new_key()
    return Issued(certs.issue_ca(common_name, key, _now(), duration), key)


def issue(ca: certs.Pair, common_name: str, *, server: bool = False, dns_names: Sequence[str] = (),
          ip_addresses: Sequence[str] = (), organization: str | None = None,
          duration: dt.timedelta = VALIDITY) -> Issued:
    """A leaf signed by ``ca``: serverAuth with ``server``, else clientAuth (O = ``organization``)."""
    key = certs.new_key()
    cert = certs.issue_leaf(ca, key, common_name, _now(), duration, dns_names, server,
                            ip_addresses=ip_addresses, organization=organization)
    return Issued(cert, key)


def server_cert(ca: certs.Pair, dns_names: Sequence[str] = ("localhost",),
                ips: Sequence[str] = ("127.0.0.1",)) -> Issued:
    """A serving certificate for ``dns_names`` and ``ips``; CN = the first name."""
    return issue(ca, dns_names[0] if dns_names else ips[0], server=True, dns_names=dns_names, ip_addresses=ips)


def client_cert(ca: certs.Pair, name: str) -> Issued:
    """A client certificate with CN = ``name``."""
    return issue(ca, name)


def tls_secret(server: certs.Pair, ca: certs.Pair) -> dict[str, bytes]:
    """The payload of a cert-manager style TLS Secret: tls.crt, tls.key, ca.crt."""
    return {"tls.crt": server.cert_pem, "tls.key": server.key_pem, "ca.crt": ca.cert_pem}


def write_signing_key(directory: Path, name: str) -> None:
    """A fresh key pair as ``<name>.key`` (PKCS#8, mode 0600) and ``<name>.pub`` (SubjectPublicKeyInfo)."""
    key = certs.new_key()
    private = directory / f"{name}.key"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    os.chmod(private, 0o600)
    (directory / f"{name}.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
