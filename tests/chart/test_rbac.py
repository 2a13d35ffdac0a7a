"""The chart's RBAC is enough for the operator, and no more: proven on the real API server.

The chart is installed with helm; the operator pod lands on a kwok node and
never runs, so each test runs ``kubeinfer-operator`` itself with the args and
env of the installed Deployment, authenticated by a token of the chart's
ServiceAccount (``kubectl create token``): it can do exactly what the chart
grants. Any request the API server refuses for lack of permission shows in the
operator log as 403/forbidden, and fails the test.

Covers, cluster-wide (watchNamespaces empty):
- create an InferenceDeployment (autoscaling, mutual TLS with a client) ->
  Deployment, Services, HPA, PDB, Secrets, CA ConfigMap created, Ready=True,
  Events posted; kopf's liveness endpoint answers;
- update the spec -> the Deployment follows, a client Secret no longer wanted
  is pruned and the new one created, observedGeneration follows;
- delete a child -> put back; delete the InferenceDeployment -> finalizer
  removed, children garbage-collected;
- the ServiceAccount cannot do what the operator never does (impersonated
  ``kubectl auth can-i``).

Namespaced (watchNamespaces: [ns-a]):
- the same reconcile works in ns-a, a deleted child comes back;
- an InferenceDeployment in ns-b is left alone (no status, finalizer, children);
- ``kubectl auth can-i`` as the ServiceAccount: yes in ns-a, no in ns-b and
  no cluster-wide, except list/watch of Namespaces and CRDs (kopf needs them).
"""

from __future__ import annotations

import json
import time

import pytest

from chart.chartkit import CHART, OperatorRun, rbac_denials, unique, value_args

pytestmark = pytest.mark.cluster


