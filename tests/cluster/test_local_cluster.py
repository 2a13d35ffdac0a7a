"""The local control plane is a real Kubernetes cluster (issue 3).

Covers, against etcd + kube-apiserver + kube-controller-manager + kube-scheduler
built from source and kwok-simulated nodes:
  * /version reports the pinned Kubernetes version (helm's kubeVersion checks pass);
  * the kwok nodes: two CPU nodes, an 8x H100 and a 1x A10 node with GFD labels and taint;
  * a Deployment creates a ReplicaSet whose pods become Running and Ready;
  * a GPU pod with the toleration and a product nodeSelector lands on that product's node;
  * without the toleration it stays Pending with PodScheduled=False/Unschedulable;
  * asking for 9 GPUs (more than any node has) stays Pending;
  * deleting an owner garbage-collects its children (ownerReferences, cascading delete);
  * an autoscaling/v2 HPA with a Pods metric is accepted and the HPA controller acts on it;
  * RBAC denies a ServiceAccount with no Role and allows it once a Role is bound
    (token from `kubectl create token`, signed with the service-account key).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"
A10 = "NVIDIA-A10"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                  "effect": "NoSchedule"}


def get(cluster, *args, namespace=None):
    ns = ["-n", namespace] if namespace else []
    return json.loads(cluster.kubectl("get", *args, *ns, "-o", "json").stdout)


def apply(cluster, obj, namespace=None):
    ns = ["-n", namespace] if namespace else []
    cluster.kubectl("apply", *ns, "-f", "-", input=json.dumps(obj))


def condition(obj, type_):
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond["type"] == type_:
            return cond
    return None


def gpu_pod(name, gpus=1, product=None, tolerate=True):
    spec = {
        "containers": [{"name": "main", "image": "registry.invalid/kubeinfer/fake:0",
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
    }
    if product:
        spec["nodeSelector"] = {"nvidia.com/gpu.product": product}
    if tolerate:
        spec["tolerations"] = [GPU_TOLERATION]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def wait_unschedulable(cluster, namespace, name):
    def check():
        pod = get(cluster, "pod", name, namespace=namespace)
        cond = condition(pod, "PodScheduled")
        if cond and cond["status"] == "False" and cond.get("reason") == "Unschedulable":
            return pod
        return None
    pod = cluster.wait_for(f"pod {name} marked Unschedulable", check, timeout=60,
                           components=("kube-scheduler",))
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")
    return condition(pod, "PodScheduled")["message"]


def test_version_is_pinned_release(cluster):
    version = json.loads(cluster.kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"] == "v1.36.3"
    assert (version["major"], version["minor"]) == ("1", "36")
    client = json.loads(cluster.kubectl("version", "--client", "-o", "json").stdout)
    assert client["clientVersion"]["gitVersion"] == "v1.36.3"


def test_helm_sees_the_cluster_version(cluster, namespace, tmp_path: Path):
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: \">=1.25.0-0\"\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\n"
        "data:\n  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n")
    cluster.helm("install", "probe", str(chart), "-n", namespace, "--wait", "--timeout", "60s")
    cm = get(cluster, "configmap", "probe", namespace=namespace)
    assert cm["data"]["kubeVersion"] == "v1.36.3"


def test_kwok_nodes_have_capacity_labels_and_taints(cluster):
    nodes = {n["metadata"]["name"]: n for n in get(cluster, "nodes")["items"]}
    assert {"kwok-cpu-0", "kwok-cpu-1", "kwok-gpu-h100-0", "kwok-gpu-a10-0"} <= set(nodes)
    for name, node in nodes.items():
        assert condition(node, "Ready")["status"] == "True", name
    cpu = nodes["kwok-cpu-0"]
    assert cpu["status"]["allocatable"]["cpu"] == "16"
    assert cpu["status"]["allocatable"]["pods"] == "110"
    assert not cpu["spec"].get("taints")
    for name, product, count in (("kwok-gpu-h100-0", H100, "8"),
                                 ("kwok-gpu-a10-0", A10, "1")):
        node = nodes[name]
        labels = node["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"] == product
        assert labels["nvidia.com/gpu.count"] == count
        assert int(labels["nvidia.com/gpu.memory"]) > 20000
        assert node["status"]["capacity"]["nvidia.com/gpu"] == count
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == count
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in [
            {k: t.get(k) for k in ("key", "value", "effect")} for t in node["spec"]["taints"]]


def test_deployment_creates_replicaset_and_ready_pods(cluster, namespace):
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{
                    "name": "web", "image": "registry.invalid/kubeinfer/fake:0",
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
            },
        },
    }
    apply(cluster, deployment, namespace)
    cluster.wait_for("deployment web 3/3 available", lambda: get(
        cluster, "deployment", "web", namespace=namespace)["status"].get(
        "availableReplicas") == 3, timeout=90)
    replicasets = get(cluster, "replicasets", "-l", "app=web", namespace=namespace)["items"]
    assert len(replicasets) == 1
    assert replicasets[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    pods = get(cluster, "pods", "-l", "app=web", namespace=namespace)["items"]
    assert len(pods) == 3
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert condition(pod, "Ready")["status"] == "True"
        assert pod["spec"]["nodeName"] in ("kwok-cpu-0", "kwok-cpu-1"), \
            "untolerated pods must not land on tainted GPU nodes"
        assert pod["status"]["podIP"].startswith("10.244.")


@pytest.mark.parametrize(("product", "node"), [(H100, "kwok-gpu-h100-0"),
                                               (A10, "kwok-gpu-a10-0")])
def test_gpu_pod_lands_on_product_node(cluster, namespace, product, node):
    apply(cluster, gpu_pod("gpu", product=product), namespace)

    def running():
        pod = get(cluster, "pod", "gpu", namespace=namespace)
        return pod if pod["status"].get("phase") == "Running" else None
    pod = cluster.wait_for(f"GPU pod Running on {node}", running, timeout=60)
    assert pod["spec"]["nodeName"] == node
    assert condition(pod, "Ready")["status"] == "True"


def test_gpu_pod_without_toleration_stays_pending(cluster, namespace):
    apply(cluster, gpu_pod("untolerated", product=A10, tolerate=False), namespace)
    message = wait_unschedulable(cluster, namespace, "untolerated")
    assert "untolerated taint" in message or "nvidia.com/gpu" in message, message


def test_nine_gpus_stay_pending(cluster, namespace):
    apply(cluster, gpu_pod("too-big", gpus=9), namespace)
    message = wait_unschedulable(cluster, namespace, "too-big")
    assert "Insufficient nvidia.com/gpu" in message, message


def test_deleting_owner_garbage_collects_children(cluster, namespace):
    apply(cluster, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}},
          namespace)
    uid = get(cluster, "configmap", "owner", namespace=namespace)["metadata"]["uid"]
    for i in range(2):
        apply(cluster, {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"child-{i}", "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]},
        }, namespace)
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace, "--wait=true")

    def children_gone():
        names = {c["metadata"]["name"]
                 for c in get(cluster, "configmaps", namespace=namespace)["items"]}
        return not names & {"child-0", "child-1"}
    cluster.wait_for("child ConfigMaps garbage-collected", children_gone, timeout=60,
                     components=("kube-controller-manager",))


def test_deleting_deployment_cascades_to_pods(cluster, namespace):
    cluster.kubectl("create", "deployment", "doomed", "-n", namespace,
                    "--image=registry.invalid/kubeinfer/fake:0", "--replicas=2")
    cluster.wait_for("2 pods", lambda: len(get(cluster, "pods", "-l", "app=doomed",
                                               namespace=namespace)["items"]) == 2)
    cluster.kubectl("delete", "deployment", "doomed", "-n", namespace, "--wait=false")
    cluster.wait_for("ReplicaSet and pods garbage-collected", lambda: not (
        get(cluster, "replicasets", "-l", "app=doomed", namespace=namespace)["items"]
        or get(cluster, "pods", "-l", "app=doomed", namespace=namespace)["items"]),
        timeout=60, components=("kube-controller-manager", "kwok"))


def test_hpa_with_pods_metric_is_accepted(cluster, namespace):
    cluster.kubectl("create", "deployment", "scaled", "-n", namespace,
                    "--image=registry.invalid/kubeinfer/fake:0", "--replicas=1")
    apply(cluster, {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "scaled"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": "scaled"},
            "minReplicas": 1, "maxReplicas": 4,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": "kubeinfer_queue_depth"},
                "target": {"type": "AverageValue", "averageValue": "5"}}}],
        },
    }, namespace)
    hpa = get(cluster, "hpa.v2.autoscaling", "scaled", namespace=namespace)
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "kubeinfer_queue_depth"

    # The HPA controller (2s sync) picks it up; with no custom metrics API yet it
    # reports that it cannot get the metric, which proves it is running.
    def acted():
        h = get(cluster, "hpa.v2.autoscaling", "scaled", namespace=namespace)
        return condition(h, "AbleToScale") and condition(h, "ScalingActive")
    cluster.wait_for("HPA controller conditions", acted, timeout=60,
                     components=("kube-controller-manager",))


def test_rbac_denies_then_allows_service_account(cluster, namespace, tmp_path: Path):
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = cluster.kubectl("create", "token", "reader", "-n", namespace,
                            "--duration=10m").stdout.strip()
    sa_config = tmp_path / "reader.kubeconfig"
    sa_config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server,
                                               "certificate-authority": cluster.ca_file}}],
        "users": [{"name": "reader", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "reader"}}],
        "current-context": "c",
    }))

    def as_reader():
        return cluster.kubectl("--kubeconfig", str(sa_config), "get", "pods",
                               "-n", namespace, check=False)
    # The later --kubeconfig flag wins over the fixture's one.
    denied = as_reader()
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower(), denied.stderr
    assert f"system:serviceaccount:{namespace}:reader" in denied.stderr

    cluster.kubectl("create", "role", "pod-reader", "-n", namespace,
                    "--verb=get,list,watch", "--resource=pods")
    cluster.kubectl("create", "rolebinding", "reader-pods", "-n", namespace,
                    "--role=pod-reader", f"--serviceaccount={namespace}:reader")
    cluster.wait_for("reader allowed to list pods", lambda: as_reader().returncode == 0,
                     timeout=30, components=("kube-apiserver",))
    still_denied = cluster.kubectl("--kubeconfig", str(sa_config), "get", "secrets",
                                   "-n", namespace, check=False)
    assert "forbidden" in still_denied.stderr.lower(), still_denied.stderr
