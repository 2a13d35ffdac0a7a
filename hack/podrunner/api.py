"""A small Kubernetes REST client for the runner: client-certificate kubeconfig, JSON in and out.

The runner needs a handful of calls (list pods on its node, patch pod status, read
Secrets and ConfigMaps, request service-account tokens, register its node), so it
speaks REST directly instead of through a generated client.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests


class ApiError(RuntimeError):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status


class Api:
    """JSON calls against the API server named in an admin kubeconfig."""

    def __init__(self, kubeconfig: str | Path) -> None:
        config = json.loads(Path(kubeconfig).read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.server = cluster["server"].rstrip("/")
        self.ca_file = cluster["certificate-authority"]
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only, never through a proxy
        self.session.verify = self.ca_file
        self.session.cert = (user["client-certificate"], user["client-key"])

    def call(self, method: str, path: str, body: Any = None, params: dict | None = None,
             content_type: str = "application/json", ok_missing: bool = False) -> Any:
        data = None if body is None else json.dumps(body)
        response = self.session.request(method, self.server + path, data=data, params=params,
                                        headers={"Content-Type": content_type}, timeout=30)
        if response.status_code == 404 and ok_missing:
            return None
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text)
        return response.json() if response.content else None

    # -- the calls the runner makes ------------------------------------------------------
    def pods_on_node(self, node: str) -> list[dict]:
        selector = f"spec.nodeName={node}"
        return self.call("GET", "/api/v1/pods", params={"fieldSelector": selector})["items"]

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        return self.call("GET", f"/api/v1/namespaces/{namespace}/{kind}/{quote(name)}",
                         ok_missing=True)

    def patch_pod_status(self, namespace: str, name: str, status: dict) -> None:
        self.call("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status",
                  {"status": status}, content_type="application/merge-patch+json")

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """What the kubelet does once a pod's containers are gone: delete with grace 0."""
        self.call("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}",
                  {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}, ok_missing=True)

    def token(self, namespace: str, service_account: str, pod: dict, seconds: int) -> str:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds, "boundObjectRef": {
                    "apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"],
                    "uid": pod["metadata"]["uid"]}}}
        out = self.call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/"
                                f"{service_account}/token", body)
        return out["status"]["token"]

    def apply_node(self, node: dict) -> None:
        name = node["metadata"]["name"]
        if self.call("GET", f"/api/v1/nodes/{name}", ok_missing=True) is None:
            self.call("POST", "/api/v1/nodes", node)
        self.call("PATCH", f"/api/v1/nodes/{name}/status", {"status": node["status"]},
                  content_type="application/merge-patch+json")

    def delete_node(self, name: str) -> None:
        self.call("DELETE", f"/api/v1/nodes/{name}", ok_missing=True)
