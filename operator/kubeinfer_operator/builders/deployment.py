"""The Deployment of kubeinfer-server pods for one InferenceDeployment (pure).

Follows docs/server-contract.md: env-configured ``kubeinfer-server serve``,
REST on 8000, gRPC on 8001, metrics and health on 8002, TLS files in /etc/kubeinfer/tls/,
models in /models/<name>/ (fetched, then optimized in place with spec.optimization),
terminationGracePeriodSeconds = shutdown delay (5) + drain grace + 15.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from kubeinfer_operator import naming
from kubeinfer_operator.builders import podparts
from kubeinfer_operator.builders.meta import child_metadata
from kubeinfer_operator.builders.optimize import optimize_container
from kubeinfer_operator.spec import InferenceSpec

TLS_DIR = "/etc/kubeinfer/tls"
GRACE_MARGIN_SECONDS = 15
# After SIGTERM the server keeps answering new calls this long while EndpointSlices drop the pod.
SHUTDOWN_DELAY_SECONDS = 5
PROMETHEUS_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(naming.METRICS_PORT),
    "prometheus.io/path": "/metrics",
}


def model_path(spec: InferenceSpec) -> str:
    """Where the server finds the model file inside the pod."""
    if spec.model.pvc_path is not None:
        return f"{podparts.model_dir(spec.model)}/{spec.model.pvc_path}"
    return f"{podparts.model_dir(spec.model)}/model.onnx"


@dataclasses.dataclass(frozen=True)
class Placement:
    """Which Deployment a spec's pods go to: its name, its side, its replicas (None: not applied, the HPA
    owns them) and the spec it is built from, as written (kept on it: ``naming.SPEC_ANNOTATION``)."""

    name: str
    track: str = naming.STABLE
    replicas: int | None = None
    source: str = ""


def placement(spec: InferenceSpec, source: str = "") -> Placement:
    """The one Deployment of a spec outside a canary: ``NAME``, the spec's replicas unless the HPA owns them."""
    return Placement(naming.deployment_name(spec.name), naming.STABLE,
                     spec.desired_replicas if spec.autoscaling is None else None, source)


def revision(spec: InferenceSpec) -> str:
    """The revision of the pods ``spec`` makes: a hash of their template (before it names the revision)."""
    canonical = json.dumps(_pod_template(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def build_deployment(spec: InferenceSpec, owner: dict[str, Any], where: Placement | None = None) -> dict[str, Any]:
    where = where or placement(spec)
    selector = naming.selector_labels(spec.name)
    if where.name != naming.deployment_name(spec.name):  # a canary's: its pods apart from the other side's
        selector[naming.DEPLOYMENT_LABEL] = where.name
    body: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 3,
        "template": _revision_template(spec, selector),
    }
    if where.replicas is not None:  # with autoscaling the HPA owns the stable side's: applying them would fight it
        body["replicas"] = where.replicas
    metadata = child_metadata(spec, where.name, owner, **{naming.TRACK_LABEL: where.track})
    if where.source:
        metadata["annotations"] = {naming.SPEC_ANNOTATION: where.source}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": body}


def _revision_template(spec: InferenceSpec, selector: dict[str, str]) -> dict[str, Any]:
    """The pod template, naming its revision: a label, and the server's model_version."""
    template = _pod_template(spec)
    rev = revision(spec)
    template["metadata"]["labels"].update({**selector, naming.REVISION_LABEL: rev})
    server = template["spec"]["containers"][0]
    server["env"].insert(0, {"name": "KUBEINFER_MODEL_VERSION", "value": rev})
    return template


def _pod_template(spec: InferenceSpec) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": _grace_period_seconds(spec),
        "securityContext": podparts.pod_security_context(),
        "containers": [_server_container(spec)],
        "volumes": _volumes(spec),
    }
    if spec.model.pvc_claim is None:
        pod["initContainers"] = _init_containers(spec)
    pod.update(podparts.scheduling_fields(spec.node_selector, spec.tolerations, spec.affinity, spec.gpu))
    pod.update(podparts.platform_fields(spec.pod, naming.selector_labels(spec.name)))
    return {
        "metadata": {"labels": {**spec.pod.labels, **naming.labels(spec.name)},
                     "annotations": {**spec.pod.annotations, **PROMETHEUS_ANNOTATIONS}},
        "spec": pod,
    }


def _init_containers(spec: InferenceSpec) -> list[dict[str, Any]]:
    """The fetch, then (spec.optimization) the optimize step on the fetched file."""
    steps = [podparts.fetch_container(spec.model, spec.runtime, spec.pod, model_path(spec))]
    if spec.optimization is not None:
        steps.append(optimize_container(spec, model_path(spec)))
    return steps


def _grace_period_seconds(spec: InferenceSpec) -> int:
    return SHUTDOWN_DELAY_SECONDS + spec.runtime.drain_grace_seconds + GRACE_MARGIN_SECONDS


