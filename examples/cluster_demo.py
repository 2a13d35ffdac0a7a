"""The full kubeinfer flow on the local cluster: helm install, an InferenceDeployment, mTLS
predictions, the queue-depth HPA adding replicas under load, and beside it an
InferenceBatchJob scoring a dataset from an S3 store in two shards.

Run with ``make demo`` (root: the real node runs containers). It builds what is missing
(control plane, real node, images, adapter, Prometheus; cold: about 25-30 minutes on 2
cores, warm: seconds), starts the cluster with its real node, Prometheus and the adapter
(``.cluster/``), and leaves everything running for you to explore; ``make cluster-down``
stops it all. What is real and what is simulated: the README, "End to end on the local cluster".
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from devkit.models import make_mlp
from devkit.s3server import S3Server
from devkit.waiting import wait_for
from e2ekit import stack
from e2ekit.clients import NODE_PLACEMENT, Load, batch, client, infer, ready_addresses, write_secret
from localcluster import Cluster
from localcluster.nodeconfig import NODE_IP

REPO = Path(__file__).resolve().parents[1]
NAMESPACE, NAME, CLIENT = "ml", "fraud", "checkout"
BATCH_NAME, BATCH_ROWS = "fraud-scores", 20_000


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


def start_batch_job(kube: Kube, s3: S3Server, model_url: str) -> np.ndarray:
    """Puts a dataset in the S3 store and applies an InferenceBatchJob that scores it; returns the features."""
    x = np.random.default_rng(3).standard_normal((BATCH_ROWS, 256)).astype(np.float32)
    features = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 256)
    buffer = io.BytesIO()
    pq.write_table(pa.table({"txn_id": np.arange(BATCH_ROWS), "input": features}), buffer, row_group_size=5000)
    s3.create_bucket("data")
    s3.put("data", "transactions/today.parquet", buffer.getvalue())
    literals = [f"--from-literal={k}={v}" for k, v in s3.env().items()]
    kube.kubectl("delete", "secret", "store-keys", "-n", NAMESPACE, "--ignore-not-found")
    kube.kubectl("create", "secret", "generic", "store-keys", "-n", NAMESPACE, *literals)
    kube.kubectl("delete", "ibj", BATCH_NAME, "-n", NAMESPACE, "--ignore-not-found", "--wait=true", timeout=90)
    body = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceBatchJob",
            "metadata": {"name": BATCH_NAME, "namespace": NAMESPACE},
            "spec": {"model": {"uri": model_url}, "credentials": {"secretRef": {"name": "store-keys"}},
                     "input": {"uri": "s3://data/transactions/", "idColumn": "txn_id"},
                     "output": {"uri": "s3://data/scores/"}, "parallelism": 2,
                     "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}, **NODE_PLACEMENT}}
    kube.kubectl("apply", "-f", "-", input=json.dumps(body))
    return x


def show_batch_job(kube: Kube, s3: S3Server, model: Path, x: np.ndarray) -> None:
    def finished():
        found = json.loads(kube.kubectl("get", "ibj", BATCH_NAME, "-n", NAMESPACE, "-o", "json").stdout)
        return found if (found.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    status = kube.wait("the InferenceBatchJob to finish", finished, timeout=300)["status"]
    print(kube.kubectl("get", "ibj", BATCH_NAME, "-n", NAMESPACE).stdout)
    print(kube.kubectl("get", "jobs,pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={BATCH_NAME}",
                       "-o", "wide").stdout)
    if status["phase"] != "Succeeded":
        raise SystemExit(f"the batch job failed: {json.dumps(status['conditions'])}")
    client = s3.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="data", Prefix="scores/")["Contents"])
    parts = [k for k in keys if "/part-" in k]
    first = pq.read_table(io.BytesIO(client.get_object(Bucket="data", Key=parts[0])["Body"].read()))
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x[:5]})[0]
    got = np.stack(first.column("output").to_numpy(zero_copy_only=False)[:5])
    print(f"rows {status['rows']}, shards {status['shards']}; objects written: {', '.join(keys)}\n"
          f"first rows of {parts[0]} against in-process onnxruntime: max abs difference "
          f"{np.abs(got - want).max():.2e}")


def put_load(kube: Kube, certs) -> None:
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
    # Helm installs CRDs only on a first install: apply them first, so a rerun gets new ones too.
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
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

    say(f"Beside it, an InferenceBatchJob {NAMESPACE}/{BATCH_NAME}: {BATCH_ROWS} rows from an S3 store, 2 shards")
    s3 = S3Server(host=NODE_IP).start()  # SeaweedFS on the node's bridge address, where pods reach it
    try:
        x_batch = start_batch_job(kube, s3, url)
        put_load(kube, certs)
        say("The InferenceBatchJob's result (status counts from the pods' termination messages)")
        show_batch_job(kube, s3, model, x_batch)
    finally:
        s3.stop()
    print(kube.kubectl("get", "infd,hpa,pods", "-n", NAMESPACE, "-o", "wide").stdout)

    kc = f"{cluster.bins / 'kubectl'} --kubeconfig {cluster.kubeconfig}"
    prometheus = json.loads((cluster.workdir / "monitoring.json").read_text())["prometheus"]
    say(f"Done in {time.monotonic() - started:.0f}s. Everything keeps running; try:")
    print(f"""  {kc} get infd -n {NAMESPACE} -w            # scales back in ~30 s after the load stopped
  {kc} get --raw '/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/*/kubeinfer_queue_depth'
  {kc} describe infd {NAME} -n {NAMESPACE}
  {kc} get ibj {BATCH_NAME} -n {NAMESPACE} -o yaml  # the batch job's status (its S3 store stopped with the demo)
  {kc} edit infd {NAME} -n {NAMESPACE}       # e.g. spec.batching, spec.autoscaling
  {kc} logs -n {NAMESPACE} -l app.kubernetes.io/instance={NAME} -c server -f
  {kc} exec -n {NAMESPACE} {pod} -c server -- kubeinfer-server --help
  curl -s '{prometheus}/api/v1/query?query=kubeinfer_queue_depth'
  make cluster-down                               # stops everything and cleans the node up""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
