"""Pure builders: the desired children of an InferenceDeployment, field by field.

Covers: the set of children per spec (TLS on/off, autoscaling on/off, PDB only
when more than one pod can run); standard labels and the controller owner
reference on every child; deterministic names; the Deployment (fetch init
container or a mounted PVC, env per the server contract, ports, probes,
resources, GPU limit + product selector + toleration, restricted security
profile, Prometheus annotations, rolling update that keeps capacity, grace
period, no spec.replicas under an HPA); both Services; the HPA (metric,
target, min/max, behavior); the PDB; the TLS Secrets and CA ConfigMap.
"""

from __future__ import annotations

import base64
import datetime as dt
import re

import pytest

from kubeinfer_operator.builders import desired_children
from kubeinfer_operator.builders.deployment import build_deployment, revision
from kubeinfer_operator.builders.scaling import build_hpa, build_pdb
from kubeinfer_operator.builders.services import build_headless_service, build_service
from kubeinfer_operator.certificate_plan import plan_certificates
from kubeinfer_operator.spec import SpecError

OWNER = {
    "apiVersion": "kubeinfer.io/v1alpha1",
    "kind": "InferenceDeployment",
    "name": "fraud",
    "uid": "0b7e6f3c-0000-4000-8000-000000000001",
    "controller": True,
    "blockOwnerDeletion": True,
}
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _kinds(objects):
    return [(o["kind"], o["metadata"]["name"]) for o in objects]


def _env(deployment):
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def test_children_of_a_plain_spec(make_spec, settings):
    spec = make_spec(tls={"mode": "Disabled"})
    assert _kinds(desired_children(spec, None, OWNER)) == [
        ("Service", "fraud"), ("Service", "fraud-headless"), ("Deployment", "fraud"),
    ]


def test_children_with_tls_autoscaling_and_clients(make_spec, settings):
    spec = make_spec(autoscaling={"maxReplicas": 4}, tls={"mode": "Mutual", "clients": [{"name": "checkout"}]})
    material = plan_certificates(spec, {}, NOW, settings)
    children = desired_children(spec, material, OWNER)
    assert _kinds(children) == [
        ("Secret", "fraud-ca"), ("Secret", "fraud-tls"), ("Secret", "fraud-client-checkout"),
        ("ConfigMap", "fraud-ca-bundle"), ("Service", "fraud"), ("Service", "fraud-headless"),
        ("Deployment", "fraud"), ("HorizontalPodAutoscaler", "fraud"), ("PodDisruptionBudget", "fraud"),
    ]
    for child in children:
        labels = child["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "kubeinfer-server"
        assert labels["app.kubernetes.io/instance"] == "fraud"
        assert labels["app.kubernetes.io/managed-by"] == "kubeinfer"
        assert child["metadata"]["ownerReferences"] == [OWNER]
        assert child["metadata"]["namespace"] == "ml"


def test_builders_are_deterministic(make_spec):
    spec = make_spec(replicas=3)
    assert desired_children(spec, None, OWNER) == desired_children(spec, None, OWNER)


def test_deployment_fetches_the_model_in_an_init_container(make_spec):
    spec = make_spec(model={"uri": "s3://models/fraud.onnx", "sha256": "c" * 64})
    pod = build_deployment(spec, OWNER)["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert fetch["command"] == ["kubeinfer-server"]
    assert fetch["args"] == ["fetch", "s3://models/fraud.onnx", "/models/fraud/model.onnx", "--sha256", "c" * 64]
    assert {"name": "model", "emptyDir": {}} in pod["volumes"]
    assert _env(build_deployment(spec, OWNER))["KUBEINFER_MODELS"] == "fraud=/models/fraud/model.onnx"


def test_deployment_mounts_a_pvc_instead_of_fetching(make_spec):
    spec = make_spec(model={"name": "m", "uri": "pvc://store/fraud/3/model.onnx"})
    deployment = build_deployment(spec, OWNER)
    pod = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "store", "readOnly": True}} in pod["volumes"]
    assert _env(deployment)["KUBEINFER_MODELS"] == "m=/models/m/fraud/3/model.onnx"


