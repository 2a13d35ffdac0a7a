"""The CPUs this process may use: its cgroup's CPU quota, else its affinity mask.

The one place the server reads its CPU limit, at load and whenever it
re-reads it (``resize``: an in-place pod resize changes the quota with no
restart). The quota is read from the process's own cgroup, found through
``/proc/self/cgroup``, and from each cgroup above it: a parent's quota binds
too, so the tightest one counts. Inside a container the container's cgroup
is usually what is mounted at the root (``/sys/fs/cgroup`` on cgroup v2,
``/sys/fs/cgroup/cpu`` on v1), while ``/proc/self/cgroup`` may still name its
path on the host: the longest tail of that path found under the mount is the
process's cgroup, and with none found the mount's own files count, which are
then the container's. cgroup v2 (``cpu.max``) is read first; without a quota
there, v1 (``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

CGROUP_ROOT = Path("/sys/fs/cgroup")
OWN_CGROUPS = Path("/proc/self/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, membership: str | None = None) -> int:
    """Whole CPUs this process may use: its cgroup quota rounded up, at most its affinity mask."""
    available = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(root, membership)
    if quota is None:
        return available
    return max(1, min(available, math.ceil(quota)))


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, membership: str | None = None) -> float | None:
    """CPUs' worth of time per period the tightest quota on this process's cgroups allows; None without one.

    ``root``: where the cgroup file systems are mounted; ``membership``: the text of
    ``/proc/self/cgroup`` (read when not given)."""
    if membership is None:
        membership = _read(OWN_CGROUPS) or ""
    unified, cpu = _own_paths(membership)
    quotas = [q for d in _upwards(root, unified) if (q := _v2_quota(d)) is not None]
    if not quotas:
        quotas = [q for d in _upwards(root / "cpu", cpu) if (q := _v1_quota(d)) is not None]
    return min(quotas, default=None)


def _own_paths(membership: str) -> tuple[str, str]:
    """This process's cgroup paths: (cgroup v2's, the v1 ``cpu`` controller's); "/" when not listed."""
    unified, cpu = "/", "/"
    for line in membership.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            unified = path
        elif "cpu" in controllers.split(","):
            cpu = path
    return unified, cpu


def _upwards(mount: Path, path: str) -> Iterator[Path]:
    """The process's cgroup directory under ``mount``, then each one above it up to ``mount`` itself.

    ``path`` is from the hierarchy's root; the mount may show a cgroup below that root (a
    container's, without a cgroup namespace), so the longest tail of ``path`` found under the
    mount is the process's directory, and none found leaves the mount's own."""
    parts = PurePosixPath(path).parts[1:]
    if ".." in parts:  # a cgroup outside this namespace's view: only the mount's own files apply
        parts = ()
    tail = next((parts[i:] for i in range(len(parts)) if mount.joinpath(*parts[i:]).is_dir()), ())
    for depth in range(len(tail), -1, -1):
        yield mount.joinpath(*tail[:depth])


def _v2_quota(directory: Path) -> float | None:
    fields = (_read(directory / "cpu.max") or "").split()
    try:
        return int(fields[0]) / int(fields[1]) if fields[0] != "max" else None
    except (IndexError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int(_read(directory / "cpu.cfs_quota_us") or "")
        period = int(_read(directory / "cpu.cfs_period_us") or "")
        return quota / period if quota > 0 and period > 0 else None
    except ValueError:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
