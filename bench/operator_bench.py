"""Operator benchmark: 200 InferenceDeployments created at once on the local cluster.

Reports the time until all are Ready, p50/p99 from apply to Ready, the
operator's peak RSS, the API writes of the operator's resyncs once everything is
Ready (from its own ``kubeinfer_operator_api_writes_total``; zero is the target),
and a baseline: the same child objects (built by the same
pure builders) applied directly by this script with as many parallel writers
as the operator has workers, timed until every Deployment is available. The
ratio operator/direct is the operator's overhead.

Starts a private local cluster (so nothing else shares its nodes), or with
``--reuse`` uses the one ``make cluster-up`` started (.cluster/kubeconfig).
kwok nodes hold 110 pods each: enough extra CPU nodes for ``--count`` are added
(``kwok-bench-N``) and removed again.

Usage: python bench/operator_bench.py [--count 500] [--reuse]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from devkit.ports import free_port
from kubeinfer_operator import builders, drift, kube, naming, settings
from kubeinfer_operator.certificate_plan import plan_certificates
from kubeinfer_operator.spec import parse
from localcluster import Cluster
from localcluster.nodes import kwok_node

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "kubeinfer.io_inferencedeployments.yaml"
OPERATOR = Path(sys.executable).parent / "kubeinfer-operator"
WORKERS = 16
PODS_PER_NODE = 100  # of a kwok node's 110, leaving room for what else runs there
RESYNC_SECONDS = 10.0  # the bench operator's resync: a few of them are measured once all are Ready
SPEC = {"model": {"uri": "s3://models/bench/model.onnx"}, "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _fresh_namespace(cluster, name: str) -> None:
    cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true", timeout=300)
    cluster.kubectl("create", "namespace", name)


def _ready(infd: dict) -> bool:
    conditions = (infd.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def bench_nodes(count: int) -> list[dict]:
    """Extra CPU nodes so that ``count`` one-replica InferenceDeployments fit."""
    return [kwok_node(f"kwok-bench-{i}", f"10.250.1.{i + 1}", 16, "64Gi")
            for i in range(count // PODS_PER_NODE + 1)]


def _operator_counts(port: int) -> tuple[float, float]:
    """(reconciles, API writes) so far, from the operator's own /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals = {"kubeinfer_operator_reconciles_total": 0.0, "kubeinfer_operator_api_writes_total": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals["kubeinfer_operator_reconciles_total"], totals["kubeinfer_operator_api_writes_total"]


def _idle_resync_writes(port: int, count: int) -> dict:
    """Once everything is Ready: let the status settle for two resyncs, then count the API writes
    of the next full resync of every InferenceDeployment."""
    time.sleep(2 * RESYNC_SECONDS)
    reconciles, writes = _operator_counts(port)
    deadline = time.monotonic() + 10 * RESYNC_SECONDS
    while time.monotonic() < deadline:
        time.sleep(1)
        done, now = _operator_counts(port)
        if done - reconciles >= count:
            return {"resync_reconciles": done - reconciles, "resync_api_writes": now - writes}
    return {"resync_reconciles": _operator_counts(port)[0] - reconciles, "resync_api_writes": float("nan")}


