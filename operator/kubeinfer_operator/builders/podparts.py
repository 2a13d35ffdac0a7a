"""Pod parts that the servers' Deployment and the batch Jobs share (pure).

The security contexts, the init step that fetches the model, the GPU's limit,
node selector and toleration, and the pod fields a platform sets: one place
each, so a server pod and a batch pod are built alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubeinfer_operator import naming
from kubeinfer_operator.spec import Gpu, Model, PodSettings, Runtime

RUN_AS = 65532
MODELS_DIR = "/models"


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


FETCH_CONTAINER = "fetch"


def model_dir(model: Model) -> str:
    """The folder the model volume is mounted at."""
    return f"{MODELS_DIR}/{model.name}"


def fetch_container(model: Model, runtime: Runtime, pod: PodSettings, path: str) -> dict[str, Any]:
    """The init step: ``kubeinfer-server fetch`` of model.uri to ``path`` (checked against model.sha256)."""
    args = ["fetch", model.uri, path]
    if model.sha256:
        args += ["--sha256", model.sha256]
    container: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        "image": runtime.image,
        "command": ["kubeinfer-server"],
        "args": args,
        # The fetch prints a one-line error naming the URI: it becomes the
        # termination message that the ModelFetchFailed condition quotes.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        **user_env(pod),
        **store_credentials(model),
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "model", "mountPath": model_dir(model)},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return with_pull_policy(container, runtime)


def with_pull_policy(container: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    if runtime.image_pull_policy:
        container["imagePullPolicy"] = runtime.image_pull_policy
    return container


def store_credentials(model: Model) -> dict[str, Any]:
    """model.credentials.secretRef: the Secret's keys (AWS_ACCESS_KEY_ID, ...) as a container's environment."""
    return secret_env(model.credentials_secret)


def secret_env(secret: str | None) -> dict[str, Any]:
    """A Secret's keys as a container's environment (envFrom); nothing without a Secret."""
    return {"envFrom": [{"secretRef": {"name": secret}}]} if secret else {}


def user_env(pod: PodSettings) -> dict[str, Any]:
    """spec.env for a container: the key only when there are some."""
    return {"env": [dict(e) for e in pod.env]} if pod.env else {}


def resources_with_gpu(resources: Mapping[str, Mapping[str, str]], gpu: Gpu | None) -> dict[str, Any]:
    out = {section: dict(values) for section, values in resources.items()}
    if gpu is not None:
        # Extended resources are limits only; the API server copies them to requests.
        out.setdefault("limits", {})[gpu.resource_name] = str(gpu.count)
    return out


def scheduling_fields(node_selector: Mapping[str, str], tolerations: Sequence[Mapping[str, Any]],
                      affinity: Mapping[str, Any], gpu: Gpu | None) -> dict[str, Any]:
    """nodeSelector, tolerations and affinity (with the GPU's product label and taint), those that apply."""
    selector = dict(node_selector)
    tolerated = [dict(t) for t in tolerations]
    if gpu is not None:
        if gpu.product:
            selector[naming.GPU_PRODUCT_LABEL] = gpu.product
        tolerated.append({"key": gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"})
    fields: dict[str, Any] = {}
    if selector:
        fields["nodeSelector"] = selector
    if tolerated:
        fields["tolerations"] = tolerated
    if affinity:
        fields["affinity"] = dict(affinity)
    return fields


def platform_fields(pod: PodSettings, selector_labels: Mapping[str, str]) -> dict[str, Any]:
    """The pod fields a platform sets (spec.imagePullSecrets, serviceAccountName, ...), those given."""
    fields: dict[str, Any] = {}
    if pod.image_pull_secrets:
        fields["imagePullSecrets"] = [{"name": n} for n in pod.image_pull_secrets]
    if pod.service_account_name:
        fields["serviceAccountName"] = pod.service_account_name
    if pod.priority_class_name:
        fields["priorityClassName"] = pod.priority_class_name
    if pod.runtime_class_name:
        fields["runtimeClassName"] = pod.runtime_class_name
    if pod.topology_spread_constraints:
        selector = {"matchLabels": dict(selector_labels)}
        fields["topologySpreadConstraints"] = [{"labelSelector": selector, **c}
                                               for c in pod.topology_spread_constraints]
    return fields
