"""Up and down of the real-pods layer on a running local cluster (make e2e-up, e2e-down).

    python -m e2ekit up   [--dir .cluster]   (make e2e-up)
    python -m e2ekit down [--dir .cluster]   (make e2e-down; also part of cluster-down)

``up`` starts what is not running yet, untied from this process (it outlives the
command): the pod runner (node kubeinfer-runner-0), Prometheus and prometheus-adapter,
and the model store serving ``<workdir>/model-store``. ``down`` stops them all and
sweeps the runner's namespaces, veths and bridge. See the README, "End to end on the local cluster".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import monitoring
from devkit.processes import running_pid
from localcluster import Cluster
from podrunner import net, service, testhost

REPO = Path(__file__).resolve().parents[2]
STORE_PID = "model-store.pid"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def store_pid(workdir: Path) -> int | None:
    """The pid of the model store ``up`` started, while it runs."""
    return running_pid(workdir / STORE_PID)


def up(cluster: Cluster) -> None:
    if not cluster.readyz():
        raise SystemExit("error: the cluster is not up (make cluster-up)")
    if service.pid(cluster.workdir):
        _say("Found the pod runner already running")
    else:
        _say("Starting the pod runner (node kubeinfer-runner-0)")
        service.start(cluster.workdir, cluster.kubeconfig, tie_to_parent=False)
    monitoring.start(cluster.workdir, cluster.kubeconfig, cluster.bins, log=_say)
    store = cluster.workdir / "model-store"
    store.mkdir(exist_ok=True)
    if store_pid(cluster.workdir) is None:
        host = testhost.model_store(store, cluster.workdir / "logs" / "model-store.log",
                                    tie_to_parent=False)
        (cluster.workdir / STORE_PID).write_text(f"{host.proc.pid}\n")
        _say(f"Serving {store} at {testhost.store_url('')} (model store test host)")
    _say(f"Pod runner, Prometheus and prometheus-adapter up; logs in {cluster.workdir / 'logs'}")


def down(cluster: Cluster) -> None:
    monitoring.stop(cluster.workdir, cluster.kubeconfig, cluster.bins, log=_say)
    if service.stop(cluster.workdir):
        _say("Stopped the pod runner")
    (cluster.workdir / STORE_PID).unlink(missing_ok=True)
    leftovers = net.sweep()  # also stops the model store (processes in kib-* namespaces)
    if leftovers:
        _say(f"Removed {', '.join(leftovers)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2ekit", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("up", "down"))
    parser.add_argument("--dir", default=str(REPO / ".cluster"))
    args = parser.parse_args(argv)
    cluster = Cluster(Path(args.dir))
    try:
        (up if args.command == "up" else down)(cluster)
    except (RuntimeError, monitoring.MissingComponent) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
