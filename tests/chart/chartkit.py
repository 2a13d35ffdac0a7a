"""Helpers for the chart tests (imported as ``chart.chartkit``).

- ``value_args``: ``--set-json`` arguments for a values dict.
- ``OperatorRun``: ``kubeinfer-operator`` as a real process, configured from the
  installed chart's Deployment (its args and env) and authenticated as the
  chart's ServiceAccount with a token, so it runs under exactly the chart's RBAC.
- ``rbac_denials``: the lines of a log where the API server refused a request
  for lack of permission.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from devkit.direct import http_ok
from devkit.ports import free_port
from devkit.processes import terminate

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubeinfer"
OPERATOR = Path(sys.executable).parent / "kubeinfer-operator"


def value_args(values: dict[str, Any] | None) -> list[str]:
    """``--set-json`` arguments for a nested values dict (one per top-level key)."""
    return [arg for key, value in (values or {}).items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# Lines where the API server refused a request for lack of permission. A namespace
# being deleted also answers 403 ("being terminated"); that is not about RBAC.
# The leading timestamp is left out of the search: its milliseconds can read ",403]".
RBAC_DENIED = re.compile(r"forbidden|\b403\b|Not enough permissions", re.IGNORECASE)
TIMESTAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]")


def rbac_denials(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if RBAC_DENIED.search(TIMESTAMP.sub("", line)) and "being terminated" not in line]


class OperatorRun:
    """The operator as the chart configures it, authenticated as the chart's ServiceAccount."""

    def __init__(self, cluster, release_namespace: str, deployment: str, workdir: Path) -> None:
        self.cluster = cluster
        self.namespace = release_namespace
        self.deployment = deployment
        self.workdir = workdir
        self.log_path = workdir / "operator.log"
        self.health_port = free_port()
        self.proc: subprocess.Popen | None = None

    def _container(self) -> dict[str, Any]:
        deploy = json.loads(self.cluster.kubectl("get", "deployment", self.deployment, "-n", self.namespace,
                                                 "-o", "json").stdout)
        pod = deploy["spec"]["template"]["spec"]
        return {"serviceAccount": pod["serviceAccountName"], **pod["containers"][0]}

    def kubeconfig(self, service_account: str) -> Path:
        token = self.cluster.kubectl("create", "token", service_account, "-n", self.namespace,
                                     "--duration=2h").stdout.strip()
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.cluster.server,
                                                       "certificate-authority": self.cluster.ca_file}}],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [{"name": "operator", "context": {"cluster": "local", "user": service_account}}],
            "current-context": "operator",
        }
        path = self.workdir / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def start(self) -> OperatorRun:
        container = self._container()
        # The chart's liveness URL, moved to a free loopback port.
        args = [a for a in container.get("args", []) if not a.startswith("--liveness=")]
        args.append(f"--liveness=http://127.0.0.1:{self.health_port}/healthz")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBEINFER_", "KUBERNETES_"))}
        env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
        env["KUBECONFIG"] = str(self.kubeconfig(container["serviceAccount"]))
        env["KUBEINFER_METRICS_PORT"] = str(free_port())  # the pod's port is its own; here, one of many processes
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(OPERATOR), *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        return self

    def healthy(self) -> bool:
        """kopf's liveness endpoint (the chart's livenessProbe path) answers 200."""
        return http_ok(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=20)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