def kget(cluster, namespace: str, kind: str, name: str | None = None, selector: str | None = None):
    args = ["get", kind, "-n", namespace, "-o", "json"]
    if name:
        args.insert(2, name)
    if selector:
        args += ["-l", selector]
    proc = cluster.kubectl(*args, check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr:
            return None
        raise AssertionError(proc.stderr)
    return json.loads(proc.stdout)


def infd(name: str, **spec) -> dict:
    spec.setdefault("model", {"uri": "s3://models/fraud/3/model.onnx"})
    spec.setdefault("resources", {"requests": {"cpu": "10m", "memory": "16Mi"}})
    return {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": name}, "spec": spec}


def apply(cluster, namespace: str, obj: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def condition(cluster, namespace: str, name: str, kind: str = "Ready") -> dict | None:
    obj = kget(cluster, namespace, "infd", name) or {}
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def wait_ready(cluster, namespace: str, name: str, generation: int, timeout: float = 90) -> dict:
    def check():
        obj = kget(cluster, namespace, "infd", name) or {}
        status = obj.get("status") or {}
        c = condition(cluster, namespace, name)
        return obj if status.get("observedGeneration") == generation and c and c["status"] == "True" else None

    return cluster.wait_for(f"infd {namespace}/{name} Ready at generation {generation}", check, timeout=timeout)


def children(cluster, namespace: str, name: str) -> dict[str, set[str]]:
    selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/managed-by=kubeinfer"
    out = cluster.kubectl("get", "deployments,services,hpa,pdb,secrets,configmaps", "-n", namespace,
                          "-l", selector, "-o", "json").stdout
    found: dict[str, set[str]] = {}
    for item in json.loads(out)["items"]:
        found.setdefault(item["kind"], set()).add(item["metadata"]["name"])
    return found


def can_i(cluster, service_account: str, verb: str, resource: str, namespace: str | None) -> bool:
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    proc = cluster.kubectl("auth", "can-i", verb, resource, *scope, f"--as={service_account}", check=False)
    assert proc.stdout.strip() in ("yes", "no"), proc.stdout + proc.stderr
    return proc.stdout.strip() == "yes"


def make_namespace(cluster, prefix: str) -> str:
    name = unique(prefix)
    cluster.kubectl("create", "namespace", name)
    return name


class Installer:
    """helm install of the chart into its own namespace, and the operator run from it."""

    def __init__(self, cluster, workdir) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.made: list[tuple[str, str]] = []
        self.runs: list[OperatorRun] = []  # their logs go into a failing test's report (conftest)

    def __call__(self, values: dict) -> OperatorRun:
        namespace = make_namespace(self.cluster, "kubeinfer-system")
        release = unique("kubeinfer")
        self.made.append((release, namespace))
        self.cluster.helm("install", release, str(CHART), "--namespace", namespace, *value_args(values))
        operator = OperatorRun(self.cluster, namespace, release, self.workdir)
        self.runs.append(operator)
        return operator

    def remove(self) -> None:
        for operator in self.runs:
            operator.stop()
        for release, namespace in self.made:
            self.cluster.helm("uninstall", release, "--namespace", namespace, check=False)
            self.cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def install(cluster, tmp_path):
    installer = Installer(cluster, tmp_path)
    yield installer
    installer.remove()


def delete_while_running(cluster, namespace: str, name: str) -> None:
    """kopf puts a finalizer on each InferenceDeployment (its timer): delete while the operator can remove it."""
    cluster.kubectl("delete", "infd", name, "-n", namespace, "--wait=true", "--timeout=60s", check=False, timeout=90)


def assert_no_denials(operator: OperatorRun) -> None:
    assert operator.alive(), operator.log()[-4000:]
    denied = rbac_denials(operator.log())
    assert not denied, "\n".join(denied[:20])


def test_cluster_wide_operator_under_chart_rbac(cluster, install, namespace):
    operator = install({"operator": {"resyncSeconds": 2}}).start()
    sa = f"system:serviceaccount:{operator.namespace}:{operator.deployment}"
    cluster.wait_for("kopf liveness endpoint", operator.healthy, timeout=60)

    name = "rbac"
    apply(cluster, namespace, infd(
        name, autoscaling={"minReplicas": 2, "maxReplicas": 3, "targetQueueDepth": 4},
        tls={"mode": "Mutual", "clients": [{"name": "checkout"}]}))
    try:
        wait_ready(cluster, namespace, name, generation=1)
        assert children(cluster, namespace, name) == {
            "Deployment": {name}, "Service": {name, f"{name}-headless"}, "HorizontalPodAutoscaler": {name},
            "PodDisruptionBudget": {name}, "Secret": {f"{name}-ca", f"{name}-tls", f"{name}-client-checkout"},
            "ConfigMap": {f"{name}-ca-bundle"},
        }
        events = kget(cluster, namespace, "events")["items"]
        assert any(e["involvedObject"]["name"] == name and e["reason"] == "Created" for e in events)

        cluster.kubectl("patch", "infd", name, "-n", namespace, "--type=merge", "-p", json.dumps(
            {"spec": {"batching": {"maxBatchSize": 8}, "tls": {"clients": [{"name": "risk"}]}}}))
        wait_ready(cluster, namespace, name, generation=2)
        cluster.wait_for("client Secrets follow the spec", lambda: children(cluster, namespace, name)["Secret"] == {
            f"{name}-ca", f"{name}-tls", f"{name}-client-risk"}, timeout=30)
        env = kget(cluster, namespace, "deployment", name)["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "KUBEINFER_MAX_BATCH_SIZE", "value": "8"} in env

        old = kget(cluster, namespace, "service", name)["metadata"]["uid"]
        cluster.kubectl("delete", "service", name, "-n", namespace)
        cluster.wait_for("deleted Service put back", lambda: (kget(cluster, namespace, "service", name) or {})
                         .get("metadata", {}).get("uid") not in (None, old), timeout=30)
    finally:
        delete_while_running(cluster, namespace, name)
    assert kget(cluster, namespace, "infd", name) is None
    cluster.wait_for("children garbage-collected", lambda: not children(cluster, namespace, name), timeout=60)
    assert_no_denials(operator)

    # What the operator never does, its ServiceAccount cannot do either.
    assert can_i(cluster, sa, "create", "deployments.apps", namespace)
    for verb, resource in [("create", "jobs.batch"), ("delete", "cronjobs.batch"),
                           ("patch", "inferencebatchjobs.kubeinfer.io")]:
        assert can_i(cluster, sa, verb, resource, namespace), f"{sa} may not {verb} {resource}"
    for verb, resource in [("create", "pods"), ("create", "inferencebatchjobs.kubeinfer.io"),
                           ("delete", "pods"), ("update", "secrets"),
                           ("update", "deployments.apps"), ("create", "roles.rbac.authorization.k8s.io"),
                           ("create", "clusterroles.rbac.authorization.k8s.io"), ("get", "nodes"),
                           ("create", "namespaces"), ("delete", "inferencedeployments.kubeinfer.io"),
                           ("create", "inferencedeployments.kubeinfer.io"), ("list", "namespaces"),
                           ("create", "customresourcedefinitions.apiextensions.k8s.io")]:
        assert not can_i(cluster, sa, verb, resource, namespace), f"{sa} may {verb} {resource}"


def test_namespaced_operator_stays_in_its_namespaces(cluster, install, namespace):
    other = make_namespace(cluster, "rbac-outside")
    try:
        operator = install({"watchNamespaces": [namespace], "operator": {"resyncSeconds": 2}}).start()
        sa = f"system:serviceaccount:{operator.namespace}:{operator.deployment}"
        for verb, resource in [("create", "deployments.apps"), ("patch", "inferencedeployments.kubeinfer.io"),
                               ("get", "secrets"), ("create", "events"), ("list", "pods")]:
            assert can_i(cluster, sa, verb, resource, namespace), f"{sa} may not {verb} {resource} in {namespace}"
            assert not can_i(cluster, sa, verb, resource, other), f"{sa} may {verb} {resource} in {other}"
            assert not can_i(cluster, sa, verb, resource, None), f"{sa} may {verb} {resource} cluster-wide"
        assert can_i(cluster, sa, "list", "namespaces", None)
        assert not can_i(cluster, sa, "get", "namespaces", None)
        assert can_i(cluster, sa, "watch", "customresourcedefinitions.apiextensions.k8s.io", None)

        apply(cluster, other, infd("outside"))
        apply(cluster, namespace, infd("inside", replicas=2))
        try:
            wait_ready(cluster, namespace, "inside", generation=1)
            made = children(cluster, namespace, "inside")
            assert made["Deployment"] == {"inside"} and made["PodDisruptionBudget"] == {"inside"}
            assert made["Service"] == {"inside", "inside-headless"}
            cluster.kubectl("delete", "deployment", "inside", "-n", namespace)
            cluster.wait_for("deleted Deployment put back",
                             lambda: kget(cluster, namespace, "deployment", "inside"), timeout=30)
            # Several resync periods (2 s) have passed since the operator started: it would have
            # touched "outside" by now if it could see it.
            time.sleep(4)
            outside = kget(cluster, other, "infd", "outside")
            assert not outside.get("status")
            assert not outside["metadata"].get("finalizers")
            assert not [k for k in outside["metadata"].get("annotations") or {} if k.startswith("kubeinfer.io/")]
            assert not children(cluster, other, "outside")
        finally:
            delete_while_running(cluster, namespace, "inside")
        cluster.wait_for("children garbage-collected", lambda: not children(cluster, namespace, "inside"), timeout=60)
        assert_no_denials(operator)
    finally:
        cluster.kubectl("delete", "infd", "--all", "-n", other, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
