"""Up and down of the e2e layer on a running local cluster (make e2e-up, e2e-down).

    python -m e2ekit up   [--dir .cluster]   (make e2e-up)
    python -m e2ekit down [--dir .cluster]   (make e2e-down; also part of cluster-down)

``up`` starts what is not running yet, untied from this process (it outlives the
command): Prometheus (with its target lister) and prometheus-adapter, and the model
store serving ``<workdir>/model-store`` on the real node's bridge address. ``down``
stops them all. The pods themselves run on the cluster's real node. See the README,
"End to end on the local cluster".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import monitoring
from devkit.processes import kill_group, running_pid
from localcluster import Cluster

from . import modelstore

REPO = Path(__file__).resolve().parents[2]
STORE_PID = "model-store.pid"
STORE_STATE = "model-store.json"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def store_url(workdir: Path, name: str) -> str:
    """The URL of ``name`` in the model store ``up`` started."""
    return json.loads((workdir / STORE_STATE).read_text())["url"] + name


def up(cluster: Cluster) -> None:
    if not cluster.readyz():
        raise SystemExit("error: the cluster is not up (make cluster-up)")
    monitoring.start(cluster.workdir, cluster.kubeconfig, cluster.bins, log=_say)
    store = cluster.workdir / "model-store"
    store.mkdir(exist_ok=True)
    if running_pid(cluster.workdir / STORE_PID) is None:
        host = modelstore.start(store, cluster.workdir / "logs" / "model-store.log", tie_to_parent=False)
        (cluster.workdir / STORE_PID).write_text(f"{host.proc.pid}\n")
        (cluster.workdir / STORE_STATE).write_text(json.dumps({"url": host.url("")}))
        _say(f"Serving {store} at {host.url('')} (the model store)")
    _say(f"Prometheus, prometheus-adapter and the model store up; logs in {cluster.workdir / 'logs'}")


def down(cluster: Cluster) -> None:
    monitoring.stop(cluster.workdir, cluster.kubeconfig, cluster.bins, log=_say)
    pid = running_pid(cluster.workdir / STORE_PID)
    if pid is not None:
        kill_group(pid)
        _say(f"Stopped the model store (pid {pid})")
    (cluster.workdir / STORE_PID).unlink(missing_ok=True)


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
