"""Certificates and the admin kubeconfig for the local control plane (Python cryptography).

One CA for serving and client certificates, a service-account key pair and a separate
front-proxy CA for the aggregation layer, as kubeadm lays them out.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from pathlib import Path

def write_pki(pki: Path) -> None:
    """CA + serving/client certs, service-account keys and a separate front-proxy CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    year = datetime.timedelta(days=365)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def save_key(k, name):
        (pki / name).write_bytes(k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        os.chmod(pki / name, 0o600)

    def save_cert(c, name):
        (pki / name).write_bytes(c.public_bytes(serialization.Encoding.PEM))

    def name(cn, org=None):
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def ca(cn):
        k = key()
        c = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(now + 10 * year)
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(
                 digital_signature=True, key_cert_sign=True, crl_sign=True,
                 content_commitment=False, key_encipherment=False, data_encipherment=False,
                 key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()),
                            critical=False)
             .sign(k, hashes.SHA256()))
        return k, c

    def leaf(ca_key, ca_cert, subject, usage, sans=None):
        k = key()
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(now + year)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = ca("kubeinfer-local-ca")
    save_key(ca_key, "ca.key")
    save_cert(ca_cert, "ca.crt")

    sans = [x509.DNSName(n) for n in (
        "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local")]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "10.96.0.1")]
    k, c = leaf(ca_key, ca_cert, name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, sans)
    save_key(k, "apiserver.key")
    save_cert(c, "apiserver.crt")

    # Admin identity for kubectl, the controller manager, the scheduler and kwok:
    # system:masters bypasses RBAC, so RBAC stays on for everyone else.
    k, c = leaf(ca_key, ca_cert, name("kubeinfer-admin", "system:masters"),
                ExtendedKeyUsageOID.CLIENT_AUTH)
    save_key(k, "admin.key")
    save_cert(c, "admin.crt")

    sa = ec.generate_private_key(ec.SECP256R1())
    save_key(sa, "sa.key")
    (pki / "sa.pub").write_bytes(sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    # Aggregation layer: its own CA, different from the client CA.
    fp_key, fp_cert = ca("kubeinfer-front-proxy-ca")
    save_cert(fp_cert, "front-proxy-ca.crt")
    save_key(fp_key, "front-proxy-ca.key")
    k, c = leaf(fp_key, fp_cert, name("front-proxy-client"), ExtendedKeyUsageOID.CLIENT_AUTH)
    save_key(k, "front-proxy-client.key")
    save_cert(c, "front-proxy-client.crt")


def kubeconfig_text(server: str, pki: Path) -> str:
    return json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubeinfer-local", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": "kubeinfer-admin", "user": {
            "client-certificate": str(pki / "admin.crt"),
            "client-key": str(pki / "admin.key")}}],
        "contexts": [{"name": "kubeinfer-local", "context": {
            "cluster": "kubeinfer-local", "user": "kubeinfer-admin"}}],
        "current-context": "kubeinfer-local",
    }, indent=2) + "\n"
