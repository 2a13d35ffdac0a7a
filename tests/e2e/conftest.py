"""Fixtures for the end-to-end tests: pods run by the cluster's real node (containers from the
built images), Prometheus, the adapter, a model store, and the chart installed with helm.

A component that is missing skips the e2e tests with the command that provides it,
and fails them under CI=true. Everything started here stops at the end of the session
(and dies with the test process if it is killed: PR_SET_PDEATHSIG); the node's pods go
with the cluster.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

import monitoring
from devkit import models
from e2ekit import modelstore
from e2ekit.clients import NODE_PLACEMENT, get_json
from localcluster import node as real_node
from localcluster.nodeconfig import NAME as NODE
from support.reports import on_failure
from support.required import missing

CHART = Path(__file__).resolve().parents[2] / "charts" / "kubeinfer"


@dataclass(frozen=True)
class Stack:
    workdir: Path
    store: modelstore.ModelStore
    prometheus: str

    @property
    def store_dir(self) -> Path:
        return self.store.directory


@pytest.fixture(scope="session")
def stack(cluster, tmp_path_factory):
    for role in ("server", "operator"):
        try:
            real_node.image_named(real_node.built_images(), role)
        except real_node.NodeError as exc:
            missing(str(exc))
    if not os.access(monitoring.stack.PROMETHEUS, os.X_OK):
        missing("prometheus not installed: run make e2e-deps")
    if not (cluster.bin_dir / "prometheus-adapter").exists():
        missing("prometheus-adapter not built: run make cluster-build-adapter")
    workdir = Path(cluster.kubeconfig).parent
    kubeconfig = Path(cluster.kubeconfig)
    own_monitoring = not all(monitoring.running(workdir).values())
    try:
        if own_monitoring:
            state = monitoring.start(workdir, kubeconfig, cluster.bin_dir, tie_to_parent=True)
        else:
            state = json.loads((workdir / "monitoring.json").read_text())
        store_dir = tmp_path_factory.mktemp("model-store")
        models.make_all(store_dir)
        store = modelstore.start(store_dir, tmp_path_factory.getbasetemp() / "model-store.log")
        yield Stack(workdir, store, state["prometheus"])
        store.stop()
    finally:
        if own_monitoring:
            monitoring.stop(workdir, kubeconfig, cluster.bin_dir)


@dataclass(frozen=True)
class Install:
    namespace: str  # the operator's
    apps: str       # the namespace it watches, where the tests put InferenceDeployments
    release: str


def operator_pod(cluster, install: Install) -> dict | None:
    pods = get_json(cluster, "pods", "-n", install.namespace)["items"]
    for pod in pods:
        ready = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        if pod["spec"].get("nodeName") == NODE and ready.get("Ready") == "True":
            return pod
    return None


@pytest.fixture(scope="session")
def installed(cluster, stack, tmp_path_factory):
    """``helm install`` of the chart; its operator pod runs on the real node, in-cluster config."""
    suffix = uuid.uuid4().hex[:6]
    install = Install(f"kubeinfer-e2e-{suffix}", f"e2e-apps-{suffix}", f"kubeinfer-{suffix}")
    cluster.kubectl("create", "namespace", install.apps)
    values = tmp_path_factory.mktemp("helm") / "values.json"
    values.write_text(json.dumps({
        "watchNamespaces": [install.apps], "operator": {"resyncSeconds": 5}, **NODE_PLACEMENT}))
    cluster.helm("install", install.release, str(CHART), "--namespace", install.namespace,
                 "--create-namespace", "-f", str(values))
    _INSTALLS[install.namespace] = cluster
    try:
        cluster.wait_for("the operator pod Ready on the real node",
                         lambda: operator_pod(cluster, install), timeout=90)
        yield install
    finally:
        for kind in ("infd", "ibj"):
            cluster.kubectl("delete", kind, "--all", "-n", install.apps, "--wait=true",
                            "--timeout=60s", check=False, timeout=90)
        cluster.helm("uninstall", install.release, "--namespace", install.namespace, check=False)
        for ns in (install.apps, install.namespace):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


_INSTALLS: dict = {}  # operator namespace -> the cluster it is installed on


@on_failure("installed")
def _operator_log(install: Install) -> list[tuple[str, str]]:
    """A failing e2e test's report carries the tail of the operator's log."""
    cluster = _INSTALLS.get(install.namespace)
    if cluster is None:
        return []
    pod = operator_pod(cluster, install)
    if pod is None:
        return [("operator log (tail)", "no ready operator pod")]
    logs = cluster.kubectl("logs", "-n", install.namespace, pod["metadata"]["name"], "--tail=80", check=False,
                           timeout=30)
    return [("operator log (tail)", logs.stdout + logs.stderr)]


@on_failure("stack")
def _node_logs(stack: Stack) -> list[tuple[str, str]]:
    """A failing e2e test's report carries the tails of the kubelet's and containerd's logs."""
    sections = []
    for component in ("kubelet", "containerd"):
        log = stack.workdir / "logs" / f"{component}.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else ""
        sections.append((f"{component} log (tail)", tail))
    return sections
