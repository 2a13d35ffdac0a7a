"""Containers as processes: the image mapped to this checkout's command, run in the pod's netns.

Each container is ``ip netns exec <pod netns> unshare --mount`` followed by bind mounts
of the pod's volume directories onto the container's mountPaths (visible only inside
that private mount namespace), then ``exec`` of the command with the container's
args and env. The process dies with the runner (PR_SET_PDEATHSIG).

Not emulated (documented in the README, "End to end on the local cluster"): image
contents (the command comes from this checkout's .venv), the user and read-only root
filesystem of securityContext, resource limits, liveness and startup probes, exec probes.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devkit.processes import spawn

from . import net

VENV_BIN = Path(os.path.abspath(sys.executable)).parent
# image repository -> (ENTRYPOINT, CMD) of images/*.Dockerfile
IMAGES = {
    "kubeinfer/server": (["kubeinfer-server"], ["serve"]),
    "kubeinfer/server-gpu": (["kubeinfer-server"], ["serve", "--providers", "cuda,cpu"]),
    "kubeinfer/operator": (["kubeinfer-operator"], []),
}
IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
COMMANDS = {"kubeinfer-server", "kubeinfer-operator"}
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class ImageError(RuntimeError):
    """The image is none of kubeinfer's: the runner cannot 'pull' it."""


def repository(image: str) -> str:
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return name.removeprefix("docker.io/")


def runs(image: str) -> bool:
    return repository(image) in IMAGES


def argv(container: dict, env: dict[str, str]) -> list[str]:
    """ENTRYPOINT/CMD semantics of Kubernetes, then the command resolved in this checkout."""
    repo = repository(container["image"])
    if repo not in IMAGES:
        raise ImageError(f"image {container['image']} is not a kubeinfer image")
    entrypoint, cmd = IMAGES[repo]
    if container.get("command"):
        full = list(container["command"]) + list(container.get("args") or [])
    else:
        full = entrypoint + list(container.get("args") or cmd)
    full = [_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), a) for a in full]
    if full[0] not in COMMANDS:
        raise ImageError(f"executable {full[0]} not in image {container['image']}")
    return [str(VENV_BIN / full[0]), *full[1:]]


def field(pod: dict, path: str, pod_ip: str) -> str:
    meta = pod["metadata"]
    return {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"], "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": pod_ip, "status.hostIP": str(net.GATEWAY)}.get(path, "")


def environment(pod: dict, container: dict, pod_ip: str, lookup) -> dict[str, str]:
    """The process env: image ENV, the kubernetes Service variables, the container's env."""
    env = {"PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOSTNAME": pod["metadata"]["name"], "HOME": "/tmp", **IMAGE_ENV,
           "KUBERNETES_SERVICE_HOST": net.API_SERVICE_IP,
           "KUBERNETES_SERVICE_PORT": str(net.API_SERVICE_PORT),
           "KUBERNETES_PORT": f"tcp://{net.API_SERVICE_IP}:{net.API_SERVICE_PORT}"}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), var["value"])
            continue
        source = var.get("valueFrom") or {}
        if "fieldRef" in source:
            env[var["name"]] = field(pod, source["fieldRef"]["fieldPath"], pod_ip)
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            value = lookup(source)
            if value is not None:
                env[var["name"]] = value
    return env


@dataclass
class Mount:
    source: Path
    target: str


# The process runs this checkout's venv on the host's filesystem: a volume mounted over
# a directory holding the checkout or the Python installation (an emptyDir on /tmp
# with the checkout under /tmp) would hide them, so such a volume is not mounted.
HOST_PATHS = tuple({Path(__file__).resolve().parents[2], Path(sys.prefix).resolve(),
                    Path(sys.base_prefix).resolve()})


def _hides_host_paths(target: str) -> bool:
    mount_point = Path(target)
    return any(path == mount_point or mount_point in path.parents for path in HOST_PATHS)


def start(netns: str, command: list[str], env: dict[str, str], mounts: list[Mount],
          workdir: str, log: Path) -> subprocess.Popen:
    """The container's process, in the pod's network namespace and a private mount namespace."""
    lines = ["set -e"]
    for m in sorted(mounts, key=lambda m: m.target.count("/")):
        if _hides_host_paths(m.target):
            note = f"kubeinfer pod runner: not mounting a volume on {m.target}: it holds the project's checkout"
            lines.append(f"echo {shlex.quote(note)} >&2")
            continue
        Path(m.target).mkdir(parents=True, exist_ok=True)  # an empty mount point on the host
        lines.append(f"mount --bind {shlex.quote(str(m.source))} {shlex.quote(m.target)}")
    lines.append(f"cd {shlex.quote(workdir)}")
    lines.append('exec "$@"')
    return spawn(["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private",
                  "sh", "-c", "\n".join(lines), "sh", *command], log, env=env, tie_to_parent=True)


def log_tail(log: Path, lines: int = 80, limit: int = 2048) -> str:
    try:
        text = log.read_bytes()[-64 * 1024:].decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-limit:]


def _port(container: dict, port) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"no container port named {port}")


def probe(container: dict, spec: dict, pod_ip: str) -> bool:
    """One run of a readiness probe from the node (this host) to the pod IP."""
    timeout = float(spec.get("timeoutSeconds", 1))
    try:
        if "httpGet" in spec:
            get = spec["httpGet"]
            url = f"http://{pod_ip}:{_port(container, get['port'])}{get.get('path', '/')}"
            with _DIRECT.open(url, timeout=timeout) as response:
                return 200 <= response.status < 400
        if "grpc" in spec:
            target = f"{pod_ip}:{_port(container, spec['grpc']['port'])}"
            with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=spec["grpc"].get("service", "")),
                    timeout=timeout)
                return reply.status == health_pb2.HealthCheckResponse.SERVING
        if "tcpSocket" in spec:
            with socket.create_connection((pod_ip, _port(container, spec["tcpSocket"]["port"])),
                                          timeout=timeout):
                return True
    except (OSError, grpc.RpcError, ValueError):
        return False
    return True  # exec probes are not run: counted as passing (documented)


def signal_process(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
