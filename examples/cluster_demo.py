"""The full kubeinfer flow on the local cluster: helm install, an InferenceDeployment, mTLS
predictions, and the queue-depth HPA adding replicas under load.

Run with ``make demo`` (root: the real node runs containers). It builds what is missing
(control plane, real node, images, adapter, Prometheus; cold: about 25-30 minutes on 2
cores, warm: seconds), starts the cluster with its real node, Prometheus and the adapter
(``.cluster/``), and leaves everything running for you to explore; ``make cluster-down``
stops it all. What is real and what is simulated: the README, "End to end on the local cluster".
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml

from devkit.models import make_mlp
from devkit.waiting import wait_for
from e2ekit import stack
from e2ekit.clients import NODE_PLACEMENT, Load, batch, client, infer, ready_addresses, write_secret
from localcluster import Cluster

REPO = Path(__file__).resolve().parents[1]
NAMESPACE, NAME, CLIENT = "ml", "fraud", "checkout"


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


class Kube:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60):
        return self.cluster.kubectl(*args, check=check, input=input, timeout=timeout)

    def helm(self, *args: str) -> None:
        home = self.cluster.workdir / "helm"
        env = {"KUBECONFIG": str(self.cluster.kubeconfig), "HELM_CACHE_HOME": str(home / "cache"),
               "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data"),
               "PATH": "/usr/bin:/bin"}
        subprocess.run([str(self.cluster.bins / "helm"), *args], check=True, env=env)

    def wait(self, what: str, check, timeout: float = 180) -> object:
        try:
            return wait_for(check, timeout, what, interval=1.0)  # each check runs kubectl: once a second
        except AssertionError as exc:
            raise SystemExit(f"{exc}; see .cluster/logs/") from None


def build_and_start() -> Cluster:
    say("Building what is missing (control plane, real node, images, prometheus-adapter, Prometheus)")
    subprocess.run(["make", "--no-print-directory", "e2e-deps", "images"], cwd=REPO, check=True)
    cluster = Cluster(REPO / ".cluster")
    say("Starting the local cluster (its real node too), Prometheus and prometheus-adapter")
    cluster.up(timeout=180, log=lambda m: print(f"    {m}", flush=True))
    stack.up(cluster)
    return cluster


def infd_manifest(store_url: str) -> dict:
    body = yaml.safe_load((REPO / "examples" / "inferencedeployment-cpu.yaml").read_text())
    spec = body["spec"]
    spec.pop("replicas", None)
    spec["model"]["uri"] = store_url
    spec["resources"] = {"requests": {"cpu": "250m", "memory": "256Mi"}}
    spec["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3, "targetQueueDepth": 4,
                           "scaleDownStabilizationSeconds": 30}
    spec["tls"] = {"mode": "Mutual", "clients": [{"name": CLIENT}], "allowedClients": [CLIENT]}
    spec.update(NODE_PLACEMENT)  # the real node is tainted: only pods meant to run there land there
    return body


def main() -> int:
    started = time.monotonic()
    cluster = build_and_start()
    kube = Kube(cluster)
    model = make_mlp(cluster.workdir / "model-store" / "fraud.onnx")
    url = stack.store_url(cluster.workdir, "fraud.onnx")
    say(f"Made a sample model ({model.name}, [-1,256] -> [-1,16]) served by the model store at {url}")

    say("helm install kubeinfer (the operator pod runs on the real node from the built image, in-cluster config)")
    values = cluster.workdir / "demo-values.json"
    values.write_text(json.dumps({"watchNamespaces": [NAMESPACE], **NODE_PLACEMENT}))
    kube.kubectl("create", "namespace", NAMESPACE, check=False)
    kube.helm("upgrade", "--install", "kubeinfer", str(REPO / "charts" / "kubeinfer"),
              "--namespace", "kubeinfer-system", "--create-namespace", "-f", str(values), "--wait",
              "--timeout", "3m")
    print(kube.kubectl("get", "pods", "-n", "kubeinfer-system", "-o", "wide").stdout)

    say(f"kubectl apply an InferenceDeployment {NAMESPACE}/{NAME} (from examples/, model from the store, mTLS)")
    applied = time.monotonic()
    kube.kubectl("apply", "-f", "-", input=json.dumps(infd_manifest(url)))
    kube.wait("Ready", lambda: json.loads(kube.kubectl("get", "infd", NAME, "-n", NAMESPACE, "-o", "json").stdout)
              .get("status", {}).get("readyReplicas"))
    print(f"Ready {time.monotonic() - applied:.1f}s after kubectl apply (model fetched by the init container)")
    print(kube.kubectl("get", "infd,pods", "-n", NAMESPACE, "-o", "wide").stdout)
    pod = json.loads(kube.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={NAME}",
                                  "-o", "json").stdout)["items"][0]["metadata"]["name"]
    say(f"kubectl logs {pod} (the server container, started by the kubelet from the built image)")
    print(kube.kubectl("logs", pod, "-n", NAMESPACE, "-c", "server", "--tail=15").stdout)

    say("Calling the model over mutual TLS with the client Secret's certificate")
    certs = write_secret(kube, NAMESPACE, f"{NAME}-client-{CLIENT}", cluster.workdir / "demo-client")
    addresses = ready_addresses(kube, NAMESPACE, NAME)
    x = batch(3, seed=7)
    got = infer(client(addresses, certs, f"{NAME}.{NAMESPACE}.svc"), NAME, x)
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    print(f"pod {addresses[0]} answered:\n{got[:, :6]}\nin-process onnxruntime:\n{want[:, :6]}\n"
          f"max abs difference: {np.abs(got - want).max():.2e}")

    say("Putting load on it (16 concurrent clients, round robin over the ready pods); watch the HPA")
    load = Load(kube, NAMESPACE, NAME, certs, workers=16, rows=32).start()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 45:
            status = json.loads(kube.kubectl("get", "hpa", NAME, "-n", NAMESPACE, "-o", "json").stdout)["status"]
            current = (status.get("currentMetrics") or [{}])[0].get("pods", {}).get("current", {})
            metric = current.get("averageValue", "-")
            # Until the HPA has read the metric once, its desiredReplicas is 0: not a decision.
            desired = status.get("desiredReplicas") if metric != "-" else "?"
            print(f"  t={time.monotonic() - t0:4.0f}s  queue depth/pod={metric:>6}  replicas "
                  f"{status.get('currentReplicas')}->{desired}  "
                  f"serving pods={len(load.addresses)}  ok={load.ok} failed={len(load.failures)}", flush=True)
            time.sleep(3)
    finally:
        load.stop()
    print(kube.kubectl("get", "infd,hpa,pods", "-n", NAMESPACE, "-o", "wide").stdout)

    kc = f"{cluster.bins / 'kubectl'} --kubeconfig {cluster.kubeconfig}"
    prometheus = json.loads((cluster.workdir / "monitoring.json").read_text())["prometheus"]
    say(f"Done in {time.monotonic() - started:.0f}s. Everything keeps running; try:")
    print(f"""  {kc} get infd -n {NAMESPACE} -w            # scales back in ~30 s after the load stopped
  {kc} get --raw '/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/*/kubeinfer_queue_depth'
  {kc} describe infd {NAME} -n {NAMESPACE}
  {kc} edit infd {NAME} -n {NAMESPACE}       # e.g. spec.batching, spec.autoscaling
  {kc} logs -n {NAMESPACE} -l app.kubernetes.io/instance={NAME} -c server -f
  {kc} exec -n {NAMESPACE} {pod} -c server -- kubeinfer-server --help
  curl -s '{prometheus}/api/v1/query?query=kubeinfer_queue_depth'
  make cluster-down                               # stops everything and cleans the node up""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
