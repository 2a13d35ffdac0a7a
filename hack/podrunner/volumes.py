"""Pod volumes materialised in a directory per pod, kept in sync with the API as the kubelet does.

Secret, ConfigMap and projected volumes (service-account token, ConfigMap, Secret,
downward API) are written with the kubelet's atomic writer layout
(``devkit.secretvolume``): an update swaps all files in one rename, so a reader sees
either all old or all new files: that is how a renewed certificate reaches a running server.

The API server here runs without the ServiceAccount admission plugin, so no pod spec
carries the ``kube-api-access`` volume; when a pod asks for its token to be mounted,
``service_account_volume`` adds what that plugin would have added.
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

from devkit.secretvolume import write_atomic

from .api import Api

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_VOLUME = "kube-api-access-runner"
TOKEN_SECONDS = 3607


class VolumeError(RuntimeError):
    """A volume's source is missing (the kubelet would report FailedMount)."""


def service_account_volume(pod: dict) -> tuple[dict, dict] | None:
    """The projected token volume and mount the ServiceAccount admission plugin would add."""
    spec = pod["spec"]
    if spec.get("automountServiceAccountToken") is False:
        return None
    for c in spec["containers"]:
        if any(m["mountPath"] == SA_MOUNT for m in c.get("volumeMounts") or []):
            return None
    volume = {"name": SA_VOLUME, "projected": {"defaultMode": 0o644, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_SECONDS}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
                                    "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]}}
    return volume, {"name": SA_VOLUME, "mountPath": SA_MOUNT, "readOnly": True}


def _items(data: dict[str, bytes], items: list[dict] | None, mode: int) -> dict[str, tuple[bytes, int]]:
    if not items:
        return {k: (v, mode) for k, v in data.items()}
    out = {}
    for item in items:
        if item["key"] not in data:
            raise VolumeError(f"key {item['key']} not found")
        out[item["path"]] = (data[item["key"]], item.get("mode", mode))
    return out


def _field(pod: dict, path: str) -> bytes:
    meta = pod["metadata"]
    values = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
              "metadata.uid": meta["uid"], "spec.nodeName": pod["spec"].get("nodeName", ""),
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default")}
    return values.get(path, "").encode()


class Volume:
    """One pod volume on disk; ``refresh`` rewrites it when its source changed."""

    def __init__(self, spec: dict, root: Path, pod: dict, api: Api) -> None:
        self.spec, self.pod, self.api = spec, pod, api
        self.name = spec["name"]
        self.dir = root / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.digest = ""
        self.token: tuple[str, float] | None = None  # (token, refresh after)

    @property
    def synced(self) -> bool:
        return any(k in self.spec for k in ("secret", "configMap", "projected"))

    def refresh(self) -> bool:
        """Write the current content if it changed; True when it did."""
        if not self.synced:
            if "emptyDir" not in self.spec:
                kind = next(iter(k for k in self.spec if k != "name"), "?")
                raise VolumeError(f"volume type {kind} is not supported by the pod runner")
            return False
        files = self._files()
        digest = hashlib.sha256(repr(sorted((k, v) for k, v in files.items())).encode()).hexdigest()
        if digest == self.digest:
            return False
        write_atomic(self.dir, files)
        self.digest = digest
        return True

    def _files(self) -> dict[str, tuple[bytes, int]]:
        if "secret" in self.spec:
            return self._object_files(self.spec["secret"], "secrets", "secretName")
        if "configMap" in self.spec:
            return self._object_files(self.spec["configMap"], "configmaps", "name")
        projected = self.spec["projected"]
        files: dict[str, tuple[bytes, int]] = {}
        for source in projected["sources"]:
            files.update(self._projection(source, projected.get("defaultMode", 0o644)))
        return files

    def _data(self, kind: str, name: str, optional: bool) -> dict[str, bytes]:
        obj = self.api.get(kind, self.pod["metadata"]["namespace"], name)
        if obj is None:
            if optional:
                return {}
            raise VolumeError(f'{kind[:-1]} "{name}" not found')
        if kind == "secrets":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        return {k: v.encode() for k, v in (obj.get("data") or {}).items()}

    def _object_files(self, source: dict, kind: str, key: str, mode: int | None = None):
        data = self._data(kind, source[key], bool(source.get("optional")))
        return _items(data, source.get("items"), source.get("defaultMode", mode or 0o644))

    def _projection(self, source: dict, mode: int) -> dict[str, tuple[bytes, int]]:
        if "secret" in source:
            return self._object_files(source["secret"], "secrets", "name", mode)
        if "configMap" in source:
            return self._object_files(source["configMap"], "configmaps", "name", mode)
        if "downwardAPI" in source:
            return {i["path"]: (_field(self.pod, i["fieldRef"]["fieldPath"]), mode)
                    for i in source["downwardAPI"]["items"] if "fieldRef" in i}
        token = source["serviceAccountToken"]
        seconds = token.get("expirationSeconds", TOKEN_SECONDS)
        if self.token is None or time.time() > self.token[1]:
            sa = self.pod["spec"].get("serviceAccountName") or "default"
            value = self.api.token(self.pod["metadata"]["namespace"], sa, self.pod, seconds)
            self.token = (value, time.time() + 0.8 * seconds)  # the kubelet renews at 80%
        return {token["path"]: (self.token[0].encode(), 0o600 if mode == 0o644 else mode)}
