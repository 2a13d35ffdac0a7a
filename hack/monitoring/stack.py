"""Start and stop Prometheus and prometheus-adapter (see the package docstring)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from devkit.direct import http_ok
from devkit.ports import free_port
from devkit.processes import Daemons

REPO = Path(__file__).resolve().parents[2]
ADAPTER_RULES = REPO / "charts" / "kubeinfer" / "files" / "prometheus-adapter-rules.yaml"
PROMETHEUS = Path(os.environ.get("KUBEINFER_PROMETHEUS", "/usr/bin/prometheus"))
# The real node's pod subnet, 10.244.128.0/17 (localcluster.nodeconfig.POD_SUBNET).
NODE_POD_IPS = r"10\.244\.(12[89]|1[3-9][0-9]|2[0-4][0-9]|25[0-5])\.[0-9]+"
PROCESSES = ("prometheus", "prometheus-targets", "prometheus-adapter")
NAMESPACE = "kubeinfer-monitoring"
VERSIONS = ("v1beta1", "v1beta2")
Log = Callable[[str], None]


class MissingComponent(RuntimeError):
    """Prometheus or the adapter is not installed/built."""


def prometheus_config(targets_file: Path) -> dict:
    """Scrape what ``monitoring.targets`` lists (file_sd): Debian's build has no Kubernetes SD.

    It writes one target per running pod on the real node that asks to be scraped
    (``prometheus.io/scrape``), at podIP:``prometheus.io/port``, labelled with the
    pod's namespace and name: what role-pod discovery plus the usual relabelling
    give. The keep rule is a second guard: only addresses in the node's pod subnet.
    """
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "kubeinfer-servers",
            "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
            "relabel_configs": [{"source_labels": ["__address__"],
                                 "regex": NODE_POD_IPS + ":[0-9]+", "action": "keep"}],
        }],
    }


def running(workdir: Path) -> dict[str, int | None]:
    return {name: Daemons(workdir).pid(name) for name in PROCESSES}


def _kubectl(bins: Path, kubeconfig: Path, *args: str, input: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(bins / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
                          input=input, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc


def _registration(adapter_port: int) -> list[dict]:
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "prometheus-adapter", "namespace": NAMESPACE},
               "spec": {"type": "ExternalName", "externalName": "localhost",
                        "ports": [{"name": "https", "port": adapter_port}]}}
    apis = [{"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
             "metadata": {"name": f"{v}.custom.metrics.k8s.io"},
             "spec": {"group": "custom.metrics.k8s.io", "version": v,
                      "insecureSkipTLSVerify": True, "groupPriorityMinimum": 100,
                      "versionPriority": 100 + 100 * i,
                      "service": {"namespace": NAMESPACE, "name": "prometheus-adapter",
                                  "port": adapter_port}}}
            for i, v in enumerate(VERSIONS)]
    return [service, *apis]


def _wait(what: str, check: Callable[[], bool], timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
                      for p in logs if p.exists())
    raise RuntimeError(f"timed out waiting for {what}\n{tails}")


def start(workdir: Path, kubeconfig: Path, bins: Path, tie_to_parent: bool = False,
          log: Log = lambda _m: None, timeout: float = 90) -> dict:
    """Prometheus + adapter up and the APIServices Available; returns their addresses."""
    adapter = bins / "prometheus-adapter"
    for path, hint in ((PROMETHEUS, "make monitoring-install (apt-get install prometheus)"),
                       (adapter, "make cluster-build-adapter")):
        if not os.access(path, os.X_OK):
            raise MissingComponent(f"{path} missing: run {hint}")
    workdir = workdir.resolve()
    daemons = Daemons(workdir, tie_to_parent)
    stop(workdir, kubeconfig, bins)
    prom_port, adapter_port = free_port(), free_port()
    targets = workdir / "prometheus-targets.json"
    targets.write_text("[]")
    daemons.start("prometheus-targets", [sys.executable, "-m", "monitoring.targets", str(kubeconfig), str(targets)])
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(targets)))
    data = workdir / "prometheus-data"
    shutil.rmtree(data, ignore_errors=True)
    log(f"Starting Prometheus on 127.0.0.1:{prom_port}")
    daemons.start("prometheus", [
        str(PROMETHEUS), f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{prom_port}",
        "--storage.tsdb.retention.time=2h", "--web.enable-lifecycle"])
    prom_url = f"http://127.0.0.1:{prom_port}"
    _wait("Prometheus /-/ready", lambda: http_ok(f"{prom_url}/-/ready"), timeout,
          [workdir / "logs" / "prometheus.log"])
    log(f"Starting prometheus-adapter on 127.0.0.1:{adapter_port}")
    (workdir / "adapter-certs").mkdir(exist_ok=True)
    daemons.start("prometheus-adapter", [
        str(adapter), f"--prometheus-url={prom_url}", f"--config={ADAPTER_RULES}",
        "--metrics-relist-interval=2s", f"--secure-port={adapter_port}",
        "--bind-address=127.0.0.1", f"--cert-dir={workdir / 'adapter-certs'}",
        f"--lister-kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}", "--v=1"])
    _kubectl(bins, kubeconfig, "create", "namespace", NAMESPACE, check=False)
    _kubectl(bins, kubeconfig, "apply", "-f", "-",
             input=json.dumps({"apiVersion": "v1", "kind": "List", "items": _registration(adapter_port)}))
    log("Waiting for the custom.metrics.k8s.io APIServices to turn Available")

    def available() -> bool:
        out = _kubectl(bins, kubeconfig, "get", "apiservices", "-o", "json", check=False)
        if out.returncode != 0:
            return False
        ok = {i["metadata"]["name"] for i in json.loads(out.stdout)["items"]
              if any(c["type"] == "Available" and c["status"] == "True"
                     for c in i.get("status", {}).get("conditions", []))}
        return {f"{v}.custom.metrics.k8s.io" for v in VERSIONS} <= ok
    _wait("APIService v1beta1/v1beta2.custom.metrics.k8s.io Available", available, timeout,
          [workdir / "logs" / "prometheus-adapter.log"])
    state = {"prometheus": prom_url, "adapter": f"https://127.0.0.1:{adapter_port}"}
    (workdir / "monitoring.json").write_text(json.dumps(state))
    return state


def stop(workdir: Path, kubeconfig: Path, bins: Path, log: Log = lambda _m: None) -> None:
    """APIServices first (an unavailable aggregated API slows every discovery), then processes."""
    if Path(kubeconfig).exists():
        _kubectl(bins, kubeconfig, "delete", "apiservice", "--ignore-not-found", "--wait=false",
                 *[f"{v}.custom.metrics.k8s.io" for v in VERSIONS], check=False)
    daemons = Daemons(workdir)
    for name in PROCESSES:
        pid = daemons.stop(name)
        if pid is not None:
            log(f"Stopped {name} (pid {pid})")
