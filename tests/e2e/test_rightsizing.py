"""End to end: right-sizing from the real kubelet's figures, resized in place under load (issue 16).

The e2e stack's Prometheus scrapes the real node's kubelet (``/metrics/cadvisor`` and
``/metrics/resource``: ``monitoring.stack.kubelet_jobs``). An operator runs on this
machine, watching a namespace of its own, with ``--prometheus-url`` and short usage
intervals (the chart's in-cluster operator cannot reach that Prometheus on 127.0.0.1).
A server pod with a 1-CPU limit under a steady load gets a ``status.recommendation``
from those figures; in InPlace mode it is resized with no restart (restartCount stays
0), the server's own view of its cgroup CPU quota follows the new limit, the server
logs its new thread count when that changed, and the load running through the resize
has no failed request. Afterwards the settled InferenceDeployment is written no more.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from devkit.processes import spawn, terminate
from e2e.test_serving import apply, condition, infd
from e2ekit.clients import Load, get_json, write_secret
from kubeinfer_operator.drift import quantity
from localcluster import node as real_node
from support.reports import on_failure

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "kubeinfer.io_inferencedeployments.yaml"
OPERATOR = Path(sys.executable).parent / "kubeinfer-operator"
RESOURCES = {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
CPU_LIMIT_OF_SERVER = ("import math; from kubeinfer_server.cpulimit import cgroup_cpu_quota; "
                       "print(math.ceil(cgroup_cpu_quota() or 0))")


@dataclasses.dataclass(frozen=True)
class HostOperator:
    proc: subprocess.Popen
    namespace: str
    log_path: Path


@pytest.fixture
def host_operator(cluster, stack, tmp_path):
    """kubeinfer-operator on this machine, watching a fresh namespace, reading usage from the stack's Prometheus."""
    namespace = f"e2e-rightsizing-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/inferencedeployments.kubeinfer.io")
    cluster.kubectl("create", "namespace", namespace)
    log = tmp_path / "operator.log"
    image = real_node.image_named(real_node.built_images(), "server")
    proc = spawn([str(OPERATOR), "--namespace", namespace, "--resync-seconds", "2", "--metrics-port", "0",
                  "--server-image", image, "--prometheus-url", stack.prometheus, "--usage-query-seconds", "5",
                  "--usage-step-seconds", "5", "--usage-history-seconds", "900"],
                 log, env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)})
    try:
        yield HostOperator(proc, namespace, log)
    finally:
        cluster.kubectl("delete", "infd", "--all", "-n", namespace, "--wait=true", "--timeout=60s",
                        check=False, timeout=90)
        terminate(proc)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@on_failure("host_operator")
def _operator_log(operator: HostOperator) -> list[tuple[str, str]]:
    return [("host kubeinfer-operator log (tail)", operator.log_path.read_text(errors="replace")[-6000:])]


def server_pod(cluster, namespace: str, name: str) -> dict:
    (pod,) = get_json(cluster, "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={name}")["items"]
    return pod


def server_of(pod: dict, where: str = "spec") -> dict:
    items = pod[where]["containers" if where == "spec" else "containerStatuses"]
    return next(c for c in items if c["name"] == "server")


def at(resources: dict, recommended: dict) -> bool:
    """Whether these requests (and limits: the pod is Guaranteed) are the recommendation, by value."""
    wanted = {k: quantity(str(recommended[k])) for k in ("cpu", "memory")}
    return all({k: quantity(str(v)) for k, v in (resources.get(section) or {}).items()} == wanted
               for section in ("requests", "limits"))


def test_a_loaded_server_is_recommended_and_resized_in_place(cluster, stack, host_operator, tmp_path):
    ns, name = host_operator.namespace, "sized"
    apply(cluster, infd(name, ns, stack.store.url("mlp.onnx"), replicas=1, resources=RESOURCES,
                        tls={"mode": "Mutual", "clients": [{"name": "load"}]},
                        rightSizing={"mode": "InPlace", "minSamples": 24}))
    cluster.wait_for("InferenceDeployment Ready", lambda: condition(cluster, ns, name).get("status") == "True",
                     timeout=180)
    before = server_pod(cluster, ns, name)
    certs = write_secret(cluster, ns, f"{name}-client-load", tmp_path / "load")
    load = Load(cluster, ns, name, certs, workers=8, rows=32).start()
    try:
        recommended = cluster.wait_for("status.recommendation from the kubelet's figures", lambda: get_json(
            cluster, "infd", name, "-n", ns).get("status", {}).get("recommendation"), timeout=300)
        cluster.wait_for("the pod resized to it (its spec)", lambda: at(
            server_of(server_pod(cluster, ns, name))["resources"], recommended), timeout=120)
        cluster.wait_for("the kubelet to apply it (its status)", lambda: at(
            server_of(server_pod(cluster, ns, name), "status").get("resources") or {}, recommended), timeout=120)
        threads = math.ceil(float(quantity(str(recommended["cpu"])) or 0))
        seen = cluster.kubectl("exec", "-n", ns, before["metadata"]["name"], "-c", "server", "--",
                               "/opt/kubeinfer/bin/python", "-c", CPU_LIMIT_OF_SERVER).stdout.strip()
        assert seen == str(threads)
        if threads != 1:
            cluster.wait_for("the server's new thread count in its log", lambda: "Rebuilt model" in cluster.kubectl(
                "logs", "-n", ns, before["metadata"]["name"], "-c", "server").stdout, timeout=60)
        time.sleep(5)  # load through and after the resize
    finally:
        load.stop()
    after = server_pod(cluster, ns, name)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert server_of(after, "status")["restartCount"] == 0
    assert load.ok > 0 and not load.failures, load.failures[:5]
    assert {c["type"]: c["reason"] for c in get_json(cluster, "infd", name, "-n", ns)["status"]["conditions"]}[
        "RecommendationProvided"] == "Recommended"
    events = get_json(cluster, "events", "-n", ns, "--field-selector", "reason=Resized")["items"]
    assert any(after["metadata"]["name"] in e["message"] for e in events), json.dumps(events)[:2000]

    version = get_json(cluster, "infd", name, "-n", ns)["metadata"]["resourceVersion"]
    time.sleep(12)  # six resyncs and two usage reads: nothing to write
    assert get_json(cluster, "infd", name, "-n", ns)["metadata"]["resourceVersion"] == version
