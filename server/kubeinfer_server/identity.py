"""Who is calling: the client's identity from its verified certificate, and whether it may call.

The identity is the certificate's subject common name (CN) when it has one
(what the operator issues, and what ``--allowed-clients`` lists), else its
first URI subject alternative name (a SPIFFE ID, say), else its first DNS
name. Both transports hand their verified peer to ``Identity``: gRPC its auth
context, REST (Python's ``ssl``) the peer certificate dict.

A listener that verifies no client certificates serves everyone as
``anonymous``. One that does and meets a caller without a certificate:
gRPC refuses it at the TLS handshake (gRPC Python can only require client
certificates or not ask for them), REST lets the handshake finish so that the
call can be refused (UNAUTHENTICATED, HTTP 401) and logged as
``unauthenticated``; REST health endpoints answer it, for the kubelet's probes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kubeinfer_server.errors import PermissionDenied, Unauthenticated

ANONYMOUS = "anonymous"  # the listener verifies no client certificates
UNAUTHENTICATED = "unauthenticated"  # it does, and the caller presented none
UNNAMED = "unnamed"  # a verified certificate with neither a CN nor a URI or DNS name

# gRPC auth context properties, most preferred first
_GRPC_NAMES = ("x509_common_name", "peer_uri", "peer_dns")


def name_from_auth_context(auth: Mapping[str, Sequence[bytes]]) -> str:
    """The identity in a gRPC auth context; UNAUTHENTICATED when it holds no certificate."""
    for key in _GRPC_NAMES:
        values = auth.get(key)
        if values and values[0]:  # a certificate without a CN has an empty x509_common_name
            return values[0].decode()
    return UNNAMED if auth.get("x509_pem_cert") else UNAUTHENTICATED


def name_from_peercert(cert: Mapping | None) -> str:
    """The identity in ``ssl.SSLSocket.getpeercert()``; UNAUTHENTICATED when there is none."""
    if not cert:
        return UNAUTHENTICATED
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    sans = cert.get("subjectAltName", ())
    for kind in ("URI", "DNS"):
        for san_kind, value in sans:
            if san_kind == kind:
                return value
    return UNNAMED


class Identity:
    """The server's client policy: whether it verifies certificates, and the allow-list."""

    def __init__(self, allowed: frozenset[str], verifies_clients: bool = True) -> None:
        self.allowed = allowed
        self.verifies_clients = verifies_clients  # False: no client certificates, everyone is anonymous

    def check_certificate(self, client: str) -> None:
        """Raise ``Unauthenticated`` when the server verifies certificates and ``client`` had none."""
        if client == UNAUTHENTICATED and self.verifies_clients:
            raise Unauthenticated("this server requires a client certificate signed by its client CA")

    def of_grpc(self, context) -> str:
        if not self.verifies_clients:
            return ANONYMOUS
        return name_from_auth_context(context.auth_context())

    def of_peercert(self, cert: Mapping | None) -> str:
        if not self.verifies_clients:
            return ANONYMOUS
        return name_from_peercert(cert)

    def check(self, client: str) -> None:
        """Raise unless ``client`` may call: ``Unauthenticated`` or ``PermissionDenied``, saying why."""
        self.check_certificate(client)
        if self.allowed and client not in self.allowed:
            raise PermissionDenied(
                f"client '{client}' is not allowed to call this server (allowed: {', '.join(sorted(self.allowed))})"
            )
