"""The two Services of one InferenceDeployment (pure).

- ``NAME`` (ClusterIP): the simple endpoint. kube-proxy balances *connections*,
  and gRPC keeps one connection open, so a client sticks to one pod. Fine for
  many small clients; with few heavy clients set runtime.maxConnectionAgeSeconds
  so connections re-balance after a scale-up.
- ``NAME-headless``: one DNS A record per ready pod, for client-side load
  balancing (``dns:///NAME-headless.NS.svc:8001`` with the ``round_robin``
  policy). Use it for few, heavy clients that need every pod busy.
"""

from __future__ import annotations

from typing import Any

from kubeinfer_operator import naming
from kubeinfer_operator.builders.meta import child_metadata
from kubeinfer_operator.spec import InferenceSpec


def _port(name: str, port: int, app_protocol: str) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": name, "protocol": "TCP", "appProtocol": app_protocol}


def _service(spec: InferenceSpec, owner: dict[str, Any], name: str, ports: list[dict[str, Any]],
             **fields: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(spec, name, owner),
        "spec": {**fields, "selector": naming.selector_labels(spec.name), "ports": ports},
    }


def build_service(spec: InferenceSpec, owner: dict[str, Any]) -> dict[str, Any]:
    ports = [_port("grpc", naming.GRPC_PORT, "grpc"), _port("http", naming.HTTP_PORT, "http")]
    return _service(spec, owner, naming.service_name(spec.name), ports,
                    type="ClusterIP")


def build_headless_service(spec: InferenceSpec, owner: dict[str, Any]) -> dict[str, Any]:
    ports = [_port("grpc", naming.GRPC_PORT, "grpc"), _port("http", naming.HTTP_PORT, "http"),
             _port("metrics", naming.METRICS_PORT, "http")]
    return _service(spec, owner, naming.headless_service_name(spec.name), ports, clusterIP="None")
