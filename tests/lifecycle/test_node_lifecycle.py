"""A killed cluster is cleaned up by the next ``up``; ``down`` leaves nothing behind.

Run in a pytest session of its own (``make test`` runs ``pytest -m lifecycle
tests/lifecycle`` after the suite; the default run deselects the ``lifecycle`` marker):
it owns the machine's one real node, which the suite's cluster would otherwise hold.

The first cluster runs a pod and a Service, then every one of its processes is killed
with SIGKILL, as when the machine's ``make cluster-up`` shell is killed: containerd's
shims and the containers outlive it, with their mounts, cgroups, iptables chains and
the bridge. The second ``up`` must clean that up and come up; its ``down`` must leave
no process, mount, cgroup, bridge, iptables chain, network namespace or sysctl change.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from devkit.waiting import wait_for
from localcluster import Cluster, ClusterError, hostnet, leftovers, missing_binaries
from localcluster import node as real_node
from localcluster.nodeconfig import NAME, PLACEMENT
from support.required import missing

pytestmark = [pytest.mark.cluster, pytest.mark.lifecycle]
REPO = Path(__file__).resolve().parents[2]


def _workload(cluster: Cluster) -> None:
    image = real_node.image_named(real_node.built_images(), "server")
    sleeper = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper", "namespace": "default",
                                                                "labels": {"app": "sleeper"}},
               "spec": {**PLACEMENT, "containers": [{"name": "main", "image": image, "ports": [
                   {"containerPort": 8080}], "command": ["python", "-c", "import time; time.sleep(3600)"]}]}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sleeper", "namespace": "default"},
               "spec": {"selector": {"app": "sleeper"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": [sleeper, service]}))
    def ready() -> bool:
        pod = json.loads(cluster.kubectl("get", "pod", "sleeper", "-o", "json").stdout)
        return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
    wait_for(ready, timeout=90, what="the sleeper pod Ready on the real node", interval=0.5)


def _kill_everything(cluster: Cluster) -> None:
    for component, pid in cluster.running().items():
        assert pid, f"{component} was not running"
        os.kill(pid, signal.SIGKILL)
    time.sleep(1)


def _netns_mounts() -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if " nsfs " in line and "cni-" in line]


@pytest.fixture
def free_node():
    if missing_binaries():
        missing(f"{', '.join(missing_binaries())} not built: run make cluster-build")
    if not real_node.built_images():
        missing("no images: run make images")
    if Cluster(REPO / ".cluster").readyz() or leftovers.daemons(real_node.ROOT):
        missing("another cluster holds the real node (make cluster-down first)")


def test_a_running_clusters_node_is_not_taken(free_node, tmp_path):
    first = Cluster(tmp_path / "owner", tie_to_parent=True)
    try:
        first.up(timeout=240)
        intruder = Cluster(tmp_path / "intruder", tie_to_parent=True)
        with pytest.raises(ClusterError, match="belongs to the cluster running in"):
            intruder.up(timeout=60)
        intruder.down()  # what the test plugin's atexit does after a failed up: must not touch the node
        assert first.readyz() and all(first.node.running().values())  # untouched
    finally:
        first.down()


def test_up_after_a_killed_run_cleans_up_and_down_leaves_nothing(free_node, tmp_path):
    sysctls_before = hostnet.read_sysctls([*hostnet.OUR_SYSCTLS, *hostnet.KUBELET_SYSCTLS])
    netns_before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    first = Cluster(tmp_path / "first")
    try:
        first.up(timeout=240)
        _workload(first)
        _kill_everything(first)
        left = first.node.leftovers()
        assert any(item.startswith("process") for item in left), left   # shims and containers
        assert any(item.startswith("mount") for item in left), left
        assert any("KUBE-SERVICES" in item for item in left), left
        assert f"bridge {hostnet.BRIDGE}" in left

        second = Cluster(tmp_path / "second", tie_to_parent=True)
        second.up(timeout=240)
        nodes = json.loads(second.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        assert NAME in {n["metadata"]["name"] for n in nodes}
        _workload(second)  # the node runs pods again, from a clean state
        second.down()
    finally:
        first.down()  # a no-op when the second cluster cleaned up; a safety net when a step failed
    assert second.node.leftovers() == []
    assert not [p for p in second.running().values() if p]
    assert not leftovers.daemons(real_node.ROOT)
    assert not real_node.ROOT.exists()
    assert not _netns_mounts()
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == netns_before
    assert hostnet.read_sysctls(sysctls_before) == sysctls_before
    links = list(leftovers.CONTAINER_LOG_LINKS.glob("*")) if leftovers.CONTAINER_LOG_LINKS.is_dir() else []
    assert not [link for link in links if link.is_symlink() and os.readlink(link).startswith(str(real_node.ROOT))]
