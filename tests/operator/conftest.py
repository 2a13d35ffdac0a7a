"""Shared fixtures for the operator tests.

Pure tests: ``settings`` and ``make_spec`` (a typed spec from a plain spec dict).
Cluster tests: ``crd`` (applied once), ``operator`` (kubeinfer-operator as a real
process watching the test's namespace), ``k`` (kubectl JSON helpers) and ``make_infd``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devkit.ports import free_port
from devkit.processes import spawn, terminate
from kubeinfer_operator import batchspec
from kubeinfer_operator import spec as specmod
from kubeinfer_operator.settings import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings(server_image="example/kubeinfer-server:test")


@pytest.fixture
def make_spec(settings: Settings):
    def make(name: str = "fraud", namespace: str = "ml", **spec: Any) -> specmod.InferenceSpec:
        spec.setdefault("model", {"uri": "s3://models/fraud/3/model.onnx"})
        return specmod.parse(name, namespace, spec, settings)

    return make


# ---- Cluster fixtures: the CRD applied once, and the operator as a real process. ----


REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "kubeinfer.io_inferencedeployments.yaml"
BATCH_CRD_FILE = REPO / "crds" / "kubeinfer.io_inferencebatchjobs.yaml"
OPERATOR = Path(sys.executable).parent / "kubeinfer-operator"


@pytest.fixture(scope="session")
def crd(cluster):
    """Both CRDs (InferenceDeployment, InferenceBatchJob), applied with the project's kubectl and Established."""
    for path in (CRD_FILE, BATCH_CRD_FILE):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/inferencedeployments.kubeinfer.io", "crd/inferencebatchjobs.kubeinfer.io")
    return CRD_FILE


class OperatorProcess:
    """``kubeinfer-operator`` running for real against the cluster, its log kept in a file."""

    def __init__(self, cluster, namespace: str, log_path: Path, resync_seconds: float = 2.0) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.log_path = log_path
        self.resync_seconds = resync_seconds
        self.metrics_port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": self.cluster.kubeconfig}
        self.proc = spawn([str(OPERATOR), "--namespace", self.namespace, "--resync-seconds", str(self.resync_seconds),
                           "--server-image", "example.invalid/kubeinfer-server:test",
                           "--metrics-port", str(self.metrics_port)], self.log_path, env=env)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it with SIGTERM (SIGKILL after 20 s), or with ``sig`` at once (SIGKILL: a crash)."""
        if self.proc is None:
            return
        if sig != signal.SIGTERM and self.proc.poll() is None:
            self.proc.send_signal(sig)
        terminate(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def start_operator(cluster, crd, namespace, tmp_path):
    """Starts more operators on ``namespace`` (each with its own log); all stopped afterwards."""
    started = []

    def start(log_name: str = "operator.log", resync_seconds: float = 2.0) -> OperatorProcess:
        proc = OperatorProcess(cluster, namespace, tmp_path / log_name, resync_seconds).start()
        started.append(proc)
        return proc

    yield start
    _delete_while_running(cluster, namespace, started)
    for proc in started:
        proc.stop()


@pytest.fixture
def operator(cluster, crd, namespace, tmp_path):
    """A started operator watching ``namespace``; stopped (and its log shown on failure) afterwards."""
    proc = OperatorProcess(cluster, namespace, tmp_path / "operator.log").start()
    yield proc
    _delete_while_running(cluster, namespace, [proc])
    proc.stop()


def _delete_while_running(cluster, namespace: str, operators: list) -> None:
    """Delete the test's InferenceDeployments while an operator still runs, so deletion is observed."""
    if any(p.proc is not None and p.proc.poll() is None for p in operators):
        cluster.kubectl("delete", "infd", "--all", "-n", namespace, "--wait=true", "--timeout=60s",
                        check=False, timeout=90)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for name in ("operator",):
        proc = getattr(item, "funcargs", {}).get(name)
        if isinstance(proc, OperatorProcess):
            report.sections.append(("kubeinfer-operator log (tail)", proc.log()[-6000:]))


class Kubectl:
    """Small JSON helpers over the project's kubectl for one namespace."""

    def __init__(self, cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def get(self, kind: str, name: str | None = None, selector: str | None = None):
        args = ["get", kind, "-n", self.namespace, "-o", "json", "--show-managed-fields"]
        if name:
            args.insert(2, name)
        if selector:
            args += ["-l", selector]
        proc = self.cluster.kubectl(*args, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        return json.loads(proc.stdout)

    def apply(self, obj: dict, check: bool = True):
        return self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(obj), check=check)

    def patch(self, kind: str, name: str, patch: dict):
        return self.cluster.kubectl("patch", kind, name, "-n", self.namespace, "--type=merge",
                                    "-p", json.dumps(patch))

    def condition(self, name: str, kind: str = "Ready"):
        infd = self.get("infd", name)
        for c in ((infd or {}).get("status") or {}).get("conditions") or []:
            if c["type"] == kind:
                return c
        return None

    def wait_condition(self, name, status="True", reason=None, kind="Ready", timeout=60, generation=None):
        def check():
            infd = self.get("infd", name) or {}
            if generation is not None and (infd.get("status") or {}).get("observedGeneration") != generation:
                return None
            c = self.condition(name, kind)
            if c and c["status"] == status and (reason is None or c["reason"] == reason):
                return c
            return None

        return self.cluster.wait_for(f"{kind}={status} {reason or ''} on infd {name}", check, timeout=timeout)


@pytest.fixture
def k(cluster, namespace):
    return Kubectl(cluster, namespace)


def infd(name: str, **spec) -> dict:
    """An InferenceDeployment with small requests, so many fit on the kwok nodes."""
    spec.setdefault("model", {"uri": "s3://models/fraud/3/model.onnx"})
    spec.setdefault("resources", {"requests": {"cpu": "10m", "memory": "16Mi"}})
    return {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def make_infd():
    return infd


def ibj(name: str, **spec) -> dict:
    """An InferenceBatchJob with small requests."""
    spec.setdefault("model", {"uri": "s3://models/fraud/3/model.onnx"})
    spec.setdefault("input", {"uri": "s3://data/in/"})
    spec.setdefault("output", {"uri": "s3://data/out/"})
    spec.setdefault("resources", {"requests": {"cpu": "10m", "memory": "16Mi"}})
    return {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceBatchJob",
            "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def make_ibj():
    return ibj


@pytest.fixture
def make_batch_spec(settings: Settings):
    def make(name: str = "scores", namespace: str = "ml", **spec: Any) -> batchspec.BatchSpec:
        return batchspec.parse(name, namespace, ibj(name, **spec)["spec"], settings)

    return make