def _server_container(spec: InferenceSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "server",
        "image": spec.runtime.image,
        "command": ["kubeinfer-server"],
        "args": ["serve"],
        "env": [{"name": k, "value": v} for k, v in server_env(spec)] + [dict(e) for e in spec.pod.env],
        "ports": [
            {"name": "grpc", "containerPort": naming.GRPC_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": naming.HTTP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": naming.METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": _readiness_probe(spec),
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": naming.METRICS_PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        # Loading and warming a large model may take minutes; liveness waits for it.
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": naming.METRICS_PORT},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        "resources": podparts.resources_with_gpu(spec.resources, spec.gpu),
        "securityContext": podparts.container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": _server_mounts(spec),
    }
    return podparts.with_pull_policy(container, spec.runtime)


def _readiness_probe(spec: InferenceSpec) -> dict[str, Any]:
    # The kubelet's gRPC probe speaks plaintext only, so with TLS on the gRPC
    # port readiness asks the same health state over the metrics port instead.
    if spec.tls.enabled:
        check: dict[str, Any] = {"httpGet": {"path": "/readyz", "port": naming.METRICS_PORT}}
    else:
        check = {"grpc": {"port": naming.GRPC_PORT, "service": ""}}
    return {**check, "periodSeconds": 5, "failureThreshold": 2}


def server_env(spec: InferenceSpec) -> list[tuple[str, str]]:
    """The KUBEINFER_* settings of ``kubeinfer-server serve`` for this spec."""
    batching = spec.batching
    env = [
        ("KUBEINFER_MODELS", f"{spec.model.name}={model_path(spec)}"),
        ("KUBEINFER_GRPC_PORT", str(naming.GRPC_PORT)),
        ("KUBEINFER_HTTP_PORT", str(naming.HTTP_PORT)),
        ("KUBEINFER_METRICS_PORT", str(naming.METRICS_PORT)),
        ("KUBEINFER_MAX_BATCH_SIZE", str(batching.max_batch_size)),
        ("KUBEINFER_MAX_QUEUE_DELAY_US", str(batching.max_queue_delay_microseconds)),
        ("KUBEINFER_MAX_QUEUE_SIZE", str(batching.max_queue_size)),
        ("KUBEINFER_INSTANCES", str(spec.runtime.instances)),
        ("KUBEINFER_PROVIDERS", ",".join(p.lower() for p in spec.runtime.execution_providers)),
        ("KUBEINFER_GRACE_SECONDS", str(spec.runtime.drain_grace_seconds)),
        ("KUBEINFER_SHUTDOWN_DELAY_SECONDS", str(SHUTDOWN_DELAY_SECONDS)),
        ("KUBEINFER_WORKERS", str(spec.runtime.workers)),
        ("KUBEINFER_MAX_MESSAGE_BYTES", str(spec.runtime.max_message_bytes)),
        ("KUBEINFER_ACCESS_LOG_SAMPLE_RATE", repr(spec.runtime.access_log_sample_rate)),
    ]
    if batching.preferred_batch_sizes:
        env.append(("KUBEINFER_PREFERRED_BATCH_SIZES", ",".join(map(str, batching.preferred_batch_sizes))))
    if spec.runtime.intra_op_threads is not None:
        env.append(("KUBEINFER_INTRA_OP_THREADS", str(spec.runtime.intra_op_threads)))
    if spec.runtime.max_connection_age_seconds:
        env.append(("KUBEINFER_MAX_CONNECTION_AGE_SECONDS", str(spec.runtime.max_connection_age_seconds)))

    if spec.tls.enabled:
        env += [("KUBEINFER_TLS_CERT", f"{TLS_DIR}/tls.crt"), ("KUBEINFER_TLS_KEY", f"{TLS_DIR}/tls.key")]
    if spec.tls.mutual:
        env.append(("KUBEINFER_TLS_CLIENT_CA", f"{TLS_DIR}/ca.crt"))
        if spec.tls.allowed_clients:
            env.append(("KUBEINFER_ALLOWED_CLIENTS", ",".join(spec.tls.allowed_clients)))
    return env


def _server_mounts(spec: InferenceSpec) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "model", "mountPath": podparts.model_dir(spec.model), "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if spec.tls.enabled:
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    return mounts


def _volumes(spec: InferenceSpec) -> list[dict[str, Any]]:
    if spec.model.pvc_claim is not None:
        model: dict[str, Any] = {
            "name": "model",
            "persistentVolumeClaim": {"claimName": spec.model.pvc_claim, "readOnly": True},
        }
    else:
        model = {"name": "model", "emptyDir": {}}
    volumes = [model, {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]
    if spec.tls.enabled:
        # No subPath: the kubelet refreshes a projected Secret in place, and the
        # server reloads the renewed files without a restart.
        secret = {"secretName": naming.server_secret_name(spec.name), "defaultMode": 0o440}
        volumes.append({"name": "tls", "secret": secret})
    return volumes