def test_server_env_follows_the_contract(make_spec):
    spec = make_spec(
        runtime={"executionProviders": ["TensorRT", "CUDA", "CPU"], "intraOpThreads": 2, "instances": 3,
                 "drainGraceSeconds": 20, "maxConnectionAgeSeconds": 60, "workers": 4,
                 "maxMessageBytes": 1048576, "accessLogSampleRate": 0.25},
        batching={"maxBatchSize": 16, "maxQueueDelayMicroseconds": 500, "preferredBatchSizes": [8, 16],
                  "maxQueueSize": 99},
        tls={"mode": "Mutual", "clients": [{"name": "a"}], "allowedClients": ["a", "b"]},
    )
    env = _env(build_deployment(spec, OWNER))
    assert env == {
        "KUBEINFER_MODEL_VERSION": revision(spec),
        "KUBEINFER_MODELS": "fraud=/models/fraud/model.onnx",
        "KUBEINFER_GRPC_PORT": "8001",
        "KUBEINFER_HTTP_PORT": "8000",
        "KUBEINFER_METRICS_PORT": "8002",
        "KUBEINFER_MAX_BATCH_SIZE": "16",
        "KUBEINFER_MAX_QUEUE_DELAY_US": "500",
        "KUBEINFER_MAX_QUEUE_SIZE": "99",
        "KUBEINFER_INSTANCES": "3",
        "KUBEINFER_PROVIDERS": "tensorrt,cuda,cpu",
        "KUBEINFER_GRACE_SECONDS": "20",
        "KUBEINFER_SHUTDOWN_DELAY_SECONDS": "5",
        "KUBEINFER_WORKERS": "4",
        "KUBEINFER_MAX_MESSAGE_BYTES": "1048576",
        "KUBEINFER_ACCESS_LOG_SAMPLE_RATE": "0.25",
        "KUBEINFER_PREFERRED_BATCH_SIZES": "8,16",
        "KUBEINFER_INTRA_OP_THREADS": "2",
        "KUBEINFER_MAX_CONNECTION_AGE_SECONDS": "60",
        "KUBEINFER_TLS_CERT": "/etc/kubeinfer/tls/tls.crt",
        "KUBEINFER_TLS_KEY": "/etc/kubeinfer/tls/tls.key",
        "KUBEINFER_TLS_CLIENT_CA": "/etc/kubeinfer/tls/ca.crt",
        "KUBEINFER_ALLOWED_CLIENTS": "a,b",
    }
    pod = build_deployment(spec, OWNER)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 40
    assert {"name": "tls", "secret": {"secretName": "fraud-tls", "defaultMode": 0o440}} in pod["volumes"]


PLATFORM = {
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccountName": "model-reader",
    "env": [{"name": "AWS_ENDPOINT_URL", "value": "http://store:8333"},
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "store", "key": "secret"}}}],
    "podLabels": {"team": "risk"},
    "podAnnotations": {"example.com/owner": "risk", "prometheus.io/port": "9999"},
    "priorityClassName": "inference",
    "runtimeClassName": "nvidia",
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway"}],
}


def test_store_credentials_reach_the_fetch_step_only(make_spec):
    spec = make_spec(model={"uri": "s3://models/fraud.onnx", "credentials": {"secretRef": {"name": "store"}}})
    pod = build_deployment(spec, OWNER)["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["envFrom"] == [{"secretRef": {"name": "store"}}]
    assert "envFrom" not in pod["containers"][0], "the server never needs the store's keys"
    with pytest.raises(SpecError, match="model.credentials must not be set for a pvc:// uri"):
        make_spec(model={"uri": "pvc://claim/m.onnx", "credentials": {"secretRef": {"name": "store"}}})


def test_platform_pod_settings(make_spec):
    template = build_deployment(make_spec(**PLATFORM), OWNER)["spec"]["template"]
    pod = template["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "model-reader" and pod["automountServiceAccountToken"] is False
    assert (pod["priorityClassName"], pod["runtimeClassName"]) == ("inference", "nvidia")
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kubeinfer-server",
                                                       "app.kubernetes.io/instance": "fraud"}}
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert template["metadata"]["labels"]["team"] == "risk"
    assert template["metadata"]["annotations"]["example.com/owner"] == "risk"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "8002", "the scrape port is the operator's"
    # the store's credentials reach the fetch container too, after the operator's variables in the server's
    fetch, server = pod["initContainers"][0], pod["containers"][0]
    assert fetch["env"] == PLATFORM["env"]
    assert server["env"][-2:] == PLATFORM["env"]
    assert not any(k.startswith("imagePull") for k in build_deployment(make_spec(), OWNER)["spec"]["template"]["spec"])


