"""The chart against the local API server (real kube-apiserver with RBAC, kwok nodes).

Covers:
- every object ``helm template`` renders, with default and non-default values
  (CRDs included), passes a server-side dry run (``kubectl apply
  --dry-run=server``, strict field validation);
- ``helm install``: the operator pod is scheduled on a kwok node and turns Ready,
  NOTES say what to apply next, the CRD is there;
- ``helm upgrade`` with a changed value rolls the operator (Recreate): the pod
  template changes, a new pod replaces the old one; an upgrade with a value the
  schema refuses changes nothing;
- ``helm uninstall`` removes every object of the release, cluster-scoped RBAC
  included, and leaves the CRD (helm never deletes CRDs).
"""

from __future__ import annotations

import json

import pytest
import yaml

from chart.chartkit import CHART, unique, value_args

pytestmark = pytest.mark.cluster

CRD = "inferencedeployments.kubeinfer.io"


def dry_run(cluster, manifest: str) -> str:
    proc = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=chart-test",
                           "--force-conflicts", "-f", "-", input=manifest, timeout=120)
    return proc.stdout


@pytest.fixture
def other_namespace(cluster):
    name = unique("chart-watched")
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def test_rendered_objects_pass_server_side_dry_run(cluster, helm, namespace, other_namespace):
    release = unique("dry")
    non_default = {
        "watchNamespaces": [other_namespace],
        "image": {"repository": "registry.example.com/kubeinfer/operator", "tag": "0.1.0",
                  "digest": "sha256:" + "b" * 64},
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {"verbose": True, "resyncSeconds": 30, "healthPort": 9090},
        "serviceAccount": {"name": "infer-operator"},
        "rbac": {"aggregateToDefaultRoles": False},
        "podAnnotations": {"example.com/a": "b"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "monitoring": {"prometheusAdapter": {"rulesConfigMap": True}},
    }
    for values in (None, non_default):
        manifest = helm("template", release, str(CHART), "--namespace", namespace, "--include-crds",
                        *value_args(values)).stdout
        kinds = {o["kind"] for o in yaml.safe_load_all(manifest) if o}
        out = dry_run(cluster, manifest)
        assert out.count("(server dry run)") == len([o for o in yaml.safe_load_all(manifest) if o]), out
        assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    # What the dry run checks: an unknown field in a rendered object is refused.
    broken = manifest.replace("revisionHistoryLimit: 3", "revisionHistoryLimit: 3\n  notAField: 1")
    proc = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=broken, check=False)
    assert proc.returncode != 0 and "notAField" in proc.stderr


def operator_pods(cluster, namespace: str, release: str) -> list[dict]:
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]


def ready_pod(cluster, namespace: str, release: str, not_uid: str | None = None):
    def check():
        pods = operator_pods(cluster, namespace, release)
        if len(pods) != 1 or pods[0]["metadata"]["uid"] == not_uid:
            return None
        conditions = {c["type"]: c["status"] for c in pods[0].get("status", {}).get("conditions", [])}
        return pods[0] if conditions.get("Ready") == "True" else None

    return cluster.wait_for(f"one Ready operator pod of {release}", check, timeout=90)


def test_install_upgrade_uninstall(cluster, namespace):
    release = unique("kubeinfer")  # holds the chart name: objects are named after the release
    out = cluster.helm("install", release, str(CHART), "--namespace", namespace,
                       "--set", "operator.resyncSeconds=30").stdout
    assert "STATUS: deployed" in out
    assert "kind: InferenceDeployment" in out and "kubectl apply --server-side -f crds/" in out
    cluster.kubectl("get", "crd", CRD)

    first = ready_pod(cluster, namespace, release)
    assert first["spec"]["nodeName"].startswith("kwok-")
    assert first["spec"]["serviceAccountName"] == release
    for kind in ("clusterrole", "clusterrolebinding"):
        cluster.kubectl("get", kind, release)
    for kind in ("serviceaccount", "service", "deployment"):
        cluster.kubectl("get", kind, release, "-n", namespace)
    template = cluster.kubectl("get", "deployment", release, "-n", namespace, "-o",
                               "jsonpath={.spec.template}").stdout

    cluster.helm("upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values",
                 "--set", "server.image.tag=0.1.1")
    second = ready_pod(cluster, namespace, release, not_uid=first["metadata"]["uid"])
    env = {e["name"]: e["value"] for e in second["spec"]["containers"][0]["env"]}
    assert env["KUBEINFER_SERVER_IMAGE"] == "kubeinfer/server:0.1.1"
    assert env["KUBEINFER_RESYNC_SECONDS"] == "30"  # reused
    assert cluster.kubectl("get", "deployment", release, "-n", namespace, "-o",
                           "jsonpath={.spec.template}").stdout != template

    refused = cluster.helm("upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values",
                           "--set", "operator.resyncSecond=5", check=False)
    assert refused.returncode != 0 and "resyncSecond" in refused.stderr
    history = json.loads(cluster.helm("history", release, "--namespace", namespace, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2]
    assert operator_pods(cluster, namespace, release)[0]["metadata"]["uid"] == second["metadata"]["uid"]

    cluster.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout=60s")
    for kind in ("clusterrole", "clusterrolebinding"):
        assert cluster.kubectl("get", kind, release, check=False).returncode != 0
    for kind in ("serviceaccount", "service", "deployment"):
        assert cluster.kubectl("get", kind, release, "-n", namespace, check=False).returncode != 0
    cluster.wait_for("operator pod gone", lambda: not operator_pods(cluster, namespace, release), timeout=60)
    cluster.kubectl("get", "crd", CRD)


def test_network_policy_example_passes_server_side_dry_run(cluster, namespace):
    example = (CHART.parents[1] / "examples" / "networkpolicy-fraud.yaml").read_text()
    policy = yaml.safe_load(example)
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {8000, 8001, 8002}
    out = dry_run(cluster, example.replace("namespace: ml", f"namespace: {namespace}"))
    assert "networkpolicy.networking.k8s.io/fraud-servers serverside-applied (server dry run)" in out, out