def bench_operator(cluster, client: kube.Kube, count: int, namespace: str) -> dict:
    _fresh_namespace(cluster, namespace)
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    log = open(Path(tempfile.gettempdir()) / "kubeinfer-operator-bench.log", "wb")
    port = free_port()
    proc = subprocess.Popen([str(OPERATOR), "--namespace", namespace, "--metrics-port", str(port),
                             "--resync-seconds", str(RESYNC_SECONDS)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        time.sleep(3)  # let kopf start its watches, so the burst is what it sees
        items = [{"apiVersion": naming.API_VERSION, "kind": naming.KIND,
                  "metadata": {"name": f"m{i:03d}", "namespace": namespace}, "spec": SPEC} for i in range(count)]
        applied_at: dict[str, float] = {}

        def create(item: dict) -> None:
            client.apply(item)
            applied_at[item["metadata"]["name"]] = time.monotonic()

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(create, items))
        applied = time.monotonic()
        ready_at: dict[str, float] = {}
        while len(ready_at) < count and time.monotonic() - start < 900:
            for infd in client.list(naming.API_VERSION, naming.KIND, namespace, ""):
                if _ready(infd):
                    ready_at.setdefault(infd["metadata"]["name"], time.monotonic())
            time.sleep(0.25)
        idle = _idle_resync_writes(port, count) if len(ready_at) == count else {}
        peak = _peak_rss_mib(proc.pid)
        # kopf's timer finalizer: delete while the operator runs, so it can let go.
        cluster.kubectl("delete", "infd", "--all", "-n", namespace, "--wait=true", timeout=600)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    # Per object: from its apply returning to Ready (polled every 0.25 s).
    latencies = [ready_at[n] - applied_at[n] for n in ready_at]
    return {"ready": len(ready_at), "all_ready_s": max(ready_at.values(), default=start) - start,
            "apply_s": applied - start, "p50_s": _percentile(latencies, 0.5), "p99_s": _percentile(latencies, 0.99),
            "operator_peak_rss_mib": peak, **idle}


def bench_direct(cluster, client: kube.Kube, count: int, namespace: str) -> dict:
    """The same children, applied by this script: what any controller must at least spend."""
    _fresh_namespace(cluster, namespace)
    config = settings.load(env={})
    now = dt.datetime.now(dt.UTC)

    def make(i: int) -> None:
        spec = parse(f"m{i:03d}", namespace, SPEC, config)
        material = plan_certificates(spec, {}, now, config)
        for obj in builders.desired_children(spec, material, {"apiVersion": "v1", "kind": "ConfigMap",
                                                             "name": "bench-owner", "uid": owner_uid}):
            client.apply(drift.stamp(obj))
        applied_at[spec.name] = time.monotonic()

    owner = client.apply({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "bench-owner", "namespace": namespace}})
    owner_uid = owner["metadata"]["uid"]
    applied_at: dict[str, float] = {}
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(make, range(count)))
    available: dict[str, float] = {}
    while len(available) < count and time.monotonic() - start < 900:
        for dep in client.list("apps/v1", "Deployment", namespace, f"app.kubernetes.io/managed-by={naming.MANAGED_BY}"):
            if (dep.get("status") or {}).get("availableReplicas", 0) >= 1:
                available.setdefault(dep["metadata"]["name"], time.monotonic())
        time.sleep(0.25)
    latencies = [available[n] - applied_at[n] for n in available]
    return {"ready": len(available), "all_ready_s": max(available.values(), default=start) - start,
            "p50_s": _percentile(latencies, 0.5), "p99_s": _percentile(latencies, 0.99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--reuse", action="store_true", help="use the cluster of make cluster-up")
    args = parser.parse_args()
    cluster = Cluster(REPO / ".cluster")
    started = False
    if not (args.reuse and cluster.kubeconfig.exists() and cluster.readyz()):
        cluster = Cluster(Path(tempfile.mkdtemp(prefix="bench-cluster-")), tie_to_parent=True)
        cluster.up(timeout=240, log=lambda *_: None)
        started = True
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        cluster.kubectl("wait", "--for=condition=Established", "crd/inferencedeployments.kubeinfer.io")
        client = kube.connect(str(cluster.kubeconfig))
        nodes = bench_nodes(args.count)
        cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
        operator = bench_operator(cluster, client, args.count, "bench-operator")
        cluster.kubectl("delete", "namespace", "bench-operator", "--wait=true", timeout=300)
        direct = bench_direct(cluster, client, args.count, "bench-direct")
        cluster.kubectl("delete", "namespace", "bench-direct", "--wait=true", timeout=300)
        cluster.kubectl("delete", "nodes", *(n["metadata"]["name"] for n in nodes), "--ignore-not-found")
    finally:
        if started:
            cluster.down(log=lambda *_: None)
            shutil.rmtree(cluster.workdir, ignore_errors=True)
    report = {"count": args.count, "operator": operator, "direct": direct,
              "ratio_all_ready": operator["all_ready_s"] / direct["all_ready_s"],
              "ratio_p50": operator["p50_s"] / direct["p50_s"]}
    # The report is this script's output.
    print(json.dumps(report, indent=2))
    print(f"{args.count} InferenceDeployments: all Ready in {operator['all_ready_s']:.1f}s "
          f"(p50 {operator['p50_s']:.1f}s, p99 {operator['p99_s']:.1f}s), operator peak RSS "
          f"{operator['operator_peak_rss_mib']:.0f} MiB; direct apply {direct['all_ready_s']:.1f}s; "
          f"ratio {report['ratio_all_ready']:.2f}x; one idle resync: {operator.get('resync_api_writes')} API writes "
          f"over {operator.get('resync_reconciles')} reconciles")
    return 0 if operator["ready"] == args.count and direct["ready"] == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