@pytest.mark.parametrize("extra,message", [
    ({"env": [{"name": "KUBEINFER_MAX_BATCH_SIZE", "value": "1"}]}, "env KUBEINFER_MAX_BATCH_SIZE"),
    ({"podLabels": {"app.kubernetes.io/instance": "other"}}, "podLabels must not set app.kubernetes.io/instance"),
    ({"runtime": {"accessLogSampleRate": 2}}, "runtime.accessLogSampleRate must be a number from 0 to 1"),
    ({"runtime": {"workers": 0}}, "workers must be an integer from 1 to 64"),
])
def test_platform_settings_that_cannot_work_are_refused(make_spec, extra, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        make_spec(**extra)


def test_server_tls_mode_has_no_client_ca(make_spec):
    env = _env(build_deployment(make_spec(tls={"mode": "Server"}), OWNER))
    assert "KUBEINFER_TLS_CERT" in env and "KUBEINFER_TLS_CLIENT_CA" not in env


def test_ports_and_probes(make_spec):
    plain = build_deployment(make_spec(tls={"mode": "Disabled"}), OWNER)
    server = plain["spec"]["template"]["spec"]["containers"][0]
    assert server["ports"] == [
        {"name": "grpc", "containerPort": 8001, "protocol": "TCP"},
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8002, "protocol": "TCP"},
    ]
    assert server["readinessProbe"]["grpc"] == {"port": 8001, "service": ""}
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8002}
    with_tls = build_deployment(make_spec(tls={"mode": "Server"}), OWNER)
    probe = with_tls["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"] == {"path": "/readyz", "port": 8002} and "grpc" not in probe


def test_restricted_security_profile(make_spec):
    pod = build_deployment(make_spec(), OWNER)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"] + pod["initContainers"]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["runAsNonRoot"] is True
        assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_gpu_adds_limit_selector_and_toleration(make_spec):
    spec = make_spec(
        gpu={"count": 2, "product": "NVIDIA-H100-80GB-HBM3"},
        resources={"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "16Gi"}},
        nodeSelector={"pool": "inference"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    )
    pod = build_deployment(spec, OWNER)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"memory": "16Gi", "nvidia.com/gpu": "2"},
    }
    assert pod["nodeSelector"] == {"pool": "inference", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]


def test_no_gpu_no_gpu_scheduling(make_spec):
    pod = build_deployment(make_spec(), OWNER)["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"}}


def test_rollout_keeps_capacity_and_metrics_are_scraped(make_spec):
    deployment = build_deployment(make_spec(replicas=3), OWNER)
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["replicas"] == 3
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8002", "prometheus.io/path": "/metrics"}
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kubeinfer-server", "app.kubernetes.io/instance": "fraud"}


def test_replicas_absent_under_autoscaling(make_spec):
    assert "replicas" not in build_deployment(make_spec(autoscaling={"maxReplicas": 3}), OWNER)["spec"]
    assert build_deployment(make_spec(), OWNER)["spec"]["replicas"] == 1


def test_services(make_spec):
    spec = make_spec()
    service = build_service(spec, OWNER)
    assert service["spec"]["ports"] == [
        {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}]
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/name": "kubeinfer-server", "app.kubernetes.io/instance": "fraud"}
    headless = build_headless_service(spec, OWNER)
    assert headless["metadata"]["name"] == "fraud-headless"
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc", "http", "metrics"]


def test_hpa_on_queue_depth(make_spec):
    spec = make_spec(autoscaling={"minReplicas": 2, "maxReplicas": 9, "targetQueueDepth": 6,
                                  "scaleDownStabilizationSeconds": 120})
    hpa = build_hpa(spec, OWNER)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraud"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 9)
    assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "kubeinfer_queue_depth"},
        "target": {"type": "AverageValue", "averageValue": "6"}}}]
    assert hpa["spec"]["behavior"] == {"scaleUp": {"stabilizationWindowSeconds": 0},
                                       "scaleDown": {"stabilizationWindowSeconds": 120}}
    assert build_hpa(make_spec(replicas=2), OWNER) is None


def test_pdb_only_when_more_than_one_pod(make_spec):
    assert build_pdb(make_spec(), OWNER) is None
    assert build_pdb(make_spec(replicas=1), OWNER) is None
    assert build_pdb(make_spec(replicas=2), OWNER)["spec"]["maxUnavailable"] == 1
    assert build_pdb(make_spec(autoscaling={"maxReplicas": 3}), OWNER) is not None


def test_tls_secrets_carry_the_issued_material(make_spec, settings):
    spec = make_spec(tls={"mode": "Mutual", "clients": [{"name": "checkout"}]})
    material = plan_certificates(spec, {}, NOW, settings)
    objects = {(o["kind"], o["metadata"]["name"]): o for o in desired_children(spec, material, OWNER)}
    server = objects[("Secret", "fraud-tls")]
    assert server["type"] == "kubernetes.io/tls"
    assert base64.b64decode(server["data"]["tls.crt"]) == material.server.cert_pem
    assert base64.b64decode(server["data"]["ca.crt"]) == material.ca.cert_pem
    client = objects[("Secret", "fraud-client-checkout")]
    assert set(client["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert client["metadata"]["labels"]["kubeinfer.io/client"] == "checkout"
    assert objects[("ConfigMap", "fraud-ca-bundle")]["data"] == {"ca.crt": material.ca.cert_pem.decode()}
    assert "tls.key" not in objects[("ConfigMap", "fraud-ca-bundle")]["data"]
