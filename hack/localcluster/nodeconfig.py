"""The real node's configuration files, as pure builders: containerd, CNI, kubelet, kube-proxy.

Every path the node writes or mounts lives under ``NodePaths`` (the cluster's work
directory, plus containerd's image store in the shared cache); every address is the
node's bridge or loopback. Facts behind the settings: ../shared/reference/containers.md.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

NAME = "kubeinfer-node-0"
BRIDGE = "kubeinfer0"
# Pods get the upper half of 10.244.0.0/16; kwok's fake pod IPs stay in the lower half.
POD_SUBNET = ipaddress.ip_network("10.244.128.0/17")
# The bridge's address: the node's InternalIP, the gateway of its pods, and where the API
# server listens so that pods reach it (the kubernetes Service's endpoint).
NODE_IP = "10.244.128.1"
SERVICE_CIDR = "10.96.0.0/16"
CNI_NETWORK = "kubeinfer"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
RUNC = "/usr/sbin/runc"       # Debian's runc (crun cannot run on hybrid cgroups)
# The node is tainted and labelled: only workloads that ask for a real kubelet land here,
# everything else keeps going to the kwok nodes.
LABEL = ("kubeinfer.io/node", "real")
TAINT = {"key": "kubeinfer.io/real-node", "value": "true", "effect": "NoSchedule"}
PLACEMENT = {
    "nodeSelector": {LABEL[0]: LABEL[1]},
    "tolerations": [{"key": TAINT["key"], "operator": "Exists", "effect": TAINT["effect"]}],
}


@dataclass(frozen=True)
class NodePaths:
    """Where the node's state lives: ``root`` in the work directory, images in ``image_store``."""

    root: Path
    image_store: Path

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni"

    @property
    def cni_data_dir(self) -> Path:
        return self.root / "cni-ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def kube_proxy_config(self) -> Path:
        return self.root / "kube-proxy.yaml"

    @property
    def registry_hosts(self) -> Path:
        return self.root / "registries"

    @property
    def runc_root(self) -> Path:
        return self.containerd_state / "runc"


@dataclass(frozen=True)
class Ports:
    kubelet: int
    kubelet_healthz: int
    proxy_healthz: int
    proxy_metrics: int


def containerd_config(paths: NodePaths, sandbox_image: str) -> dict:
    """containerd 2.x (config version 4): its own root, state and socket; runc, cgroupfs; no NRI."""
    runtime = "io.containerd.cri.v1.runtime"
    return {
        "version": 4,
        "root": str(paths.image_store),
        "state": str(paths.containerd_state),
        "imports": [],
        "disabled_plugins": ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.tracing"],
        "plugins": {
            "io.containerd.server.v1.grpc": {"address": str(paths.containerd_socket)},
            "io.containerd.server.v1.ttrpc": {"address": f"{paths.containerd_socket}.ttrpc"},
            "io.containerd.cri.v1.images": {
                "snapshotter": "overlayfs",
                # No registry: the sandbox image is imported ahead of time and never pulled.
                "pinned_images": {"sandbox": sandbox_image},
                # Every registry resolves to a closed loopback port (registry_hosts_toml), so a
                # pull of an image that was not imported fails at once and never leaves the machine.
                "registry": {"config_path": str(paths.registry_hosts)},
            },
            runtime: {
                # The sandbox asks for oom_score_adj -998, which needs CAP_SYS_RESOURCE (absent).
                "restrict_oom_score_adj": True,
                "netns_mounts_under_state_dir": True,
                "containerd": {
                    "default_runtime_name": "runc",
                    "runtimes": {"runc": {
                        "runtime_type": "io.containerd.runc.v2",
                        "options": {"BinaryName": RUNC, "Root": str(paths.runc_root),
                                    "SystemdCgroup": False},
                    }},
                },
                "cni": {"bin_dirs": [CNI_BIN_DIR], "conf_dir": str(paths.cni_conf_dir),
                        "max_conf_num": 1},
            },
            "io.containerd.grpc.v1.cri": {"stream_server_address": "127.0.0.1",
                                          "stream_server_port": "0"},
            "io.containerd.internal.v1.opt": {"path": str(paths.root / "opt")},
        },
    }


# A loopback port nothing listens on (port 1, tcpmux, is privileged and unused here).
NO_REGISTRY = "http://127.0.0.1:1"


def registry_hosts_toml() -> str:
    """``<registries>/_default/hosts.toml``: every registry is NO_REGISTRY, no fallback upstream."""
    return (f'server = "{NO_REGISTRY}"\n\n[host."{NO_REGISTRY}"]\n'
            'capabilities = ["pull", "resolve"]\n')


def cni_config(paths: NodePaths) -> dict:
    """One bridge network (the node's ``BRIDGE``, made before containerd starts) and portmap.

    No masquerade: pods reach only what is on the bridge (each other, the node's own
    address) and Service addresses, which kube-proxy turns into pod addresses.
    """
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(paths.cni_data_dir),
                      "ranges": [[{"subnet": str(POD_SUBNET), "gateway": NODE_IP}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(paths: NodePaths, ports: Ports, pki: Path) -> dict:
    """KubeletConfiguration for this host: cgroup v1 allowed, high ports, x509 + webhook auth."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports.kubelet_healthz,
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        # The kubelet refuses cgroup v1 by default since 1.35; this host has nothing else.
        "failCgroupV1": False,
        "podLogsDir": str(paths.pod_logs),
        "volumePluginDir": str(paths.kubelet_root / "volume-plugins"),
        "registerWithTaints": [TAINT],
        "maxPods": 110,
        # No cluster DNS (nothing in kubeinfer's pods resolves Service names; docs/local-cluster.md).
        "clusterDomain": "cluster.local",
        "resolvConf": "",
        # Images are imported, never pulled: never collect them, and never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%"},
        "serializeImagePulls": False,
        "syncFrequency": "5s",
        "fileCheckFrequency": "5s",
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
    }


def kube_proxy_config(paths: NodePaths, ports: Ports, kubeconfig: Path) -> dict:
    """kube-proxy in iptables mode for the node's pods; NodePorts only on the pod subnet."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": NAME,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{ports.proxy_healthz}",
        "metricsBindAddress": f"127.0.0.1:{ports.proxy_metrics}",
        "clusterCIDR": str(POD_SUBNET),
        # Loopback NodePorts would need net.ipv4.conf.all.route_localnet=1; none are used.
        "nodePortAddresses": [str(POD_SUBNET)],
        # Leave the host's conntrack table size alone.
        "conntrack": {"maxPerCore": 0, "min": 0},
        "iptables": {"syncPeriod": "10s", "minSyncPeriod": "0s"},
    }


def toml(table: dict) -> str:
    """The subset of TOML the containerd config needs: tables, strings, ints, bools, lists."""
    lines: list[str] = []

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    def emit(prefix: str, t: dict) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in t.items():
            if isinstance(v, dict):
                emit(f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k), v)

    emit("", table)
    return "\n".join(lines) + "\n"
