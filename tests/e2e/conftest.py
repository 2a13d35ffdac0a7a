"""Fixtures for the end-to-end tests: real pods (the pod runner), Prometheus, the adapter,
a model store on a test host, and the chart installed with helm (its operator pod runs).

A component that is missing skips the e2e tests with the command that provides it,
and fails them under CI=true. Everything started here stops at the end of the session
(and dies with the test process if it is killed: PR_SET_PDEATHSIG); namespaces,
veths and the bridge are removed by the runner, and swept at its next start.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

import monitoring
from devkit import models
from e2ekit.clients import RUNNER_PLACEMENT, get_json
from podrunner import service, testhost
from support.reports import on_failure

CHART = Path(__file__).resolve().parents[2] / "charts" / "kubeinfer"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(message: str) -> None:
    if CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True)
class Stack:
    workdir: Path
    store_dir: Path
    prometheus: str


@pytest.fixture(scope="session")
def stack(cluster, tmp_path_factory):
    if os.geteuid() != 0:
        _missing("the e2e tests need root (network namespaces, mount namespaces)")
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            _missing(f"{tool} not found (iproute2, util-linux)")
    if not os.access(monitoring.stack.PROMETHEUS, os.X_OK):
        _missing("prometheus not installed: run make e2e-deps")
    if not (cluster.bin_dir / "prometheus-adapter").exists():
        _missing("prometheus-adapter not built: run make cluster-build-adapter")
    workdir = Path(cluster.kubeconfig).parent
    kubeconfig = Path(cluster.kubeconfig)
    own_runner = service.pid(workdir) is None
    if own_runner:
        service.start(workdir, kubeconfig, tie_to_parent=True)
    own_monitoring = not all(monitoring.running(workdir).values())
    try:
        if own_monitoring:
            state = monitoring.start(workdir, kubeconfig, cluster.bin_dir, tie_to_parent=True)
        else:
            state = json.loads((workdir / "monitoring.json").read_text())
        store_dir = tmp_path_factory.mktemp("model-store")
        models.make_all(store_dir)
        store = testhost.model_store(store_dir, tmp_path_factory.getbasetemp() / "model-store.log")
        yield Stack(workdir, store_dir, state["prometheus"])
        store.stop()
    finally:
        if own_monitoring:
            monitoring.stop(workdir, kubeconfig, cluster.bin_dir)
        if own_runner:
            service.stop(workdir)


@dataclass(frozen=True)
class Install:
    namespace: str  # the operator's
    apps: str       # the namespace it watches, where the tests put InferenceDeployments
    release: str


def operator_pod(cluster, install: Install) -> dict | None:
    pods = get_json(cluster, "pods", "-n", install.namespace)["items"]
    for pod in pods:
        ready = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        if pod["spec"].get("nodeName") == "kubeinfer-runner-0" and ready.get("Ready") == "True":
            return pod
    return None


@pytest.fixture(scope="session")
def installed(cluster, stack, tmp_path_factory):
    """``helm install`` of the chart; its operator pod runs on the runner, in-cluster config."""
    suffix = uuid.uuid4().hex[:6]
    install = Install(f"kubeinfer-e2e-{suffix}", f"e2e-apps-{suffix}", f"kubeinfer-{suffix}")
    cluster.kubectl("create", "namespace", install.apps)
    values = tmp_path_factory.mktemp("helm") / "values.json"
    values.write_text(json.dumps({
        "watchNamespaces": [install.apps], "operator": {"resyncSeconds": 5}, **RUNNER_PLACEMENT}))
    cluster.helm("install", install.release, str(CHART), "--namespace", install.namespace,
                 "--create-namespace", "-f", str(values))
    try:
        cluster.wait_for("the operator pod Ready on the pod runner",
                         lambda: operator_pod(cluster, install), timeout=90)
        yield install
    finally:
        cluster.kubectl("delete", "infd", "--all", "-n", install.apps, "--wait=true",
                        "--timeout=60s", check=False, timeout=90)
        cluster.helm("uninstall", install.release, "--namespace", install.namespace, check=False)
        for ns in (install.apps, install.namespace):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@on_failure("stack")
def _runner_log(stack: Stack) -> list[tuple[str, str]]:
    """A failing e2e test's report carries the runner's log."""
    log = service.log_path(stack.workdir)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:]) if log.exists() else ""
    return [("pod runner log (tail)", tail)]
