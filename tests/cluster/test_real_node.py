"""The local cluster's real node: a kubelet with containerd runs pods from the built images.

What the pod runner used to imitate, and what it could not, now from Kubernetes itself:
the node registered beside the kwok nodes; ``kubectl logs``, ``exec`` and
``port-forward``; the securityContext (uid 65532, read-only root filesystem), a memory
limit in the pod's cgroup; emptyDir and Secret volumes, a Secret update reaching the
running pod; startup, readiness and liveness probes (a failing liveness probe restarts
the container); a Service's ClusterIP from the host and from a pod (kube-proxy);
preStop and terminationGracePeriodSeconds; a Job run to completion; and a pull of an
image that was never imported failing at once, without leaving the machine.

Test pods run the server image with their own command (its Python, no model needed).
"""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import threading
import time

import pytest

from devkit.direct import http_ok
from devkit.ports import free_port
from localcluster import node as real_node
from localcluster.nodeconfig import NAME as NODE
from localcluster.nodeconfig import NODE_IP, PLACEMENT

pytestmark = pytest.mark.cluster
SLEEP = "import time; print('hello from the real node', flush=True); time.sleep(3600)"
HTTP = "import http.server as h; h.ThreadingHTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()"


def server_image() -> str:
    return real_node.image_named(real_node.built_images(), "server")


def pod(name: str, namespace: str, script: str, **extra) -> dict:
    container = {"name": "main", "image": server_image(), "imagePullPolicy": "IfNotPresent",
                 "command": ["python", "-c", script], **extra.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                             "labels": {"app": name}},
            "spec": {**PLACEMENT, "containers": [container], **extra}}


def apply(cluster, body: dict) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def get(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def ready(cluster, namespace: str, name: str) -> bool:
    status = get(cluster, "pod", name, "-n", namespace).get("status", {})
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def wait_ready(cluster, namespace: str, name: str, timeout: float = 90) -> dict:
    cluster.wait_for(f"pod {name} Ready", lambda: ready(cluster, namespace, name), timeout=timeout)
    return get(cluster, "pod", name, "-n", namespace)


def run_in(cluster, namespace: str, name: str, script: str) -> str:
    return cluster.kubectl("exec", name, "-n", namespace, "--", "python", "-c", script, timeout=60).stdout


def test_the_real_node_is_ready_beside_the_kwok_nodes(cluster):
    nodes = {n["metadata"]["name"]: n for n in get(cluster, "nodes")["items"]}
    assert {"kwok-cpu-0", "kwok-gpu-h100-0", NODE} <= set(nodes)
    info = nodes[NODE]["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://2.")
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    assert info["kubeletVersion"] == server  # built from the control plane's Kubernetes source
    assert {"type": "InternalIP", "address": NODE_IP} in nodes[NODE]["status"]["addresses"]
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in nodes[NODE]["status"]["conditions"])
    assert nodes[NODE]["spec"]["taints"] == [{"key": "kubeinfer.io/real-node", "value": "true",
                                              "effect": "NoSchedule"}]


def test_logs_exec_security_context_limits_and_volumes(cluster, namespace):
    cluster.kubectl("create", "secret", "generic", "greeting", "-n", namespace, "--from-literal=word=hello")
    apply(cluster, pod("box", namespace, SLEEP,
                       securityContext={"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True},
                       volumes=[{"name": "scratch", "emptyDir": {}},
                                {"name": "greeting", "secret": {"secretName": "greeting"}}],
                       container={"securityContext": {"readOnlyRootFilesystem": True,
                                                      "allowPrivilegeEscalation": False},
                                  "resources": {"limits": {"memory": "128Mi", "cpu": "250m"}},
                                  "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"},
                                                   {"name": "greeting", "mountPath": "/etc/greeting"}]}))
    wait_ready(cluster, namespace, "box")
    cluster.wait_for("the container's first line in kubectl logs", lambda: "hello from the real node" in
                     cluster.kubectl("logs", "box", "-n", namespace).stdout, timeout=30)
    facts = json.loads(run_in(cluster, namespace, "box", """
import json, os
def writable(path):
    try:
        open(path, "w").close()
        return True
    except OSError:
        return False
print(json.dumps({"uid": os.getuid(), "root_writable": writable("/probe"), "scratch_writable": writable("/scratch/x"),
                  "memory_limit": int(open("/sys/fs/cgroup/memory/memory.limit_in_bytes").read()),
                  "word": open("/etc/greeting/word").read()}))
"""))
    assert facts == {"uid": 65532, "root_writable": False, "scratch_writable": True,
                     "memory_limit": 128 * 1024 * 1024, "word": "hello"}
    new = base64.b64encode(b"rotated").decode()
    cluster.kubectl("patch", "secret", "greeting", "-n", namespace, "-p", json.dumps({"data": {"word": new}}))
    cluster.wait_for("the Secret update inside the running pod", lambda: run_in(
        cluster, namespace, "box", "print(open('/etc/greeting/word').read())").strip() == "rotated",
        timeout=90, interval=2)


