"""python -m podrunner run | sweep (the pod runner; started by podrunner.service).

    run   --kubeconfig FILE [--node NAME] [--targets-file F]   be the kubelet of NAME until SIGTERM
    sweep                                   remove namespaces, veths, bridge of a killed run
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import net
from .runner import NODE, main


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podrunner", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "sweep"))
    parser.add_argument("--kubeconfig", type=Path)
    parser.add_argument("--node", default=NODE)
    parser.add_argument("--targets-file", type=Path,
                        help="write Prometheus file_sd targets of the pods here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    if args.command == "sweep":
        print("removed:", " ".join(net.sweep()) or "nothing")
        return 0
    if args.kubeconfig is None:
        parser.error("run needs --kubeconfig")
    return main(args.kubeconfig, args.node, args.targets_file)


sys.exit(cli())
