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
# The kubelet serves the containers' usage twice: cAdvisor's own series, and the resource metrics
# (what metrics-server reads: the same names, always with pod and container labels).
KUBELET_PATHS = ("/metrics/cadvisor", "/metrics/resource")
KUBELET_SERIES = ("container_(cpu_usage_seconds_total|memory_working_set_bytes|spec_cpu_quota|spec_cpu_period"
                  "|spec_memory_limit_bytes|cpu_cfs_periods_total|cpu_cfs_throttled_periods_total|oom_events_total)")
# Who the kubelet lets in: the API server's own client identity for kubelets (localcluster.pki).
KUBELET_CLIENT = "apiserver-kubelet-client"
VERSIONS = ("v1beta1", "v1beta2")
Log = Callable[[str], None]


class MissingComponent(RuntimeError):
    """Prometheus or the adapter is not installed/built."""


def prometheus_config(targets_file: Path, kubelet_targets: Path | None = None, pki: Path | None = None) -> dict:
    """Scrape what ``monitoring.targets`` lists (file_sd): Debian's build has no Kubernetes SD.

    It writes one target per running pod on the real node that asks to be scraped
    (``prometheus.io/scrape``), at podIP:``prometheus.io/port``, labelled with the
    pod's namespace and name: what role-pod discovery plus the usual relabelling
    give. The keep rule is a second guard: only addresses in the node's pod subnet.
    With ``kubelet_targets`` (and the cluster's ``pki``), also the real node's kubelet
    (``kubelet_jobs``).
    """
    jobs = [{
        "job_name": "kubeinfer-servers",
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
        "relabel_configs": [{"source_labels": ["__address__"],
                             "regex": NODE_POD_IPS + ":[0-9]+", "action": "keep"}],
    }]
    if kubelet_targets is not None and pki is not None:
        jobs += kubelet_jobs(kubelet_targets, pki)
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": jobs,
    }


def kubelet_jobs(targets_file: Path, pki: Path) -> list[dict]:
    """The real node's kubelet, ``/metrics/cadvisor`` and ``/metrics/resource``, every 5 s, over HTTPS.

    Its serving certificate (``pki/kubelet.crt``: IP SAN the node's address) is checked against the
    cluster CA. The client certificate is the API server's own for kubelets (``KUBELET_CLIENT``,
    CN kube-apiserver-kubelet-client, O system:masters, from the same CA): the kubelet's x509
    authentication trusts that CA, and its webhook authorization asks the API server, which allows
    system:masters everything (``get nodes/metrics`` here), as it does for ``kubectl logs``.
    Only the container series right-sizing and its tests read are kept.
    """
    tls = {"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / f"{KUBELET_CLIENT}.crt"),
           "key_file": str(pki / f"{KUBELET_CLIENT}.key")}
    return [{
        "job_name": "kubelet-" + path.rsplit("/", 1)[1],
        "scheme": "https",
        "metrics_path": path,
        "scrape_interval": "5s",
        "scrape_timeout": "5s",
        "tls_config": tls,
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
        "metric_relabel_configs": [{"source_labels": ["__name__"], "regex": KUBELET_SERIES, "action": "keep"}],
    } for path in KUBELET_PATHS]


def pki_of(kubeconfig: Path) -> Path:
    """The cluster's PKI folder: where the CA of one of its kubeconfigs lies (localcluster.pki)."""
    config = yaml.safe_load(Path(kubeconfig).read_text())  # JSON, as localcluster writes them, is YAML too
    return Path(config["clusters"][0]["cluster"]["certificate-authority"]).parent


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
    targets, kubelet_targets = workdir / "prometheus-targets.json", workdir / "prometheus-kubelet-targets.json"
    for path in (targets, kubelet_targets):
        path.write_text("[]")
    daemons.start("prometheus-targets", [sys.executable, "-m", "monitoring.targets", str(kubeconfig), str(targets),
                                         str(kubelet_targets)])
    config = prometheus_config(targets, kubelet_targets, pki_of(kubeconfig))
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
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
