"""pytest plugin: a real local Kubernetes control plane (see docs/local-cluster.md).

Fixtures:
  cluster    (session) a `LocalCluster`: kubeconfig, bin_dir, server, ca_file,
             kubectl(...), helm(...), logs(component), wait_for(...).
  namespace  (function) a fresh namespace name, deleted afterwards.

The cluster is started once per session in a temporary directory on free ports and
stopped at the end (process groups, PR_SET_PDEATHSIG and atexit, so nothing outlives
the run), unless one started by `make cluster-up` already answers at
.cluster/kubeconfig: that one is reused and left running.

Binaries or images missing: tests fail under CI=true, otherwise they skip ("run make
cluster-build", "run make images"). The images are brought up to date first
(hack/build-images.sh: seconds when nothing changed), and a reused cluster's node
imports what changed, so the operator and servers in pods are the code under test.
When a test that uses the cluster fails, the tails of the component logs are attached
to its report (support.reports).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import localcluster
from support.reports import on_failure
from support.required import missing

REPO = Path(__file__).resolve().parents[2]
LOG_COMPONENTS = ("kube-scheduler", "kube-controller-manager", "kwok", "kube-apiserver",
                  "etcd", "kubelet", "containerd", "kube-proxy")


@dataclass(frozen=True)
class LocalCluster:
    """Handle on a running control plane. All commands use the admin kubeconfig."""

    kubeconfig: str
    bin_dir: Path
    server: str
    ca_file: str
    _impl: object

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        """Run the project's kubectl; on failure (check=True) the message includes logs."""
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def helm(self, *args: str, check: bool = True, input: str | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the project's helm against this cluster (own cache/config dirs)."""
        home = Path(self.kubeconfig).parent / "helm"
        env = {**os.environ, "KUBECONFIG": self.kubeconfig,
               "HELM_CACHE_HOME": str(home / "cache"),
               "HELM_CONFIG_HOME": str(home / "config"),
               "HELM_DATA_HOME": str(home / "data")}
        proc = subprocess.run([str(self.bin_dir / "helm"), *args], input=input,
                              capture_output=True, text=True, timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    @property
    def node(self):
        """The cluster's real node (``localcluster.node.Node``: crictl, its processes)."""
        return self._impl.node

    def logs(self, component: str, lines: int = 60) -> str:
        """The last lines of a component log (etcd, kube-apiserver, ..., kwok)."""
        return self._impl.log_tail(component, lines)

    def all_logs(self, lines: int = 30,
                 components: tuple[str, ...] = LOG_COMPONENTS) -> str:
        return "\n".join(f"----- {c} -----\n{self.logs(c, lines)}" for c in components)

    def wait_for(self, what: str, check: Callable[[], object], timeout: float = 60,
                 interval: float = 0.5, components: tuple[str, ...] = LOG_COMPONENTS):
        """Poll `check` until it returns something truthy (returned) or fail with logs."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = check()
            if last:
                return last
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n"
                    f"{self.all_logs(components=components)}")
            time.sleep(interval)


def _reusable(impl) -> bool:
    return impl.kubeconfig.exists() and impl.readyz(timeout=3)


def _start_private(base: Path):
    """A cluster of our own in the run's temp dir, stopped at session end or exit.

    Free ports are picked before the components bind them, so another process can
    take one in between; one retry on fresh ports covers that.
    """
    for attempt in (1, 2):
        impl = localcluster.Cluster(Path(tempfile.mkdtemp(prefix="cluster-", dir=base)),
                                    tie_to_parent=True)
        atexit.register(impl.down)
        try:
            impl.up(timeout=180)
            return impl
        except localcluster.ClusterError as exc:
            if attempt == 2:
                pytest.fail(f"local cluster did not come up: {exc}", pytrace=False)


def _build_images() -> None:
    """The node's images built from this checkout (what ``make images`` does; seconds when nothing
    changed), so that the operator and servers the tests run are the code under test."""
    try:
        proc = subprocess.run([str(REPO / "hack" / "build-images.sh"), "build"], capture_output=True,
                              text=True, timeout=1800)
    except OSError as exc:
        missing(f"the images could not be built ({exc}): run make images")
    if proc.returncode != 0 or not localcluster.node.built_images():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        missing(f"the images could not be built ({last}): run make images")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    absent = localcluster.missing_binaries()
    if absent:
        missing(f"local control plane not built ({', '.join(absent)} missing in "
                 f"{localcluster.bin_dir()}): run make cluster-build")
    _build_images()
    shared = localcluster.Cluster(REPO / ".cluster")
    if _reusable(shared):
        impl, started = shared, False
        impl.node.import_images(localcluster.node.built_images(), log=lambda _m: None)
    else:
        impl = _start_private(tmp_path_factory.getbasetemp())
        started = True
    handle = LocalCluster(kubeconfig=str(impl.kubeconfig), bin_dir=impl.bins,
                          server=impl.server, ca_file=str(impl.pki / "ca.crt"), _impl=impl)
    try:
        yield handle
    finally:
        if started:
            impl.down()
            shutil.rmtree(impl.workdir / "pki", ignore_errors=True)


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest):
    """A unique namespace; deleted afterwards without waiting for it to be gone."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40]
    name = f"{base.strip('-')}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for(f"default ServiceAccount in {name}", lambda: cluster.kubectl(
        "get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
        timeout=30, components=("kube-controller-manager",))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found",
                    check=False, timeout=30)


@on_failure("cluster")
def _component_logs(handle: LocalCluster) -> list[tuple[str, str]]:
    if not isinstance(handle, LocalCluster):
        return []
    return [(f"cluster log: {component} (tail)", handle.logs(component, 40)) for component in LOG_COMPONENTS]
