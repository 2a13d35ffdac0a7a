"""The TLS Secrets and the public CA ConfigMap of one InferenceDeployment (pure).

- ``NAME-ca`` (Secret): the CA certificate and key; only the operator reads it.
- ``NAME-tls`` (Secret): the server's certificate and key, and in ``ca.crt`` the
  CAs whose client certificates the server accepts.
- ``NAME-client-CLIENT`` (Secret): one per named client: ``tls.crt``,
  ``tls.key`` and ``ca.crt`` to verify the server.
- ``NAME-ca-bundle`` (ConfigMap): ``ca.crt`` alone, for clients that only
  verify the server (tls.mode Server) and must not read any private key.
"""

from __future__ import annotations

import base64
from typing import Any

from kubeinfer_operator import naming
from kubeinfer_operator.builders.meta import child_metadata
from kubeinfer_operator.certificate_plan import TlsMaterial
from kubeinfer_operator.spec import InferenceSpec


def ca_bundle_name(name: str) -> str:
    return f"{name}-ca-bundle"


def _secret(
    spec: InferenceSpec, owner: dict[str, Any], name: str, data: dict[str, bytes], **labels: str
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": child_metadata(spec, name, owner, **labels),
        "data": {k: base64.b64encode(v).decode("ascii") for k, v in data.items()},
    }


def build_tls_objects(
    spec: InferenceSpec, material: TlsMaterial | None, owner: dict[str, Any]
) -> list[dict[str, Any]]:
    if material is None:
        return []
    role = naming.ROLE_LABEL
    objects = [
        _secret(spec, owner, naming.ca_secret_name(spec.name),
                {"tls.crt": material.ca.cert_pem, "tls.key": material.ca.key_pem}, **{role: "ca"}),
        _secret(spec, owner, naming.server_secret_name(spec.name),
                {"tls.crt": material.server.cert_pem, "tls.key": material.server.key_pem,
                 "ca.crt": material.client_ca_bundle}, **{role: "server"}),
    ]
    for client, pair in material.clients.items():
        objects.append(_secret(
            spec, owner, naming.client_secret_name(spec.name, client),
            {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": material.ca_pem},
            **{role: "client", naming.CLIENT_LABEL: client},
        ))
    objects.append({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(spec, ca_bundle_name(spec.name), owner, **{role: "ca-bundle"}),
        "data": {"ca.crt": material.ca_pem.decode("ascii")},
    })
    return objects
