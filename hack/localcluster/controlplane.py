"""The local cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, a real node.

Real: the four control-plane components, built from source, and one node
(``localcluster.node``: a kubelet, containerd and kube-proxy) that runs the pods meant
for it as containers. Simulated: the other nodes, by kwok, which turns pods bound to
its fake nodes Running and Ready without running anything; their pod and node IPs are
fake and never connected to. The API server listens on the real node's bridge address
(pods reach it through the ``kubernetes`` Service), everything else on 127.0.0.1.
All state but the node's (pid files, logs, PKI, kubeconfigs) lives in one work directory.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devkit.ports import free_port
from devkit.processes import Daemons, sweep_stale_dirs

from . import node as real_node
from .nodeconfig import NODE_IP, SERVICE_CIDR
from .nodes import node_manifests
from .pki import kubeconfig_opener, kubeconfig_text, write_pki
from .versions import bin_dir, missing_binaries

# Start order; teardown runs it backwards (the real node's components stop first).
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
COMPONENTS = (*CONTROL_PLANE, *real_node.COMPONENTS)

POD_CIDR = "10.244.0.0/16"
KWOK_POD_CIDR = "10.244.0.0/17"  # the lower half; the real node's pods get the upper one
KWOK_NODE_IP = "10.250.0.1"  # fake, outside the pod CIDR; nothing connects to it
# Client certificates (pki/<name>.crt) that get a kubeconfig of their own.
NODE_USERS = ("kubelet-client", "kube-proxy")
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)
# kube-controller-manager controllers (canonical names, cmd/kube-controller-manager/names).
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "horizontal-pod-autoscaler-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "disruption-controller",
    "pod-garbage-collector-controller",
    "job-controller",
    "cronjob-controller",
    "statefulset-controller",
    "daemonset-controller",
    "resourcequota-controller",
    "root-ca-certificate-publisher-controller",
)

Log = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


class ClusterError(RuntimeError):
    """The control plane could not be built, started or reached."""



@dataclass
class Cluster:
    """One local control plane whose state lives in `workdir`.

    `tie_to_parent` makes every component die with the process that started it
    (PR_SET_PDEATHSIG): right for test sessions, wrong for `make cluster-up`.
    """

    workdir: Path
    bins: Path | None = None
    tie_to_parent: bool = False

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.bins = Path(self.bins) if self.bins else bin_dir()
        self.daemons = Daemons(self.workdir, tie_to_parent=self.tie_to_parent)
        self.node = real_node.Node(self.workdir, self.bins, self.pki, tie_to_parent=self.tie_to_parent)

    # -- paths ------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def server(self) -> str:
        return self.state().get("server", "")

    def log_tail(self, component: str, lines: int = 60) -> str:
        return self.daemons.log_tail(component, lines)

    # -- commands ---------------------------------------------------------------------
    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bins / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(cmd[2:])} failed ({proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}")
        return proc

    def readyz(self, timeout: float = 3.0) -> bool:
        """True when the apiserver answers /readyz with ok (admin client cert)."""
        if not self.server or not (self.pki / "ca.crt").exists():
            return False
        try:
            server, api = kubeconfig_opener(self.kubeconfig)
            with api.open(f"{server}/readyz", timeout=timeout) as resp:
                return resp.status == 200
        except (OSError, ValueError, KeyError, ssl.SSLError):
            return False

    def running(self) -> dict[str, int | None]:
        return {c: self.daemons.pid(c) for c in COMPONENTS}

    # -- lifecycle --------------------------------------------------------------------
    def up(self, timeout: float = 120.0, log: Log = _quiet) -> None:
        missing = missing_binaries() if self.bins == bin_dir() else []
        if missing:
            raise ClusterError(f"control plane binaries missing in {self.bins}: "
                               f"{', '.join(missing)}; run make cluster-build")
        if any(self.running().values()):
            if self.readyz():
                log(f"Found the cluster already up ({self.workdir})")
                try:  # images rebuilt since (make cluster-up builds them first) reach its node
                    self.node.import_images(real_node.built_images(), log)
                except real_node.NodeError as exc:
                    raise ClusterError(str(exc)) from exc
                return
            log("Found stale cluster processes; stopping them first")
            self.down(log=log)
        t0 = time.monotonic()
        deadline = t0 + timeout
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            self.node.prepare(log)  # the bridge first: the API server binds its address
        except (real_node.NodeError, RuntimeError, OSError) as exc:
            raise ClusterError(f"could not prepare the real node: {exc}") from exc
        etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port()
        data_root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        sweep_stale_dirs(data_root, "kubeinfer-etcd-")
        etcd_data = Path(tempfile.mkdtemp(prefix="kubeinfer-etcd-", dir=data_root))
        server = f"https://{NODE_IP}:{api_port}"
        self.state_file.write_text(json.dumps({
            "server": server, "etcd_client_port": etcd_client, "etcd_data": str(etcd_data),
            "bin_dir": str(self.bins)}, indent=2))
        write_pki(self.pki)
        self.kubeconfig.write_text(kubeconfig_text(server, self.pki))
        os.chmod(self.kubeconfig, 0o600)
        for user in NODE_USERS:
            self.user_kubeconfig(user).write_text(kubeconfig_text(server, self.pki, user))
        try:
            self._start_all(etcd_client, etcd_peer, api_port, etcd_data, deadline, log)
        except real_node.NodeError as exc:
            self.down(log=log)
            raise ClusterError(str(exc)) from exc
        except BaseException:
            self.down(log=log)
            raise
        log(f"Brought the cluster up in {time.monotonic() - t0:.1f}s ({server})")

    def user_kubeconfig(self, user: str) -> Path:
        return self.workdir / f"{user}.kubeconfig"

    def _start(self, component: str, args: list[str]) -> None:
        self.daemons.start(component, [str(self.bins / component), *args])

    def _wait(self, what: str, check, deadline: float, component: str) -> None:
        self.daemons.wait(what, check, deadline, component, ClusterError)

    def _start_all(self, etcd_client, etcd_peer, api_port, etcd_data, deadline, log):
        pki = self.pki
        etcd_url = f"http://127.0.0.1:{etcd_client}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        log(f"Starting etcd on {etcd_url} (data in {etcd_data})")
        self._start("etcd", [
            "--name=kubeinfer", f"--data-dir={etcd_data}", "--unsafe-no-fsync",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=kubeinfer={peer_url}", "--listen-metrics-urls=",
            "--log-level=warn", "--quota-backend-bytes=4294967296",
        ])

        def etcd_healthy():
            try:
                with urllib.request.urlopen(f"{etcd_url}/health", timeout=2) as r:
                    return json.load(r).get("health") == "true"
            except (OSError, ValueError):
                return False
        self._wait("etcd /health", etcd_healthy, deadline, "etcd")

        log(f"Starting kube-apiserver on https://{NODE_IP}:{api_port}")
        self._start("kube-apiserver", [
            f"--etcd-servers={etcd_url}",
            # The real node's bridge address: the host reaches it, and so do pods, through
            # the kubernetes Service (its endpoint is the advertise address).
            f"--bind-address={NODE_IP}", f"--advertise-address={NODE_IP}",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--anonymous-auth=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # Logs, exec and port-forward: the API server calls the kubelet at its InternalIP.
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            # No TaintNodesByCondition: it would put node.kubernetes.io/not-ready on every
            # new node, and only the node-lifecycle controller (not run here) takes it off.
            # ServiceAccount admission stays on: the real node's pods get their tokens.
            "--disable-admission-plugins=TaintNodesByCondition",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            # Aggregation layer, so a metrics adapter can register an APIService later.
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            "--enable-aggregator-routing=false",
            "--profiling=false",
        ])
        self._wait("kube-apiserver /readyz", self.readyz, deadline, "kube-apiserver")

        kc = f"--kubeconfig={self.kubeconfig}"
        log("Starting kube-controller-manager and kube-scheduler")
        self._start("kube-controller-manager", [
            kc, "--leader-elect=false", "--secure-port=0",
            f"--controllers={','.join(CONTROLLERS)}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--cluster-cidr={POD_CIDR}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--horizontal-pod-autoscaler-sync-period=2s",
            "--concurrent-gc-syncs=5",
        ])
        self._start("kube-scheduler", [kc, "--leader-elect=false", "--secure-port=0"])

        stages = self.workdir / "kwok-stages.yaml"
        stage_root = self.bins.parent / "kwok-stage"
        stages.write_text("\n---\n".join(
            (stage_root / s).read_text().strip() for s in KWOK_STAGES) + "\n")
        log("Starting kwok and creating its nodes")
        self._start("kwok", [
            kc, f"--config={stages}", "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--cidr={KWOK_POD_CIDR}", f"--node-ip={KWOK_NODE_IP}",
            "--node-lease-duration-seconds=40",
        ])
        self._create_nodes(deadline, log)
        self.node.start({"kubelet": self.user_kubeconfig("kubelet-client"),
                         "kube-proxy": self.user_kubeconfig("kube-proxy")}, deadline, log)
        self.node.wait_ready(self.kubectl, deadline)
        self._check_alive()

    def _create_nodes(self, deadline: float, log) -> None:
        nodes = node_manifests()
        self.kubectl("apply", "-f", "-",
                     input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
        # Status sent on create is kept by the API; make sure of it anyway (cheap).
        for n in nodes:
            got = json.loads(self.kubectl("get", "node", n["metadata"]["name"], "-o",
                                          "json").stdout)
            if "nvidia.com/gpu" in n["status"]["capacity"] and \
                    "nvidia.com/gpu" not in got.get("status", {}).get("allocatable", {}):
                self.kubectl("patch", "node", n["metadata"]["name"], "--subresource=status",
                             "--type=merge", "-p", json.dumps({"status": n["status"]}))
        names = [n["metadata"]["name"] for n in nodes]

        def all_ready():
            out = self.kubectl("get", "nodes", "-o", "json", check=False)
            if out.returncode != 0:
                return False
            ready = {
                item["metadata"]["name"]
                for item in json.loads(out.stdout)["items"]
                for cond in item.get("status", {}).get("conditions", [])
                if cond["type"] == "Ready" and cond["status"] == "True"
            }
            return set(names) <= ready
        self._wait(f"nodes Ready ({', '.join(names)})", all_ready, deadline, "kwok")

    def _check_alive(self) -> None:
        """Components that died after their own wait would only show up later; check now."""
        dead = [c for c, pid in self.running().items() if pid is None]
        if dead:
            raise ClusterError(f"{', '.join(dead)} exited during bring-up:\n" + "\n".join(
                f"--- {c}\n{self.log_tail(c)}" for c in dead))

    def down(self, log: Log = _quiet) -> None:
        self.node.stop(log)
        for component in reversed(CONTROL_PLANE):
            pid = self.daemons.stop(component)
            if pid is not None:
                log(f"Stopped {component} (pid {pid})")
        data = self.state().get("etcd_data")
        if data and Path(data).name.startswith("kubeinfer-etcd-"):
            shutil.rmtree(data, ignore_errors=True)
