"""Command line for the local control plane (make cluster-up / cluster-down / cluster-status).

    python -m localcluster up [--dir .cluster]
    python -m localcluster status [--dir .cluster]
    python -m localcluster down [--dir .cluster]

The logic lives in this package, shared with the pytest plugin (tests/support/cluster.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .controlplane import Cluster, ClusterError

REPO = Path(__file__).resolve().parents[2]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--dir", default=str(REPO / ".cluster"),
                        help="state directory (default: .cluster in the checkout)")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    cluster = Cluster(Path(args.dir))
    kubectl = cluster.bins / "kubectl"
    try:
        if args.command == "up":
            cluster.up(timeout=args.timeout, log=_say)
            print(f"\nkubeconfig: {cluster.kubeconfig}\n"
                  f"  export KUBECONFIG={cluster.kubeconfig}\n"
                  f"  {kubectl} get nodes\n"
                  f"logs: {cluster.workdir / 'logs'}/; stop with: make cluster-down")
        elif args.command == "down":
            cluster.down(log=_say)
            print("cluster down")
        else:
            running = cluster.running()
            for c, pid in running.items():
                print(f"{c:24} {'pid ' + str(pid) if pid else 'not running'}")
            ok = cluster.readyz()
            print(f"apiserver /readyz: {'ok' if ok else 'not answering'}"
                  + (f" ({cluster.server})" if ok else ""))
            return 0 if ok and all(running.values()) else 1
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
