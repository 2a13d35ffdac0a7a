"""Deterministic child names, labels and DNS names, all derived from the parent.

A child's name is a function of its parent's name only, so a restarted
operator finds what it made before instead of making it twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

GROUP = "kubeinfer.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceDeployment"
PLURAL = "inferencedeployments"
BATCH_KIND = "InferenceBatchJob"
BATCH_PLURAL = "inferencebatchjobs"
FIELD_MANAGER = "kubeinfer"
HANDOVER_MANAGER = "kubeinfer-handover-to-hpa"
MANAGED_BY = "kubeinfer"
SERVER_APP = "kubeinfer-server"
BATCH_APP = "kubeinfer-batch"

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
QUEUE_DEPTH_METRIC = "kubeinfer_queue_depth"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

# spec.runtime.executionProviders -> the ONNX Runtime provider the server reports in
# kubeinfer_model_info{providers} (the server's model.PROVIDER_NAMES; a contract test holds them equal).
ORT_PROVIDERS = {"TensorRT": "TensorrtExecutionProvider", "CUDA": "CUDAExecutionProvider",
                 "CPU": "CPUExecutionProvider"}

ROLE_LABEL = "kubeinfer.io/role"
CLIENT_LABEL = "kubeinfer.io/client"
# Rollouts: each server pod's revision (a hash of its pod template, also its model_version), the
# Deployment a pod belongs to (in the selector of every Deployment but the first, ``NAME``), which
# side a Deployment is (metadata only: promotion relabels it, no pod restarts), the spec it was
# built from (a canary's stable side is rebuilt from it), and the command a person gives.
REVISION_LABEL = "kubeinfer.io/revision"
DEPLOYMENT_LABEL = "kubeinfer.io/deployment"
TRACK_LABEL = "kubeinfer.io/track"
STABLE, CANARY = "stable", "canary"
SPEC_ANNOTATION = "kubeinfer.io/spec"
ROLLOUT_ANNOTATION = "kubeinfer.io/rollout"
ROLLOUT_COMMANDS = ("promote", "abort", "pause", "resume")


# The labels the operator owns on every pod; podLabels may not set them (the CRD refuses too).
SELECTOR_LABEL_KEYS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by")


def selector_labels(name: str) -> dict[str, str]:
    """The labels that select this InferenceDeployment's pods (immutable once applied)."""
    return {"app.kubernetes.io/name": SERVER_APP, "app.kubernetes.io/instance": name}


def labels(name: str, **extra: str) -> dict[str, str]:
    """The labels every child carries."""
    return {**selector_labels(name), "app.kubernetes.io/managed-by": MANAGED_BY, **extra}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def children_selector(name: str) -> str:
    """Selects every child of ``name`` (and its pods)."""
    return selector_string(name) + f",app.kubernetes.io/managed-by={MANAGED_BY}"


def revision_of(pod: Mapping[str, Any]) -> str:
    """The revision a server pod runs (its ``REVISION_LABEL``; "" for a pod made before rollouts)."""
    return str((pod["metadata"].get("labels") or {}).get(REVISION_LABEL, ""))


def deployment_name(name: str) -> str:
    """The first Deployment's name; a canary's is ``canary_deployment_name``."""
    return name


def canary_deployment_name(name: str, revision: str) -> str:
    return f"{name}-{revision}"


def service_name(name: str) -> str:
    return name


def headless_service_name(name: str) -> str:
    return f"{name}-headless"


def hpa_name(name: str) -> str:
    return name


def pdb_name(name: str) -> str:
    return name


def ca_secret_name(name: str) -> str:
    return f"{name}-ca"


def server_secret_name(name: str) -> str:
    return f"{name}-tls"


def client_secret_name(name: str, client: str) -> str:
    return f"{name}-client-{client}"


def service_dns_names(name: str, namespace: str, cluster_domain: str) -> list[str]:
    """Every name a client may dial the server by: the certificate's SANs."""
    names = []
    for service in (service_name(name), headless_service_name(name)):
        names += [
            service,
            f"{service}.{namespace}",
            f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.{cluster_domain}",
        ]
    return names


def endpoint(name: str, namespace: str) -> str:
    return f"{service_name(name)}.{namespace}.svc:{GRPC_PORT}"


def headless_endpoint(name: str, namespace: str) -> str:
    return f"{headless_service_name(name)}.{namespace}.svc:{GRPC_PORT}"


def batch_selector_labels(name: str) -> dict[str, str]:
    """The labels of an InferenceBatchJob's Jobs, CronJob and pods (apart from the server pods' by name)."""
    return {"app.kubernetes.io/name": BATCH_APP, "app.kubernetes.io/instance": name}


def batch_labels(name: str) -> dict[str, str]:
    return {**batch_selector_labels(name), "app.kubernetes.io/managed-by": MANAGED_BY}


def batch_selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in batch_labels(name).items())


def batch_job_name(name: str) -> str:
    """The Job of a one-off InferenceBatchJob, and the CronJob of a scheduled one."""
    return name


def owner_reference(parent: Mapping[str, object], kind: str = KIND) -> dict[str, object]:
    """The controller owner reference to ``parent`` (an InferenceDeployment body, or one of ``kind``)."""
    meta = parent["metadata"]
    assert isinstance(meta, Mapping)
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
