"""Certificate issuance and the keep-or-renew plan, over a controllable clock.

Covers: the CA is a CA and self-signed; the server certificate has every
Service DNS name as a SAN, serverAuth, and verifies against the CA (with
``openssl verify`` too, when openssl is installed); client certificates carry
the client's name as CN and clientAuth; a second plan with the same Secrets
keeps everything (no re-issue); renewal when a third of the life is left, not
before; a renewed CA re-issues what it signed; changed names (new client,
different cluster domain) re-issue only what changed; a certificate from
another CA is replaced; broken Secret data is replaced; the longest
allowed names fit X.509's 64-character CN limit; an external client CA
joins the server's client CA bundle; TLS disabled means no material.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from kubeinfer_operator import certs, naming
from kubeinfer_operator.certificate_plan import plan_certificates

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _secrets(spec, material):
    """The decoded Secret data the builders would store for ``material``."""
    data = {
        naming.ca_secret_name(spec.name): {"tls.crt": material.ca.cert_pem, "tls.key": material.ca.key_pem},
        naming.server_secret_name(spec.name): {"tls.crt": material.server.cert_pem, "tls.key": material.server.key_pem},
    }
    for client, pair in material.clients.items():
        data[naming.client_secret_name(spec.name, client)] = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem}
    return data


@pytest.fixture
def mutual(make_spec):
    return make_spec(tls={"mode": "Mutual", "clients": [{"name": "checkout"}, {"name": "risk-batch"}],
                          "certificateDurationSeconds": 90 * 86400})


def test_first_plan_issues_ca_server_and_clients(mutual, settings):
    material = plan_certificates(mutual, {}, NOW, settings)
    assert material.issued == ("CA", "server certificate", "client certificate checkout",
                               "client certificate risk-batch")
    ca = material.ca.cert
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert certs.signed_by(ca, ca)


def test_server_certificate_names_every_service(mutual, settings):
    material = plan_certificates(mutual, {}, NOW, settings)
    assert sorted(certs.dns_names(material.server.cert)) == sorted([
        "fraud", "fraud.ml", "fraud.ml.svc", "fraud.ml.svc.cluster.local",
        "fraud-headless", "fraud-headless.ml", "fraud-headless.ml.svc", "fraud-headless.ml.svc.cluster.local",
    ])
    usage = material.server.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert certs.signed_by(material.server.cert, material.ca.cert)
    assert material.server.cert.not_valid_after_utc - NOW < dt.timedelta(days=90)


def test_client_certificates(mutual, settings):
    material = plan_certificates(mutual, {}, NOW, settings)
    client = material.clients["checkout"].cert
    assert certs.common_name(client) == "checkout"
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert certs.signed_by(client, material.ca.cert)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_verifies_the_chain(mutual, settings, tmp_path):
    material = plan_certificates(mutual, {}, dt.datetime.now(dt.UTC), settings)
    (tmp_path / "ca.crt").write_bytes(material.ca.cert_pem)
    (tmp_path / "server.crt").write_bytes(material.server.cert_pem)
    (tmp_path / "other.crt").write_bytes(plan_certificates(mutual, {}, NOW, settings).server.cert_pem)
    ok = subprocess.run(["openssl", "verify", "-CAfile", "ca.crt", "-purpose", "sslserver", "server.crt"],
                        cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    foreign = subprocess.run(["openssl", "verify", "-CAfile", "ca.crt", "other.crt"],
                             cwd=tmp_path, capture_output=True, text=True)
    assert foreign.returncode != 0


def test_second_plan_keeps_everything(mutual, settings):
    first = plan_certificates(mutual, {}, NOW, settings)
    second = plan_certificates(mutual, _secrets(mutual, first), NOW + 10 * DAY, settings)
    assert second.issued == ()
    assert second.server.cert_pem == first.server.cert_pem
    assert second.clients["checkout"].key_pem == first.clients["checkout"].key_pem


def test_renewal_when_a_third_of_life_is_left(mutual, settings):
    first = plan_certificates(mutual, {}, NOW, settings)
    due = certs.renewal_time(first.server.cert)
    before = plan_certificates(mutual, _secrets(mutual, first), due - dt.timedelta(seconds=1), settings)
    assert before.issued == ()
    after = plan_certificates(mutual, _secrets(mutual, first), due, settings)
    assert after.issued == ("server certificate", "client certificate checkout", "client certificate risk-batch")
    assert after.ca.cert_pem == first.ca.cert_pem
    assert after.server.cert.not_valid_after_utc > first.server.cert.not_valid_after_utc


def test_renewed_ca_reissues_everything(mutual, settings):
    first = plan_certificates(mutual, {}, NOW, settings)
    late = certs.renewal_time(first.ca.cert)
    renewed = plan_certificates(mutual, _secrets(mutual, first), late, settings)
    assert renewed.issued[0] == "CA" and len(renewed.issued) == 4
    assert certs.signed_by(renewed.server.cert, renewed.ca.cert)
    assert not certs.signed_by(renewed.server.cert, first.ca.cert)


def test_only_changed_names_are_reissued(mutual, make_spec, settings):
    first = plan_certificates(mutual, {}, NOW, settings)
    more = make_spec(tls={"mode": "Mutual", "clients": [{"name": "checkout"}, {"name": "risk-batch"}, {"name": "new"}],
                          "certificateDurationSeconds": 90 * 86400})
    assert plan_certificates(more, _secrets(mutual, first), NOW, settings).issued == ("client certificate new",)
    other_domain = dataclasses.replace(settings, cluster_domain="corp.example")
    assert plan_certificates(mutual, _secrets(mutual, first), NOW, other_domain).issued == ("server certificate",)


def test_foreign_or_broken_certificates_are_replaced(mutual, settings):
    first = plan_certificates(mutual, {}, NOW, settings)
    stranger = plan_certificates(mutual, {}, NOW, settings)
    held = _secrets(mutual, first)
    held["fraud-tls"] = _secrets(mutual, stranger)["fraud-tls"]
    held["fraud-client-checkout"] = {"tls.crt": b"garbage", "tls.key": b"garbage"}
    fixed = plan_certificates(mutual, held, NOW, settings)
    assert fixed.issued == ("server certificate", "client certificate checkout")
    assert certs.signed_by(fixed.server.cert, first.ca.cert)


def test_external_client_ca_joins_the_bundle(make_spec, settings):
    spec = make_spec(tls={"mode": "Mutual", "clientCASecretName": "corp-ca"})
    corp_key = certs.new_key()
    corp = certs.issue_ca("corp", corp_key, NOW, 365 * DAY)
    pem = corp.public_bytes(Encoding.PEM)
    material = plan_certificates(spec, {}, NOW, settings, external_client_ca=b"junk\n" + pem)
    assert [certs.common_name(c) for c in certs.load_bundle(material.client_ca_bundle)] == [
        "kubeinfer-ca fraud", "corp"]


def test_longest_names_fit_x509_limits(make_spec, settings):
    spec = make_spec(name="n" * 48, namespace="s" * 63,
                     tls={"mode": "Mutual", "clients": [{"name": "c" * 63}]})
    material = plan_certificates(spec, {}, NOW, settings)
    assert certs.common_name(material.ca.cert) == "kubeinfer-ca " + "n" * 48
    assert certs.common_name(material.clients["c" * 63].cert) == "c" * 63
    assert f"{'n' * 48}.{'s' * 63}.svc.cluster.local" in certs.dns_names(material.server.cert)


def test_disabled_tls_has_no_material(make_spec, settings):
    assert plan_certificates(make_spec(tls={"mode": "Disabled"}), {}, NOW, settings) is None
