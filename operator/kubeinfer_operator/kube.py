"""The one module that talks to the Kubernetes API.

Server-side apply under the field manager ``kubeinfer`` (with force: the
operator is the controller of what it applies), lists by label, deletes with a
UID precondition, and the status subresource. Objects are plain dicts, as the
builders make them.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client, config

from kubeinfer_operator import kinds, naming

log = logging.getLogger(__name__)

Emit = Callable[[str, str, str], None]  # (Normal|Warning, reason, message): an Event about the object reconciled

# (apiVersion, kind) -> (path prefix, plural), from the kinds table. Static: no discovery round trips.
RESOURCES = {(k.api_version, k.kind): (k.path_prefix, k.plural) for k in kinds.ALL}


class ApiError(Exception):
    """A request the API server refused; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def _path(api_version: str, kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = RESOURCES[(api_version, kind)]
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}" if namespace else f"{prefix}/{plural}"
    if name is not None:
        path += f"/{quote(name)}"
    if sub is not None:
        path += f"/{sub}"
    return path


class Kube:
    """A thin, thread-safe client for the calls the reconciler makes."""

    # Told of every write the operator makes (kind, "apply" or "delete"): the operator's metrics.
    on_write: Callable[[str, str], None] | None = None

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api = api_client

    def _request(self, method: str, path: str, query: list[tuple[str, str]] | None = None,
                 body: Any = None, content_type: str | None = None) -> dict[str, Any]:
        data = self._call(method, path, query, body, content_type)
        return json.loads(data) if data else {}

    def _call(self, method: str, path: str, query: list[tuple[str, str]] | None = None,
              body: Any = None, content_type: str | None = None, accept: str = "application/json") -> bytes:
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        serialized = self._api.param_serialize(
            method=method, resource_path=path, query_params=query or [], header_params=headers,
            body=body, auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(*serialized, _request_timeout=30)
        except client.ApiException as exc:
            raise ApiError(exc.status or 0, str(exc.reason), str(exc.body or "")) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(0, "Unreachable", str(exc)) from exc
        data = response.read()
        if not 200 <= response.status < 300:
            raise ApiError(response.status, str(response.reason), _message(data))
        return bytes(data)

    def _wrote(self, kind: str, verb: str) -> None:
        if self.on_write is not None:
            self.on_write(kind, verb)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", _path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        found = self._request("GET", _path(api_version, kind, namespace), [("labelSelector", selector)])
        items = found.get("items") or []
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """A JSON merge patch (None deletes a key): for the one annotation a person sets and the operator clears."""
        self._wrote(kind, "patch")
        self._request("PATCH", _path(api_version, kind, namespace, name), body=dict(patch),
                      content_type="application/merge-patch+json")

    def post_event(self, about: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``about``. Posted here, not through kopf: kopf's poster works only inside its
        own per-object handlers, and the resync and recheck loops reconcile outside them."""
        meta = about["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": about.get("apiVersion") or naming.API_VERSION,
                               "kind": about.get("kind") or naming.KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid", "")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": naming.FIELD_MANAGER}, "reportingComponent": naming.FIELD_MANAGER,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        self._request("POST", f"/api/v1/namespaces/{quote(meta['namespace'])}/events", body=body,
                      content_type="application/json")

    def log_tail(self, namespace: str, pod: str, container: str, lines: int = 1) -> str:
        """The last ``lines`` lines a container of a pod wrote (its current run)."""
        path = _path(kinds.POD.api_version, kinds.POD.kind, namespace, pod, "log")
        query = [("container", container), ("tailLines", str(lines))]
        # The log endpoint serves text but accepts only the API media types or */* in Accept.
        return self._call("GET", path, query, accept="*/*").decode("utf-8", "replace")

    def resize_pod(self, namespace: str, pod: str, container: str, resources: Mapping[str, Any]) -> None:
        """In-place resize of one container of a running pod: a strategic merge patch of its resources
        onto the pod's ``resize`` subresource (the kubelet applies it without a restart)."""
        path = _path(kinds.POD.api_version, kinds.POD.kind, namespace, pod, "resize")
        body = {"spec": {"containers": [{"name": container, "resources": dict(resources)}]}}
        self._wrote("Pod/resize", "patch")
        self._request("PATCH", path, body=body, content_type="application/strategic-merge-patch+json")

    def apply(self, obj: Mapping[str, Any], subresource: str | None = None,
              manager: str = naming.FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply of ``obj`` (created if missing); returns the object as stored."""
        meta = obj["metadata"]
        path = _path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"], subresource)
        query = [("fieldManager", manager), ("force", "true")]
        self._wrote(obj["kind"] + (f"/{subresource}" if subresource else ""), "apply")
        return self._request("PATCH", path, query, dict(obj), "application/apply-patch+yaml")

    def apply_status(self, parent: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        meta = parent["metadata"]
        body = {
            "apiVersion": parent.get("apiVersion") or naming.API_VERSION,
            "kind": parent.get("kind") or naming.KIND,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "status": dict(status),
        }
        return self.apply(body, subresource="status")

    def delete(self, obj: Mapping[str, Any]) -> None:
        """Deletes ``obj`` if it is still the object we saw (same UID)."""
        meta = obj["metadata"]
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": meta["uid"]},
                "propagationPolicy": "Background"}
        self._wrote(obj["kind"], "delete")
        try:
            self._request("DELETE", _path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]),
                          body=body, content_type="application/json")
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise


def _message(data: bytes) -> str:
    try:
        return str(json.loads(data).get("message", ""))
    except (ValueError, AttributeError):
        return data[:500].decode("utf-8", "replace")


def connect(kubeconfig: str | None = None) -> Kube:
    """A client from ``kubeconfig``, else the in-cluster service account, else $KUBECONFIG as it is now."""
    configuration = client.Configuration()
    # One connection per concurrent reconcile (kopf's workers plus the child-event threads).
    configuration.connection_pool_maxsize = 32
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return Kube(client.ApiClient(configuration))
        except config.ConfigException:
            kubeconfig = os.environ.get("KUBECONFIG")
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return Kube(client.ApiClient(configuration))
