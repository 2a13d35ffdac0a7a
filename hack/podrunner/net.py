"""Pod networking on this machine: one bridge, one network namespace per pod.

Layout (all of it made here, nothing else is touched):
  bridge ``kib0`` with the gateway 10.244.128.1/17 (the runner node's InternalIP) and
  10.96.0.1/32, the ClusterIP of the ``kubernetes`` Service, where a forwarder to the
  loopback API server stands in for kube-proxy;
  per pod: netns ``kib-<id>`` holding ``eth0`` with the pod IP and ``lo``, joined to the
  bridge by a veth pair. Pods get routes to the pod subnet and to 10.96.0.1 only: no
  default route, so a pod can reach nothing but other pods, test hosts and the API.
kwok hands fake IPs from the lower half of 10.244.0.0/16 to the pods it simulates; the
runner uses the upper half, so the two never meet.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import socketserver
import subprocess
import threading
import time

BRIDGE = "kib0"
NETNS_PREFIX = "kib-"
VETH_PREFIX = "kibv"
SUBNET = ipaddress.ip_network("10.244.128.0/17")
GATEWAY = ipaddress.ip_address("10.244.128.1")
API_SERVICE_IP = "10.96.0.1"  # the kubernetes Service's ClusterIP; in the apiserver cert
API_SERVICE_PORT = 443
FIRST_POD_IP = ipaddress.ip_address("10.244.128.10")
TEST_HOSTS = ipaddress.ip_network("10.244.255.0/24")  # reserved for test hosts


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def ensure_bridge() -> None:
    if ip("link", "show", BRIDGE, check=False).returncode != 0:
        ip("link", "add", BRIDGE, "type", "bridge")
    ip("addr", "replace", f"{GATEWAY}/{SUBNET.prefixlen}", "dev", BRIDGE)
    ip("addr", "replace", f"{API_SERVICE_IP}/32", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")


def netns_pids(name: str) -> list[int]:
    out = ip("netns", "pids", name, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_netns_processes(name: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = netns_pids(name)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while pids and netns_pids(name) and time.monotonic() < deadline:
            time.sleep(0.1)


def add_netns(name: str, veth: str, address: str) -> None:
    """A namespace holding ``address`` on eth0, plugged into the bridge."""
    delete_netns(name, veth)
    ip("netns", "add", name)
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
    ip("link", "set", veth, "master", BRIDGE, "up")
    ip("-n", name, "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", "eth0")
    ip("-n", name, "link", "set", "eth0", "up")
    ip("-n", name, "link", "set", "lo", "up")
    ip("-n", name, "route", "add", f"{API_SERVICE_IP}/32", "via", str(GATEWAY))


def delete_netns(name: str, veth: str) -> None:
    kill_netns_processes(name)
    ip("link", "del", veth, check=False)
    ip("netns", "del", name, check=False)


def sweep() -> list[str]:
    """Remove every namespace, veth and the bridge this tooling made (also a killed run's)."""
    removed = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(NETNS_PREFIX):
            kill_netns_processes(name)
            ip("netns", "del", name, check=False)
            removed.append(name)
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        link = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if link.startswith(VETH_PREFIX):
            ip("link", "del", link, check=False)
    if ip("link", "show", BRIDGE, check=False).returncode == 0:
        ip("link", "del", BRIDGE, check=False)
        removed.append(BRIDGE)
    return removed


class Addresses:
    """Pod IPs from the runner's half of the pod CIDR (test hosts' /24 excluded)."""

    def __init__(self) -> None:
        self._used: set[str] = set()
        self._lock = threading.Lock()

    def take(self) -> str:
        with self._lock:
            for host in SUBNET.hosts():
                if host < FIRST_POD_IP or host in TEST_HOSTS:
                    continue
                if str(host) not in self._used:
                    self._used.add(str(host))
                    return str(host)
        raise RuntimeError("no pod IP left")

    def give_back(self, address: str) -> None:
        with self._lock:
            self._used.discard(address)


class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        upstream = socket.create_connection(self.server.upstream, timeout=10)  # type: ignore[attr-defined]
        upstream.settimeout(None)
        self.request.settimeout(None)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
        back.start()
        pump(self.request, upstream)
        back.join()
        upstream.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def forward(listen: tuple[str, int], upstream: tuple[str, int]) -> socketserver.ThreadingTCPServer:
    """A TCP forwarder (kube-proxy's job for the kubernetes Service), served on a thread."""
    server = _Server(listen, _Pipe)
    server.upstream = upstream  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True, name="api-forwarder").start()
    return server
