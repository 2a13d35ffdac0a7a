"""What a node that was killed leaves on the host, found and removed (also after a clean stop).

- processes: the node's daemons (their command lines name its directory), containerd's
  runc shims for its socket and every process in the kubelet's ``kubepods`` cgroups
  (the containers);
- mounts under the node's directory (container root filesystems, the kubelet's
  volumes and its own bind mount, the pods' network namespaces), deepest first;
- the ``kubepods`` cgroup directories under each cgroup v1 controller;
- the kubelet's symlinks in /var/log/containers into the node's pod logs, and the shims'
  socket directory when it is empty.

Network leftovers (bridge, iptables chains) are ``hostnet``'s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"
CONTAINER_LOG_LINKS = Path("/var/log/containers")
SHIM_SOCKETS = Path("/run/containerd/s")  # where every containerd's shims put their sockets


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def daemons(root: Path) -> set[int]:
    """Processes other than this one whose command line names ``root`` (containerd, kubelet, kube-proxy)."""
    needle, me = str(root), os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            if any(needle in arg for arg in _cmdline(int(entry.name))):
                found.add(int(entry.name))
    return found


def shim_pids(socket: Path) -> list[int]:
    """containerd-shim-runc-v2 processes serving the containerd at ``socket``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = _cmdline(int(entry.name))
            if argv and argv[0].endswith("containerd-shim-runc-v2") and str(socket) in argv:
                found.append(int(entry.name))
    return found


def kubepods_cgroups() -> list[Path]:
    """Every cgroup directory under ``kubepods`` in every v1 controller, deepest first."""
    found: list[Path] = []
    if not CGROUP_ROOT.is_dir():
        return found
    for controller in CGROUP_ROOT.iterdir():
        top = controller / KUBEPODS
        if top.is_dir() and not controller.is_symlink():
            found += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def pod_pids() -> set[int]:
    pids: set[int] = set()
    for cgroup in kubepods_cgroups():
        try:
            pids.update(int(p) for p in (cgroup / "cgroup.procs").read_text().split())
        except (OSError, ValueError):
            pass
    return pids


def kill_pids(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_node_processes(socket: Path, timeout: float = 10.0) -> int:
    """SIGKILL the shims and every container process; returns how many there were."""
    deadline = time.monotonic() + timeout
    total = 0
    while time.monotonic() < deadline:
        pids = set(shim_pids(socket)) | pod_pids()
        if not pids:
            break
        total = max(total, len(pids))
        kill_pids(pids)
        time.sleep(0.2)
    return total


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` (from /proc/self/mountinfo), deepest first."""
    prefix = str(root.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def unmount_all(root: Path) -> list[str]:
    """Unmount everything at or below ``root`` (lazily when busy); returns the mount points."""
    done = []
    for _ in range(5):  # a bind mount can hide another at the same point: go again
        points = mounts_under(root)
        if not points:
            break
        for point in points:
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
            done.append(point)
    return done


def remove_cgroups() -> int:
    removed = 0
    for cgroup in kubepods_cgroups():
        try:
            cgroup.rmdir()
            removed += 1
        except OSError:
            pass
    return removed


def remove_log_links(pod_logs: Path) -> int:
    removed = 0
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(str(pod_logs)):
                link.unlink()
                removed += 1
    return removed


def remove_shim_socket_dir() -> None:
    """/run/containerd/s and /run/containerd, when empty (they are no one else's then)."""
    for d in (SHIM_SOCKETS, SHIM_SOCKETS.parent):
        try:
            d.rmdir()
        except OSError:
            pass
