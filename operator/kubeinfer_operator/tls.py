"""Decide, from what the cluster holds and the clock, which certificates to keep and which to issue.

``plan`` is pure apart from the keys it asks ``new_key`` for: given the
decoded data of the existing Secrets it keeps every certificate that is still
right (signed by the current CA, the right names, the configured lifetime,
more than a third of its life left) and issues the rest. Renewing the CA
re-issues everything it signed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping

from cryptography.hazmat.primitives.serialization import Encoding

from kubeinfer_operator import certs, naming
from kubeinfer_operator.certs import Pair
from kubeinfer_operator.settings import Settings
from kubeinfer_operator.spec import InferenceSpec

SecretData = Mapping[str, Mapping[str, bytes]]


@dataclasses.dataclass(frozen=True)
class TlsMaterial:
    """The certificates one InferenceDeployment should have, and what was issued to get them."""

    ca: Pair
    server: Pair
    clients: Mapping[str, Pair]
    client_ca_bundle: bytes
    issued: tuple[str, ...] = ()

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem


def plan(
    spec: InferenceSpec,
    existing: SecretData,
    now: dt.datetime,
    settings: Settings,
    external_client_ca: bytes = b"",
    new_key: certs.KeyFactory = certs.new_key,
) -> TlsMaterial | None:
    """The TLS material for ``spec`` (None when TLS is disabled)."""
    if not spec.tls.enabled:
        return None
    issued: list[str] = []
    ca = _ca(spec, existing, now, settings, new_key, issued)
    duration = dt.timedelta(seconds=spec.tls.certificate_duration_seconds)
    sans = naming.service_dns_names(spec.name, spec.namespace, settings.cluster_domain)
    server = _leaf(
        existing.get(naming.server_secret_name(spec.name)), ca, naming.service_name(spec.name),
        sans, True, now, duration, new_key, issued, "server certificate",
    )
    clients = {
        client: _leaf(
            existing.get(naming.client_secret_name(spec.name, client)), ca, client,
            (), False, now, duration, new_key, issued, f"client certificate {client}",
        )
        for client in spec.tls.clients
    }
    return TlsMaterial(ca, server, clients, ca.cert_pem + _external(external_client_ca), tuple(issued))


def _ca(
    spec: InferenceSpec, existing: SecretData, now: dt.datetime, settings: Settings,
    new_key: certs.KeyFactory, issued: list[str],
) -> Pair:
    current = certs.load_pair(existing.get(naming.ca_secret_name(spec.name)))
    if current is not None and not certs.needs_renewal(current.cert, now):
        return current
    key = new_key()
    issued.append("CA")
    duration = dt.timedelta(seconds=settings.ca_duration_seconds)
    return Pair(certs.issue_ca(f"kubeinfer-ca {spec.name}", key, now, duration, unit=spec.namespace), key)


def _leaf(
    data: Mapping[str, bytes] | None, ca: Pair, cn: str, sans: list[str] | tuple[str, ...], server: bool,
    now: dt.datetime, duration: dt.timedelta, new_key: certs.KeyFactory, issued: list[str], what: str,
) -> Pair:
    current = certs.load_pair(data)
    if current is not None and _still_right(current, ca, cn, sans, now, duration):
        return current
    key = new_key()
    issued.append(what)
    return Pair(certs.issue_leaf(ca, key, cn, now, duration, dns_names=sans, server=server), key)


def _still_right(
    pair: Pair, ca: Pair, cn: str, sans: list[str] | tuple[str, ...], now: dt.datetime, duration: dt.timedelta
) -> bool:
    return (
        certs.signed_by(pair.cert, ca.cert)
        and certs.common_name(pair.cert) == cn
        and sorted(certs.dns_names(pair.cert)) == sorted(sans)
        and certs.lifetime(pair.cert) == duration
        and not certs.needs_renewal(pair.cert, now)
    )


def _external(pem: bytes) -> bytes:
    """The external client CA bundle, re-encoded (so junk around it is dropped)."""
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs.load_bundle(pem))


def next_renewal(material: TlsMaterial | None) -> dt.datetime | None:
    """The earliest time any certificate in ``material`` is due for renewal."""
    if material is None:
        return None
    pairs = [material.ca, material.server, *material.clients.values()]
    return min(certs.renewal_time(p.cert) for p in pairs)
