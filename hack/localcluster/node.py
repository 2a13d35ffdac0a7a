"""The real node: containerd, a kubelet and kube-proxy on this machine, registered as ``kubeinfer-node-0``.

Real: the kubelet (built from the control plane's Kubernetes source), containerd 2.x
with Debian's runc and CNI plugins, kube-proxy in iptables mode. Pods run as
containers from images imported ahead of time (``make images``: there is no
registry), so ``kubectl logs``, ``exec`` and ``port-forward``, limits, probes,
securityContext, volumes and Jobs are Kubernetes' own.

One node per machine: its state lives in ``ROOT`` (fixed, so that what a killed run
left is found by the next one), containerd's image store in the shared cache. Its
processes keep pid files and logs in the cluster's work directory like the other
components. ``prepare`` runs before the API server (it binds the node's bridge
address); ``start`` after it; ``stop`` removes everything: pods, processes, mounts,
cgroups, the bridge, iptables chains; the sysctls are put back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from devkit.ports import free_port
from devkit.processes import Daemons, running_pid

from . import hostnet, leftovers
from .nodeconfig import (
    LABEL,
    NAME,
    NODE_IP,
    NodePaths,
    Ports,
    cni_config,
    containerd_config,
    kube_proxy_config,
    kubelet_config,
    registry_hosts_toml,
    toml,
)
from .versions import cache_base

ROOT = Path(os.environ.get("KUBEINFER_NODE_ROOT", "/run/kubeinfer-node"))
COMPONENTS = ("containerd", "kubelet", "kube-proxy")
Log = Callable[[str], None]


class NodeError(RuntimeError):
    """The real node could not be prepared, started or cleaned up."""


def images_manifest() -> Path:
    return cache_base() / "images" / "current.json"


def built_images() -> list[dict]:
    """The images ``make images`` built: ``[{"name", "archive", "id", "role"}, ...]`` (empty if none).

    Roles: ``server``, ``operator`` and ``pause`` (the pod sandbox).
    """
    try:
        return json.loads(images_manifest().read_text())["images"]
    except (OSError, ValueError, KeyError):
        return []


def image_named(images: list[dict], role: str) -> str:
    """The name of the built image with ``role``."""
    for image in images:
        if image.get("role") == role:
            return image["name"]
    raise NodeError(f"no {role} image in {images_manifest()}: run make images")


class Node:
    """The real node of the cluster whose files are in ``workdir`` (binaries in ``bins``)."""

    def __init__(self, workdir: Path, bins: Path, pki: Path, tie_to_parent: bool = False,
                 root: Path = ROOT) -> None:
        self.workdir, self.bins, self.pki = workdir, bins, pki
        self.daemons = Daemons(workdir, tie_to_parent=tie_to_parent)  # pid files and logs beside the cluster's
        self.paths = NodePaths(root, cache_base() / "node" / "containerd")

    # -- processes ----------------------------------------------------------------
    def running(self) -> dict[str, int | None]:
        return {c: self.daemons.pid(c) for c in COMPONENTS}

    def _spawn(self, component: str, args: list[str]) -> None:
        self.daemons.start(component, [str(self.bins / component), *args])

    def _stop(self, component: str, log: Log) -> None:
        pid = self.daemons.stop(component)
        if pid is not None:
            log(f"Stopped {component} (pid {pid})")

    def crictl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        endpoint = f"unix://{self.paths.containerd_socket}"
        proc = subprocess.run([str(self.bins / "crictl"), f"--runtime-endpoint={endpoint}",
                               f"--image-endpoint={endpoint}", "--timeout=30s", *args],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise NodeError(f"crictl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.bins / "ctr"), f"--address={self.paths.containerd_socket}",
                               "--namespace=k8s.io", *args], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    # -- lifecycle ------------------------------------------------------------------
    def prepare(self, log: Log) -> None:
        """Before the API server: clean up after a killed run, then the bridge and ip_forward.

        The node belongs to one cluster at a time: one whose API server still runs keeps it.
        """
        owner = self._other_owner()
        if owner is not None:
            raise NodeError(f"the real node belongs to the cluster running in {owner}: stop it first "
                            f"(make cluster-down, or python -m localcluster down --dir {owner})")
        removed = self.sweep()
        if removed:
            log(f"Cleaned up after an earlier node: {', '.join(removed)}")
        hostnet.add_bridge()
        saved = hostnet.read_sysctls([*hostnet.OUR_SYSCTLS, *hostnet.KUBELET_SYSCTLS])
        self.paths.root.mkdir(parents=True, exist_ok=True)
        (self.paths.root / "sysctls.json").write_text(json.dumps(saved, indent=1))
        (self.paths.root / "owner").write_text(f"{self.workdir}\n")
        hostnet.set_sysctls(hostnet.OUR_SYSCTLS)

    def _other_owner(self) -> Path | None:
        """The work directory of another cluster that holds the node and whose API server runs."""
        try:
            owner = Path((self.paths.root / "owner").read_text().strip())
        except OSError:
            return None
        return owner if owner != self.workdir and running_pid(owner / "kube-apiserver.pid") else None

    def start(self, kubeconfigs: dict[str, Path], deadline: float, log: Log) -> None:
        """containerd (images imported), then the kubelet and kube-proxy; waits for the node Ready."""
        images = built_images()
        sandbox = image_named(images, "pause")
        self._write_configs(sandbox, kubeconfigs)
        log(f"Starting containerd ({self.paths.containerd_socket})")
        self._spawn("containerd", [f"--config={self.paths.containerd_config}", "--log-level=warn"])
        self._wait("containerd's CRI", lambda: self.crictl("info", check=False).returncode == 0,
                   deadline, "containerd")
        self.crictl("rmp", "--force", "--all", check=False)  # sandboxes a killed run left in the store
        self.import_images(images, log)
        log(f"Starting the kubelet and kube-proxy (node {NAME} at {NODE_IP})")
        self._spawn("kubelet", [
            f"--config={self.paths.kubelet_config}", f"--kubeconfig={kubeconfigs['kubelet']}",
            f"--root-dir={self.paths.kubelet_root}", f"--cert-dir={self.paths.kubelet_root / 'pki'}",
            f"--hostname-override={NAME}", f"--node-ip={NODE_IP}",
            f"--node-labels={LABEL[0]}={LABEL[1]}", "--v=1",
            # cAdvisor's own containerd client (deprecated flag, still the only way to set it): without it
            # /metrics/cadvisor sees only raw cgroups, with no pod, namespace or container labels.
            f"--containerd={self.paths.containerd_socket}",
        ])
        self._spawn("kube-proxy", [f"--config={self.paths.kube_proxy_config}", "--v=1"])

    def _write_configs(self, sandbox: str, kubeconfigs: dict[str, Path]) -> None:
        paths = self.paths
        for d in (paths.root, paths.cni_conf_dir, paths.kubelet_root, paths.pod_logs, paths.image_store):
            d.mkdir(parents=True, exist_ok=True)
        ports = Ports(free_port(), free_port(), free_port(), free_port())
        paths.containerd_config.write_text(toml(containerd_config(paths, sandbox)))
        (paths.cni_conf_dir / "10-kubeinfer.conflist").write_text(json.dumps(cni_config(paths), indent=1))
        (paths.registry_hosts / "_default").mkdir(parents=True, exist_ok=True)
        (paths.registry_hosts / "_default" / "hosts.toml").write_text(registry_hosts_toml())
        # JSON is YAML: the stdlib writes both (make cluster-down may run without the venv).
        paths.kubelet_config.write_text(json.dumps(kubelet_config(paths, ports, self.pki), indent=1))
        paths.kube_proxy_config.write_text(
            json.dumps(kube_proxy_config(paths, ports, kubeconfigs["kube-proxy"]), indent=1))

    def import_images(self, images: list[dict], log: Log) -> None:
        """``ctr images import`` of each archive whose image is not in the store yet (also while running)."""
        stamp = self.paths.image_store / "kubeinfer-imported.json"
        try:
            imported = json.loads(stamp.read_text())
        except (OSError, ValueError):
            imported = {}
        present = set(self.ctr("images", "list", "--quiet").stdout.split())
        for image in images:
            if imported.get(image["name"]) == image["id"] and image["name"] in present:
                continue
            t0 = time.monotonic()
            self.ctr("images", "import", image["archive"])
            imported[image["name"]] = image["id"]
            stamp.write_text(json.dumps(imported, indent=1))
            log(f"Imported {image['name']} into containerd in {time.monotonic() - t0:.1f}s")

    def wait_ready(self, kubectl, deadline: float) -> None:
        def ready() -> bool:
            out = kubectl("get", "node", NAME, "-o", "json", check=False)
            if out.returncode != 0:
                return False
            conditions = json.loads(out.stdout).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        self._wait(f"node {NAME} Ready", ready, deadline, "kubelet")

    def _wait(self, what: str, check: Callable[[], bool], deadline: float, component: str) -> None:
        self.daemons.wait(what, check, deadline, component, NodeError, lines=40)

    def stop(self, log: Log) -> None:
        """Pods first (through containerd, which tears their networks down), then everything else.

        A node that another running cluster holds is left alone (this cluster never had it).
        """
        if self._other_owner() is not None:
            return
        self._stop("kube-proxy", log)
        self._stop("kubelet", log)
        if self.daemons.pid("containerd") is not None:
            self.crictl("rmp", "--force", "--all", check=False, timeout=120)
        self._stop("containerd", log)
        removed = self.sweep()
        if removed:
            log(f"Removed {', '.join(removed)}")

    def _node_processes(self) -> set[int]:
        """The node's daemons (by their command lines) and containerd's shims for its socket."""
        return leftovers.daemons(self.paths.root) | set(leftovers.shim_pids(self.paths.containerd_socket))

    def sweep(self) -> list[str]:
        """Remove what a node (running or killed) left: processes, mounts, cgroups, network, state."""
        removed = []
        strays = self._node_processes()
        if strays:
            leftovers.kill_pids(strays)
            removed.append(f"{len(strays)} node processes")
        killed = leftovers.kill_node_processes(self.paths.containerd_socket)
        if killed:
            removed.append(f"{killed} container processes")
        points = leftovers.unmount_all(self.paths.root)
        if points:
            removed.append(f"{len(points)} mounts")
        cgroups = leftovers.remove_cgroups()
        if cgroups:
            removed.append(f"{cgroups} kubepods cgroups")
        leftovers.remove_log_links(self.paths.pod_logs)
        leftovers.remove_shim_socket_dir()
        chains = hostnet.sweep_iptables()
        if chains:
            removed.append(f"{len(chains)} iptables chains")
        if hostnet.delete_bridge():
            removed.append(f"bridge {hostnet.BRIDGE}")
        saved_file = self.paths.root / "sysctls.json"
        if saved_file.exists():
            changed = hostnet.restore_sysctls(json.loads(saved_file.read_text()))
            if changed:
                removed.append(f"sysctls {', '.join(changed)} put back")
        if self.paths.root.exists() and not leftovers.mounts_under(self.paths.root):
            shutil.rmtree(self.paths.root, ignore_errors=True)
        return removed

    def leftovers(self) -> list[str]:
        """What the node would leave behind now (empty after ``stop``): for the cleanup test."""
        found = [f"process {p}" for p in sorted(self._node_processes() | leftovers.pod_pids())]
        found += [f"mount {m}" for m in leftovers.mounts_under(self.paths.root)]
        found += [f"cgroup {c}" for c in leftovers.kubepods_cgroups()]
        found += hostnet.leftover_chains()
        if hostnet.bridge_exists():
            found.append(f"bridge {hostnet.BRIDGE}")
        return found