def test_probes_port_forward_and_a_service_from_host_and_pod(cluster, namespace):
    probe = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    apply(cluster, pod("web", namespace, HTTP, container={
        "ports": [{"containerPort": 8080}], "startupProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1,
                                                            "failureThreshold": 30},
        "readinessProbe": probe, "livenessProbe": probe}))
    apply(cluster, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": namespace},
                    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    wait_ready(cluster, namespace, "web")
    cluster_ip = get(cluster, "service", "web", "-n", namespace)["spec"]["clusterIP"]
    cluster.wait_for(f"the ClusterIP {cluster_ip} from the host (kube-proxy)",
                     lambda: http_ok(f"http://{cluster_ip}/", timeout=3), timeout=60)
    apply(cluster, pod("client", namespace, SLEEP))
    wait_ready(cluster, namespace, "client")
    got = run_in(cluster, namespace, "client",
                 f"import urllib.request as u; print(u.urlopen('http://{cluster_ip}/', timeout=5).status)")
    assert got.strip() == "200"

    port = free_port()
    forward = subprocess.Popen([str(cluster.bin_dir / "kubectl"), f"--kubeconfig={cluster.kubeconfig}",
                                "port-forward", "-n", namespace, "pod/web", f"{port}:8080"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        cluster.wait_for("kubectl port-forward", lambda: http_ok(f"http://127.0.0.1:{port}/", timeout=3), timeout=30)
    finally:
        forward.terminate()
        forward.wait(10)


def test_failing_liveness_probe_restarts_the_container(cluster, namespace):
    apply(cluster, pod("sick", namespace, SLEEP, container={
        "livenessProbe": {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 1}}))

    def restarted() -> bool:
        statuses = get(cluster, "pod", "sick", "-n", namespace).get("status", {}).get("containerStatuses") or []
        return bool(statuses) and statuses[0]["restartCount"] >= 1
    cluster.wait_for("the kubelet to restart the container", restarted, timeout=90)


class _Hits(http.server.BaseHTTPRequestHandler):
    hits: list[float] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        _Hits.hits.append(time.monotonic())
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args):
        pass


def test_prestop_hook_then_the_grace_period(cluster, namespace):
    hook = http.server.HTTPServer((NODE_IP, 0), _Hits)  # the kubelet calls it from the node
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    _Hits.hits.clear()
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
    try:
        apply(cluster, pod("stubborn", namespace, stubborn, terminationGracePeriodSeconds=4, container={
            "lifecycle": {"preStop": {"httpGet": {"host": NODE_IP, "port": hook.server_port,
                                                  "path": "/prestop"}}}}))
        wait_ready(cluster, namespace, "stubborn")
        t0 = time.monotonic()
        cluster.kubectl("delete", "pod", "stubborn", "-n", namespace, "--wait=true", "--timeout=60s", timeout=90)
        took = time.monotonic() - t0
    finally:
        hook.shutdown()
    assert _Hits.hits, "the preStop hook was never called"
    assert 3.5 <= took < 20, f"deletion took {took:.1f}s with a 4 s grace period and SIGTERM ignored"


def test_job_runs_to_completion(cluster, namespace):
    template = pod("answer", namespace, "print(6 * 7)", restartPolicy="Never")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "answer", "namespace": namespace},
           "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": "answer"}},
                                                     "spec": template["spec"]}}}
    apply(cluster, job)

    def complete() -> bool:
        conditions = get(cluster, "job", "answer", "-n", namespace).get("status", {}).get("conditions") or []
        return any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)
    cluster.wait_for("the Job Complete", complete, timeout=90)
    assert cluster.kubectl("logs", "job/answer", "-n", namespace).stdout.strip() == "42"


def test_an_image_never_imported_fails_to_pull_without_leaving_the_machine(cluster, namespace):
    body = pod("ghost", namespace, SLEEP)
    body["spec"]["containers"][0]["image"] = "kubeinfer/not-built:0.0.1"

    def waiting_reason() -> str:
        statuses = get(cluster, "pod", "ghost", "-n", namespace).get("status", {}).get("containerStatuses") or []
        waiting = statuses[0]["state"].get("waiting", {}) if statuses else {}
        return waiting.get("reason", "") + " " + waiting.get("message", "")
    apply(cluster, body)
    reason = cluster.wait_for("ErrImagePull", lambda: (lambda r: r if "ImagePull" in r else "")(waiting_reason()),
                              timeout=60)
    assert "127.0.0.1:1" in reason or "ImagePullBackOff" in reason, reason

