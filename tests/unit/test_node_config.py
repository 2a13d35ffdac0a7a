"""The real node's configuration builders and parsers, without a node (pure functions).

The settings that make a kubelet and containerd work on this host (cgroup v1, no
CAP_SYS_RESOURCE, no registry) and that keep every listener on the node's bridge or
loopback; the iptables listing parser the sweep relies on; the Prometheus target list.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

from localcluster import hostnet, nodeconfig
from localcluster.nodeconfig import NODE_IP, NodePaths, Ports
from monitoring.targets import targets

PATHS = NodePaths(Path("/run/kubeinfer-node"), Path("/cache/containerd"))
PORTS = Ports(kubelet=40001, kubelet_healthz=40002, proxy_healthz=40003, proxy_metrics=40004)


def test_containerd_config_is_valid_toml_with_this_hosts_settings():
    config = tomllib.loads(nodeconfig.toml(nodeconfig.containerd_config(PATHS, "localhost/kubeinfer/pause:3.10")))
    plugins = config["plugins"]
    assert config["version"] == 4 and config["root"] == "/cache/containerd"
    assert plugins["io.containerd.server.v1.grpc"]["address"] == "/run/kubeinfer-node/containerd.sock"
    images = plugins["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == "localhost/kubeinfer/pause:3.10"
    assert images["registry"]["config_path"] == "/run/kubeinfer-node/registries"
    runtime = plugins["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True  # no CAP_SYS_RESOURCE here
    assert runtime["netns_mounts_under_state_dir"] is True  # swept with the node's directory
    runc = runtime["containerd"]["runtimes"]["runc"]["options"]
    assert runc == {"BinaryName": "/usr/sbin/runc", "Root": "/run/kubeinfer-node/containerd/runc",
                    "SystemdCgroup": False}
    assert plugins["io.containerd.grpc.v1.cri"]["stream_server_address"] == "127.0.0.1"


def test_every_registry_is_a_closed_loopback_port():
    hosts = tomllib.loads(nodeconfig.registry_hosts_toml())
    assert hosts["server"] == "http://127.0.0.1:1"
    assert set(hosts["host"]) == {"http://127.0.0.1:1"}


def test_cni_network_is_the_bridge_with_the_node_address_as_gateway():
    bridge, portmap = nodeconfig.cni_config(PATHS)["plugins"]
    assert bridge["bridge"] == nodeconfig.BRIDGE and bridge["ipMasq"] is False
    [[address_range]] = bridge["ipam"]["ranges"]
    assert address_range["gateway"] == NODE_IP
    assert ipaddress.ip_address(NODE_IP) in ipaddress.ip_network(address_range["subnet"])
    assert bridge["ipam"]["dataDir"].startswith(str(PATHS.root))
    assert portmap["type"] == "portmap"


def test_kubelet_runs_on_cgroup_v1_on_high_ports_with_the_taint():
    config = nodeconfig.kubelet_config(PATHS, PORTS, Path("/pki"))
    assert config["failCgroupV1"] is False and config["cgroupDriver"] == "cgroupfs"
    assert config["address"] == NODE_IP and config["healthzBindAddress"] == "127.0.0.1"
    assert config["readOnlyPort"] == 0 and min(config["port"], config["healthzPort"]) > 1024
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["registerWithTaints"] == [nodeconfig.TAINT]
    assert config["podLogsDir"].startswith(str(PATHS.root))
    assert config["containerRuntimeEndpoint"] == f"unix://{PATHS.containerd_socket}"


def test_kube_proxy_listens_on_loopback_and_the_node_only():
    config = nodeconfig.kube_proxy_config(PATHS, PORTS, Path("/kp.kubeconfig"))
    assert config["mode"] == "iptables" and config["bindAddress"] == NODE_IP
    assert config["healthzBindAddress"].startswith("127.0.0.1:")
    assert config["metricsBindAddress"].startswith("127.0.0.1:")
    assert config["nodePortAddresses"] == [str(nodeconfig.POD_SUBNET)]
    assert config["conntrack"]["maxPerCore"] == 0


def test_placement_selects_and_tolerates_the_real_node_only():
    assert nodeconfig.PLACEMENT["nodeSelector"] == {nodeconfig.LABEL[0]: nodeconfig.LABEL[1]}
    [toleration] = nodeconfig.PLACEMENT["tolerations"]
    assert (toleration["key"], toleration["effect"]) == (nodeconfig.TAINT["key"], nodeconfig.TAINT["effect"])


IPTABLES_S = """-P INPUT ACCEPT
-P OUTPUT ACCEPT
-N CNI-HOSTPORT-DNAT
-N KUBE-SERVICES
-N KUBE-SVC-ABC
-N OTHER-CHAIN
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -j OTHER-CHAIN
-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-ABC
"""


def test_iptables_listing_parser_finds_our_chains_and_the_rules_into_them():
    chains = hostnet.our_chains(IPTABLES_S)
    assert chains == {"CNI-HOSTPORT-DNAT", "KUBE-SERVICES", "KUBE-SVC-ABC"}
    rules = hostnet.rules_jumping_to(IPTABLES_S, chains)
    # The quoted comment stays one argument, so `iptables -D` gets the rule back exactly.
    assert rules == [["OUTPUT", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
                     ["OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"]]


def _pod(name: str, phase: str = "Running", scrape: str = "true", ip: str = "10.244.128.7", **meta) -> dict:
    return {"metadata": {"name": name, "namespace": "ml", **meta,
                         "annotations": {"prometheus.io/scrape": scrape, "prometheus.io/port": "8002"}},
            "status": {"phase": phase, "podIP": ip}}


def test_prometheus_targets_are_the_running_pods_that_ask_to_be_scraped():
    pods = [_pod("b", ip="10.244.128.9"), _pod("a"), _pod("pending", phase="Pending"), _pod("quiet", scrape="false"),
            _pod("leaving", deletionTimestamp="2026-12-01T00:00:00Z")]
    assert targets(pods) == [
        {"targets": ["10.244.128.7:8002"], "labels": {"namespace": "ml", "pod": "a", "__metrics_path__": "/metrics"}},
        {"targets": ["10.244.128.9:8002"], "labels": {"namespace": "ml", "pod": "b", "__metrics_path__": "/metrics"}},
    ]


def test_prometheus_keeps_exactly_the_real_nodes_pod_subnet():
    import re

    from monitoring.stack import NODE_POD_IPS
    keep = re.compile(f"^{NODE_POD_IPS}$")
    subnet = nodeconfig.POD_SUBNET
    assert keep.match(str(subnet[1])) and keep.match(str(subnet[-2]))
    assert not keep.match("10.244.127.255") and not keep.match("10.250.0.10")  # kwok's fake addresses
