"""Where the built binaries live: the versioned cache named from hack/versions.env.

The directory name must match hack/build-controlplane.sh.
"""

from __future__ import annotations

import os
from pathlib import Path

HACK = Path(__file__).resolve().parents[1]
VERSIONS_FILE = HACK / "versions.env"

# The real node's, from `hack/build-controlplane.sh node` (make cluster-build builds both).
NODE_BINARIES = ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "crictl")


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    versions = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            versions[key.strip()] = value.strip()
    return versions


def cache_base() -> Path:
    """~/.cache/kubeinfer, or $KUBEINFER_CACHE: every heavy build's cache lives under it."""
    return Path(os.environ.get("KUBEINFER_CACHE", Path.home() / ".cache" / "kubeinfer"))


def cache_root() -> Path:
    """The versioned control-plane cache directory; must match hack/build-controlplane.sh."""
    v = read_versions()
    tag = (
        f"k8s-{v['KUBE_VERSION']}_etcd-{v['ETCD_VERSION']}"
        f"_kwok-{v['KWOK_VERSION']}_helm-{v['HELM_VERSION']}"
    )
    return cache_base() / "controlplane" / tag


def bin_dir() -> Path:
    return cache_root() / "bin"


def missing_binaries() -> list[str]:
    """Names of core binaries not built yet (empty when the cache is warm)."""
    names = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
             "kubectl", "kwok", "helm", *NODE_BINARIES]
    missing = [n for n in names if not os.access(bin_dir() / n, os.X_OK)]
    if not (cache_root() / "kwok-stage").is_dir():
        missing.append("kwok-stage/")
    return missing
