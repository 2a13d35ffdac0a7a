"""The real-pods layer on top of the local cluster: pod runner, Prometheus, prometheus-adapter.

    python hack/e2e_stack.py up   [--dir .cluster]   (make e2e-up)
    python hack/e2e_stack.py down [--dir .cluster]   (make e2e-down; also part of cluster-down)

See the README, "End to end on the local cluster".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HACK = Path(__file__).resolve().parent
sys.path.insert(0, str(HACK))

import monitoring  # noqa: E402  (needs the path above)
from localcluster import Cluster  # noqa: E402
from podrunner import net, service, testhost  # noqa: E402

REPO = HACK.parent


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
    if not service._alive(_store_pid(cluster.workdir) or 0):
        host = testhost.model_store(store, cluster.workdir / "logs" / "model-store.log",
                                    tie_to_parent=False)
        (cluster.workdir / "model-store.pid").write_text(f"{host.proc.pid}\n")
        _say(f"Serving {store} at {testhost.store_url('')} (model store test host)")
    _say(f"Pod runner, Prometheus and prometheus-adapter up; logs in {cluster.workdir / 'logs'}")


def _store_pid(workdir: Path) -> int | None:
    try:
        return int((workdir / "model-store.pid").read_text())
    except (OSError, ValueError):
        return None


def down(cluster: Cluster) -> None:
    monitoring.stop(cluster.workdir, cluster.kubeconfig, cluster.bins, log=_say)
    if service.stop(cluster.workdir):
        _say("Stopped the pod runner")
    (cluster.workdir / "model-store.pid").unlink(missing_ok=True)
    leftovers = net.sweep()  # also stops the model store (processes in kib-* namespaces)
    if leftovers:
        _say(f"Removed {', '.join(leftovers)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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


if __name__ == "__main__":
    sys.exit(main())
