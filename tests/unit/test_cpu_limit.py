"""Reading the CPU limit (``cpulimit``) from a cgroup tree made in ``tmp_path``.

Covers: cgroup v2's ``cpu.max`` of the process's own cgroup, as ``/proc/self/cgroup``
names it; a parent's tighter quota wins; ``max`` is no quota; cgroup v1's
``cfs_quota_us`` over ``cfs_period_us`` (``-1``: none), the ``cpu`` controller
found among others on its line; a hybrid host (a v2 line, the cpu controller on
v1); a container whose mount shows its own cgroup while ``/proc/self/cgroup``
names the host's path (the mount's files, or a child cgroup found by the tail of
that path); a path outside the namespace's view; no cgroup files at all; the
whole-CPU limit rounds a quota up and never passes the affinity mask.
"""

import os
from pathlib import Path

import pytest

from kubeinfer_server.cpulimit import cgroup_cpu_limit, cgroup_cpu_quota

CPUS = len(os.sched_getaffinity(0))


def _v2(root: Path, path: str, cpu_max: str) -> None:
    directory = root / path.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cpu.max").write_text(cpu_max + "\n")


def _v1(root: Path, path: str, quota: int, period: int = 100000) -> None:
    directory = root / "cpu" / path.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (directory / "cpu.cfs_period_us").write_text(f"{period}\n")


def test_v2_reads_the_processs_own_cgroup(tmp_path):
    _v2(tmp_path, "/kubepods/pod1", "max 100000")
    _v2(tmp_path, "/kubepods/pod1/ctr", "250000 100000")
    _v2(tmp_path, "/other", "50000 100000")  # not this process's
    assert cgroup_cpu_quota(tmp_path, "0::/kubepods/pod1/ctr\n") == 2.5


def test_a_tighter_parent_quota_wins(tmp_path):
    _v2(tmp_path, "/kubepods/pod1", "150000 100000")
    _v2(tmp_path, "/kubepods/pod1/ctr", "400000 100000")
    assert cgroup_cpu_quota(tmp_path, "0::/kubepods/pod1/ctr\n") == 1.5


def test_v2_max_is_no_quota(tmp_path):
    _v2(tmp_path, "/", "max 100000")
    assert cgroup_cpu_quota(tmp_path, "0::/\n") is None


def test_v1_reads_the_cpu_controllers_cgroup(tmp_path):
    _v1(tmp_path, "/", -1)
    _v1(tmp_path, "/kubeinfer-test", 200000)
    membership = "5:memory:/elsewhere\n3:cpu,cpuacct:/kubeinfer-test\n0::/\n"
    assert cgroup_cpu_quota(tmp_path, membership) == 2.0


def test_v1_minus_one_is_no_quota(tmp_path):
    _v1(tmp_path, "/", -1)
    assert cgroup_cpu_quota(tmp_path, "1:cpu:/\n0::/\n") is None


def test_a_hybrid_host_reads_v1_when_v2_has_no_cpu_files(tmp_path):
    (tmp_path / "unified").mkdir()  # cgroup2 without the cpu controller, as on this machine
    _v1(tmp_path, "/job", 50000)
    assert cgroup_cpu_quota(tmp_path, "1:cpu:/job\n0::/job\n") == 0.5


@pytest.mark.parametrize("write", [_v1, _v2], ids=["v1", "v2"])
def test_a_container_sees_its_own_cgroup_at_the_mount(tmp_path, write):
    """/proc/self/cgroup names the host's path; the mount shows the container's cgroup at its root."""
    if write is _v1:
        write(tmp_path, "/", 300000)
    else:
        write(tmp_path, "/", "300000 100000")
    membership = "1:cpu:/kubepods/burstable/pod1/ctr\n0::/kubepods/burstable/pod1/ctr\n"
    assert cgroup_cpu_quota(tmp_path, membership) == 3.0


def test_a_child_of_the_containers_cgroup_is_found_by_its_path_tail(tmp_path):
    _v1(tmp_path, "/", 300000)
    _v1(tmp_path, "/kubeinfer-test", 100000)
    assert cgroup_cpu_quota(tmp_path, "1:cpu:/docker/abc/kubeinfer-test\n") == 1.0


def test_a_path_outside_the_namespace_reads_the_mount_only(tmp_path):
    _v2(tmp_path, "/", "200000 100000")
    _v2(tmp_path, "/x", "100000 100000")
    assert cgroup_cpu_quota(tmp_path, "0::/../../x\n") == 2.0


def test_no_cgroup_files_is_no_quota(tmp_path):
    assert cgroup_cpu_quota(tmp_path, "") is None
    assert cgroup_cpu_limit(tmp_path, "") == CPUS


def test_the_limit_rounds_up_and_stays_within_the_affinity_mask(tmp_path):
    _v2(tmp_path, "/a", "50000 100000")
    _v2(tmp_path, "/b", f"{(CPUS + 3) * 100000} 100000")
    assert cgroup_cpu_limit(tmp_path, "0::/a\n") == 1
    assert cgroup_cpu_limit(tmp_path, "0::/b\n") == CPUS
