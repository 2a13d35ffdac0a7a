"""The command line of ``kubeinfer-server tune``: its flags, and the run from parsed flags to an exit code.

``cli.py`` adds the subcommand with ``add_arguments`` and calls ``command``,
which writes the report (JSON) to ``--report``, the table to stdout and
returns the exit code: 0 chosen, 3 nothing met the bound, 1 failed; a usage
error is ``parser.error`` (exit 2, its message the last line).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

from kubeinfer_server.tune_client import CLIENTS

log = logging.getLogger("kubeinfer_server")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated whole numbers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    p.add_argument("model", metavar="MODEL", help="the ONNX model (a local file)")
    p.add_argument("--cpus", type=_int_list, default=(1, 2, 4), metavar="N,...",
                   help="CPU counts to pin the server to (capped at this machine's; default 1,2,4)")
    p.add_argument("--threads", type=_int_list, default=(1, 2, 4), metavar="N,...",
                   help="serve --intra-op-threads values (0: as many as the CPUs; never above them; default 1,2,4)")
    p.add_argument("--instances", type=_int_list, default=(1, 2), metavar="N,...",
                   help="serve --instances values (default 1,2)")
    p.add_argument("--max-batch-size", type=_int_list, default=(0, 8, 32), metavar="N,...",
                   help="serve --max-batch-size values (0: no batching; default 0,8,32)")
    p.add_argument("--concurrency", type=_int_list, default=(1, 2, 4, 8, 16, 32, 64), metavar="N,...",
                   help="requests in flight, tried in ascending order (default 1,2,4,...,64)")
    p.add_argument("--p99-ms", type=float, default=50.0, metavar="X", help="the latency bound (default 50)")
    p.add_argument("--target-rps", type=float, metavar="N", help="inferences/s to serve: the replicas it needs")
    p.add_argument("--budget-seconds", type=float, default=120.0, metavar="S",
                   help="the whole sweep's time (default 120)")
    p.add_argument("--point-seconds", type=float, default=2.0, metavar="S",
                   help="the measured window of one point (default 2)")
    p.add_argument("--memory-margin", type=float, default=0.25, metavar="X",
                   help="added to the peak RSS for the pod's memory (default 0.25: 25%%)")
    p.add_argument("--client", choices=CLIENTS, default="auto",
                   help="the load generator (auto: perf_analyzer when found, else the built-in one)")
    p.add_argument("--compare-default", action=argparse.BooleanOptionalAction, default=True,
                   help="measure serve's default configuration first, for comparison")
    p.add_argument("--confirmations", type=int, default=3, metavar="N",
                   help="how many times the choice may be measured again before it stands (0: never; default 3)")
    p.add_argument("--serve-args", default="", metavar="'FLAGS'",
                   help="more serve flags for every configuration, e.g. '--access-log-sample-rate 0'")
    p.add_argument("--report", metavar="PATH", help="write the report (JSON) here too")
    p.add_argument("--log-level", default=env.get("KUBEINFER_LOG_LEVEL", "INFO"))


def settings(args: argparse.Namespace):
    """The settings of a parsed ``tune`` command line; TuneUsageError says what to fix."""
    from kubeinfer_server.tune_settings import TuneSettings

    return TuneSettings(
        model=args.model, cpus=args.cpus, threads=args.threads, instances=args.instances,
        max_batch_sizes=args.max_batch_size, concurrencies=args.concurrency, p99_ms=args.p99_ms,
        target_rps=args.target_rps, budget_seconds=args.budget_seconds, point_seconds=args.point_seconds,
        memory_margin=args.memory_margin, client=args.client, compare_default=args.compare_default,
        confirmations=args.confirmations,
        serve_args=args.serve_args, report=args.report)


def command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from kubeinfer_server.tune import TuneFailed, run
    from kubeinfer_server.tune_report import table
    from kubeinfer_server.tune_settings import TuneUsageError

    try:
        result = run(settings(args))
    except TuneUsageError as exc:
        parser.error(str(exc))
    except (TuneFailed, OSError) as exc:
        log.error("Tune failed: %s", exc)
        return 1
    except KeyboardInterrupt:  # the servers and clients were stopped on the way out
        log.error("Tune interrupted: no report")
        return 130
    sys.stdout.write(table(result))
    if args.report and not _write(args.report, result):
        return 1
    return 0 if result["chosen"] else 3


def _write(path: str, result: dict[str, Any]) -> bool:
    try:
        with open(path, "w") as handle:
            json.dump(result, handle, indent=2)
    except OSError as exc:
        log.error("Could not write the report to %s: %s", path, exc.strerror or exc)
        return False
    return True
