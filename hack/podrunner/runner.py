"""The runner: the kubelet of one node, ``kubeinfer-runner-0``, for kubeinfer's own images.

It registers its node (tainted ``kubeinfer.io/pod-runner=true:NoSchedule``, so only
pods that tolerate it land there; kwok does not manage it, so kwok never touches
these pods), serves the ``kubernetes`` Service address to pods (a forwarder on
10.96.0.1:443 to the loopback API server), then lists the pods bound to its node
twice a second and gives each a ``PodWorker``. On SIGTERM it stops every pod
(short grace), removes every namespace, veth and the bridge, and deletes its node.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from . import net
from .api import Api, ApiError
from .pods import PodWorker

log = logging.getLogger("podrunner")
NODE = "kubeinfer-runner-0"
TAINT = {"key": "kubeinfer.io/pod-runner", "value": "true", "effect": "NoSchedule"}
NODE_LABEL = ("kubeinfer.io/pod-runner", "true")
POD_ROOT = Path("/run/kubeinfer-pods")
POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 20.0
SHUTDOWN_GRACE_SECONDS = 5.0


def node_manifest(name: str) -> dict:
    resources = {"cpu": "32", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "type": "pod-runner", NODE_LABEL[0]: NODE_LABEL[1], "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
        "spec": {"taints": [TAINT]},
        "status": {
            "capacity": resources, "allocatable": dict(resources),
            "addresses": [{"type": "InternalIP", "address": str(net.GATEWAY)},
                          {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubeinfer pod runner is posting ready status",
                            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}],
            "nodeInfo": {"kubeletVersion": "podrunner", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "podrunner://0"},
        },
    }


class Runner:
    def __init__(self, kubeconfig: Path, node: str = NODE, pod_root: Path = POD_ROOT,
                 targets_file: Path | None = None) -> None:
        self.api = Api(kubeconfig)
        self.targets_file = targets_file
        self.targets: list | None = None
        self.node = node
        self.pod_root = pod_root
        self.addresses = net.Addresses()
        self.workers: dict[str, PodWorker] = {}
        self.stopping = threading.Event()
        self.forwarder = None

    def start(self) -> None:
        removed = net.sweep()
        if removed:
            log.info("Removed leftovers of an earlier run: %s", ", ".join(removed))
        shutil.rmtree(self.pod_root, ignore_errors=True)
        self.pod_root.mkdir(parents=True)
        net.ensure_bridge()
        upstream = urlparse(self.api.server)
        self.forwarder = net.forward((net.API_SERVICE_IP, net.API_SERVICE_PORT),
                                     (upstream.hostname, upstream.port))
        self.api.apply_node(node_manifest(self.node))
        log.info("Registered node %s (pods on %s, API at %s:%d)", self.node, net.SUBNET,
                 net.API_SERVICE_IP, net.API_SERVICE_PORT)

    def run_forever(self) -> None:
        beat = time.monotonic()
        while not self.stopping.is_set():
            try:
                self.sync(self.api.pods_on_node(self.node))
                if time.monotonic() - beat > HEARTBEAT_SECONDS:
                    beat = time.monotonic()
                    self.api.apply_node(node_manifest(self.node))
            except (ApiError, OSError) as exc:
                log.warning("Could not sync pods: %s", exc)
            self.stopping.wait(POLL_SECONDS)

    def sync(self, pods: list[dict]) -> None:
        seen = set()
        for pod in pods:
            meta = pod["metadata"]
            uid = meta["uid"]
            seen.add(uid)
            worker = self.workers.get(uid)
            if meta.get("deletionTimestamp"):
                grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                if worker is None:
                    self.api.delete_pod_now(meta["namespace"], meta["name"], uid)
                else:
                    worker.stop(grace)
            elif worker is None and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                worker = PodWorker(pod, self.api, self.addresses, self.pod_root)
                self.workers[uid] = worker
                worker.start()
        for uid, worker in list(self.workers.items()):
            if uid not in seen:
                worker.stop(0, delete=False)  # force-deleted: nothing to confirm
            if not worker.is_alive() and worker.grace is not None:
                del self.workers[uid]
        self.write_targets()

    def write_targets(self) -> None:
        """Prometheus file_sd: every running pod here that asks to be scraped (role-pod SD)."""
        if self.targets_file is None:
            return
        targets = []
        for worker in self.workers.values():
            notes = worker.pod["metadata"].get("annotations") or {}
            if worker.ip and notes.get("prometheus.io/scrape") == "true" and worker.running():
                meta = worker.pod["metadata"]
                targets.append({"targets": [f"{worker.ip}:{notes.get('prometheus.io/port', '80')}"],
                                "labels": {"namespace": meta["namespace"], "pod": meta["name"],
                                           "__metrics_path__": notes.get("prometheus.io/path", "/metrics")}})
        targets.sort(key=lambda t: t["targets"])
        if targets != self.targets:
            tmp = self.targets_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(targets, indent=1))
            os.replace(tmp, self.targets_file)
            self.targets = targets

    def shutdown(self) -> None:
        self.stopping.set()
        for worker in self.workers.values():
            worker.stop(SHUTDOWN_GRACE_SECONDS, delete=False)
        for worker in self.workers.values():
            worker.join(SHUTDOWN_GRACE_SECONDS + 10)
        try:
            self.api.delete_node(self.node)  # the pod GC then deletes its pods
        except (ApiError, OSError) as exc:
            log.warning("Could not delete node %s: %s", self.node, exc)
        if self.forwarder is not None:
            self.forwarder.shutdown()
            self.forwarder.server_close()
        net.sweep()
        shutil.rmtree(self.pod_root, ignore_errors=True)
        self.workers.clear()
        self.write_targets()
        log.info("Stopped the pod runner")


def main(kubeconfig: Path, node: str, targets_file: Path | None = None) -> int:
    runner = Runner(kubeconfig, node, targets_file=targets_file)

    def on_signal(signum, _frame):
        log.info("Received signal %d; stopping", signum)
        runner.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        runner.start()
        log.info("Pod runner ready")
        runner.run_forever()
    finally:
        runner.shutdown()
    return 0
