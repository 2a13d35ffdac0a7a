"""Decide, from what the cluster holds and the clock, which certificates to keep and which to issue.

``plan_certificates`` is pure apart from the keys it asks ``new_key`` for:
given the decoded data of the existing Secrets it keeps every certificate that
is still right (signed by the current CA, the right names, the configured
lifetime, more than a third of its life left) and issues the rest. Renewing the
CA re-issues everything it signed.
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
    issued: tuple[str, ...]

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem


@dataclasses.dataclass(frozen=True)
class LeafRequest:
    """One leaf certificate an InferenceDeployment needs: where it is kept, its names, its purpose."""

    secret_name: str
    common_name: str
    what: str  # how the issued list names it
    dns_names: tuple[str, ...] = ()
    server: bool = False  # for serving (with DNS names), else for a client

    @classmethod
    def for_server(cls, spec: InferenceSpec, settings: Settings) -> LeafRequest:
        sans = naming.service_dns_names(spec.name, spec.namespace, settings.cluster_domain)
        return cls(naming.server_secret_name(spec.name), naming.service_name(spec.name), "server certificate",
                   dns_names=tuple(sans), server=True)

    @classmethod
    def for_client(cls, spec: InferenceSpec, client: str) -> LeafRequest:
        return cls(naming.client_secret_name(spec.name, client), client, f"client certificate {client}")


@dataclasses.dataclass
class _Issuer:
    """Keeps or issues the certificates of one plan, at one instant, noting what it issued."""

    existing: SecretData
    now: dt.datetime
    new_key: certs.KeyFactory
    issued: list[str] = dataclasses.field(default_factory=list)

    def ca(self, spec: InferenceSpec, duration: dt.timedelta) -> Pair:
        current = certs.load_pair(self.existing.get(naming.ca_secret_name(spec.name)))
        if current is not None and not certs.needs_renewal(current.cert, self.now):
            return current
        key = self.new_key()
        self.issued.append("CA")
        cert = certs.issue_ca(f"kubeinfer-ca {spec.name}", key, self.now, duration, unit=spec.namespace)
        return Pair(cert, key)

    def leaf(self, ca: Pair, request: LeafRequest, duration: dt.timedelta) -> Pair:
        current = certs.load_pair(self.existing.get(request.secret_name))
        if current is not None and self._still_right(current, ca, request, duration):
            return current
        key = self.new_key()
        self.issued.append(request.what)
        cert = certs.issue_leaf(ca, key, request.common_name, self.now, duration,
                                dns_names=request.dns_names, server=request.server)
        return Pair(cert, key)

    def _still_right(self, pair: Pair, ca: Pair, request: LeafRequest, duration: dt.timedelta) -> bool:
        return (
            certs.signed_by(pair.cert, ca.cert)
            and certs.common_name(pair.cert) == request.common_name
            and sorted(certs.dns_names(pair.cert)) == sorted(request.dns_names)
            and certs.lifetime(pair.cert) == duration
            and not certs.needs_renewal(pair.cert, self.now)
        )


def plan_certificates(
    spec: InferenceSpec,
    existing: SecretData,
    now: dt.datetime,
    settings: Settings,
    *,
    external_client_ca: bytes = b"",
    new_key: certs.KeyFactory = certs.new_key,
) -> TlsMaterial | None:
    """The TLS material for ``spec`` (None when TLS is disabled)."""
    if not spec.tls.enabled:
        return None
    issuer = _Issuer(existing, now, new_key)
    ca = issuer.ca(spec, dt.timedelta(seconds=settings.ca_duration_seconds))
    duration = dt.timedelta(seconds=spec.tls.certificate_duration_seconds)
    server = issuer.leaf(ca, LeafRequest.for_server(spec, settings), duration)
    clients = {c: issuer.leaf(ca, LeafRequest.for_client(spec, c), duration) for c in spec.tls.clients}
    return TlsMaterial(ca, server, clients, ca.cert_pem + _external(external_client_ca), tuple(issuer.issued))


def _external(pem: bytes) -> bytes:
    """The external client CA bundle, re-encoded (so junk around it is dropped)."""
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs.load_bundle(pem))
