"""``kubeinfer-server``: ``serve`` models over OIP v2 gRPC and REST, ``fetch`` a model file,
score a dataset offline with ``batch``, or size a pod with ``tune``.

Every ``serve`` flag also reads an environment variable, ``KUBEINFER_<FLAG>``
(the flag wins), so the operator can configure pods through env vars; the
table of them is ``settings.SERVE_FLAGS``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from kubeinfer_server import eventloop
from kubeinfer_server.errors import ModelLoadError
from kubeinfer_server.formats import INPUT_FORMATS, OUTPUT_FORMATS
from kubeinfer_server.settings import SERVE_FLAGS, Flag, ServeSettings, settings_from_values
from kubeinfer_server.tls import TlsError

SERVE_FLAGS_BY_NAME = {flag.name: flag for flag in SERVE_FLAGS}

log = logging.getLogger("kubeinfer_server")

FETCH_VARIABLES = {"uri": "KUBEINFER_FETCH_URI", "dest": "KUBEINFER_FETCH_DEST", "sha256": "KUBEINFER_FETCH_SHA256"}


def _converter(flag: Flag):
    """argparse's ``type`` for ``flag``: a ValueError becomes a usage error that says why."""

    def convert(text: str) -> Any:
        try:
            return flag.parse(text)
        except ValueError as exc:
            plain = flag.parse in (int, float)
            raise argparse.ArgumentTypeError(f"invalid value {text!r}" if plain else str(exc)) from None

    convert.__name__ = flag.name
    return convert


def _env_default(parser: argparse.ArgumentParser, flag: Flag, env: Mapping[str, str]) -> Any:
    if flag.env not in env:
        return flag.default
    try:
        return _converter(flag)(env[flag.env])
    except argparse.ArgumentTypeError as exc:
        parser.error(f"{flag.env}: {exc}")


def _serve_parser(sub, env: Mapping[str, str]) -> None:
    p = sub.add_parser("serve", help="serve ONNX models over the Open Inference Protocol (gRPC and REST)")
    p.set_defaults(command_parser=p)
    for flag in SERVE_FLAGS:
        default = _env_default(p, flag, env)
        help_text = f"{flag.help} [{flag.env}]".lstrip()
        if flag.name == "model":  # repeatable on the command line; the environment holds a list
            p.add_argument("--model", action="append", default=None, metavar="NAME=PATH", help=help_text)
            p.set_defaults(env_models=default)
            continue
        p.add_argument(f"--{flag.name}", type=_converter(flag), default=default, choices=flag.choices,
                       help=help_text)


def _fetch_parser(sub, env: Mapping[str, str]) -> None:
    p = sub.add_parser("fetch", help="download a model file and verify its checksum")
    p.set_defaults(command_parser=p)
    p.add_argument("uri", nargs="?", default=env.get(FETCH_VARIABLES["uri"]))
    p.add_argument("dest", nargs="?", default=env.get(FETCH_VARIABLES["dest"]))
    p.add_argument("--sha256", default=env.get(FETCH_VARIABLES["sha256"]))
    p.add_argument("--progress-seconds", type=float, default=5.0,
                   help="log the bytes fetched (of the total, when the store says it) this often")
    p.add_argument("--log-level", default=env.get("KUBEINFER_LOG_LEVEL", "INFO"))


def _batch_parser(sub, env: Mapping[str, str]) -> None:
    p = sub.add_parser("batch", help="score a dataset offline: Parquet, JSONL or CSV in; Parquet or JSONL out")
    p.set_defaults(command_parser=p)
    p.add_argument("--model", required=True, help="the ONNX model: a path or any URI fetch takes")
    p.add_argument("--input", required=True, help="a file, or a folder or prefix of files (fsspec URI)")
    p.add_argument("--output", required=True, help="a folder or prefix for the parts (fsspec URI)")
    p.add_argument("--input-format", choices=INPUT_FORMATS, help="default: from the file names")
    p.add_argument("--output-format", choices=OUTPUT_FORMATS, default="parquet")
    p.add_argument("--input-columns", action="append", default=[], metavar="TENSOR=COL[,COL...]",
                   help="stack scalar columns into one [-1, N] model input (repeatable)")
    p.add_argument("--id-column", help="a column that names each row in the output (default: file and row)")
    p.add_argument("--batch-size", type=int, default=0, help="rows per model run (0: the fastest of 64, 256, 1024)")
    p.add_argument("--shard", type=int, default=None, help="this shard's index (default: $JOB_COMPLETION_INDEX, or 0)")
    p.add_argument("--shards", type=int, default=1, help="how many shards share the input (every N-th unit)")
    p.add_argument("--max-failed-rows", type=int, default=0, help="bad rows allowed before the run fails")
    p.add_argument("--overwrite", action="store_true", help="redo this shard's parts instead of resuming")
    p.add_argument("--providers", type=_converter(SERVE_FLAGS_BY_NAME["providers"]), default=("cpu",))
    p.add_argument("--intra-op-threads", type=int, default=0)
    p.add_argument("--sha256", help="the model's expected sha256")
    p.add_argument("--date", type=_iso_date, default=None, metavar="YYYY-MM-DD",
                   help="what {date} in --input and --output stands for (default: today, UTC)")
    p.add_argument("--log-level", default=env.get("KUBEINFER_LOG_LEVEL", "INFO"))


def _optimize_parser(sub, env: Mapping[str, str]) -> None:
    from kubeinfer_server.optimize_methods import CALIBRATION_METHODS, METHOD_CHOICES
    from kubeinfer_server.optimize_report import METRICS

    p = sub.add_parser("optimize", help="quantize, float16 or prune a model; keep it only if measured accurate "
                                         "and fast enough (exit 0 kept, 3 rejected)")
    p.set_defaults(command_parser=p)
    p.add_argument("model_in", metavar="MODEL_IN", help="the ONNX model to optimize (a local file)")
    p.add_argument("model_out", metavar="MODEL_OUT", help="where the optimized model goes, only when it is kept")
    p.add_argument("--method", required=True, choices=METHOD_CHOICES,
                   help="auto: each method that fits the providers; the fastest that passes is kept")
    p.add_argument("--calibration", metavar="URI", help="rows for static quantization's ranges (as batch --input)")
    p.add_argument("--validation", metavar="URI", help="rows to compare the two models on (as batch --input)")
    p.add_argument("--input-format", choices=INPUT_FORMATS, help="of --calibration and --validation; default: "
                                                                 "from the file names")
    p.add_argument("--input-columns", action="append", default=[], metavar="TENSOR=COL[,COL...]",
                   help="stack scalar columns into one [-1, N] model input (repeatable)")
    p.add_argument("--label-column", metavar="COL", help="the true class of each validation row: top-1 accuracy")
    p.add_argument("--metric", choices=METRICS, help="default: top1 with --label-column, else agreement")
    p.add_argument("--max-degradation", type=float, default=0.01, metavar="X",
                   help="how much worse the metric may get, in its units (default 0.01)")
    p.add_argument("--min-speedup", type=float, default=1.0, metavar="X",
                   help="candidate over original throughput at --batch-size (default 1.0)")
    p.add_argument("--prune-sparsity", type=float, default=0.5, metavar="S", help="share of weights zeroed")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="rows per run for the throughput")
    p.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="minmax")
    p.add_argument("--calibration-samples", type=int, default=256, metavar="N", help="calibration rows used")
    p.add_argument("--measure-seconds", type=float, default=4.0, metavar="S",
                   help="time spent timing the models, all of them together")
    p.add_argument("--providers", type=_converter(SERVE_FLAGS_BY_NAME["providers"]), default=("cpu",))
    p.add_argument("--intra-op-threads", type=int, default=0, metavar="N", help="0: the CPU limit")
    p.add_argument("--report", metavar="PATH", help="write the report (JSON) here too")
    p.add_argument("--accept-unvalidated", action="store_true",
                   help="keep a candidate whose accuracy was not measured (no --validation)")
    p.add_argument("--allow-cpu-float16", action="store_true", help="run float16 on CPU providers anyway")
    p.add_argument("--in-place", action="store_true",
                   help="MODEL_OUT may be MODEL_IN: replaced only when the candidate is kept (a pod's init step)")
    p.add_argument("--exit-zero-on-reject", action="store_true",
                   help="exit 0 when the candidate is not kept (MODEL_OUT untouched; the report says why)")
    p.add_argument("--termination-log", metavar="PATH",
                   help="write the compact report here when the file exists (default: /dev/termination-log)")
    p.add_argument("--log-level", default=env.get("KUBEINFER_LOG_LEVEL", "INFO"))


def _tune_parser(sub, env: Mapping[str, str]) -> None:
    from kubeinfer_server import tune_cli

    p = sub.add_parser("tune", help="measure server configurations under a p99 bound and size a pod "
                                     "(exit 0 found, 3 none met the bound)")
    p.set_defaults(command_parser=p)
    tune_cli.add_arguments(p, env)


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The ``kubeinfer-server`` parser, with defaults from ``env`` (``KUBEINFER_*``)."""
    parser = argparse.ArgumentParser(prog="kubeinfer-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub, env)
    _fetch_parser(sub, env)
    _batch_parser(sub, env)
    _optimize_parser(sub, env)
    _tune_parser(sub, env)
    return parser


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    """The settings of a parsed ``serve`` command line; ValueError says what to fix."""
    values = vars(args) | {"model": args.model or args.env_models}
    return settings_from_values(values)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(os.environ)
    args = parser.parse_args(argv)
    command_parser = args.command_parser
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "fetch":
        return _fetch(command_parser, args)
    if args.command == "batch":
        return _batch(command_parser, args, os.environ)
    if args.command == "optimize":
        return _optimize(command_parser, args)
    if args.command == "tune":
        from kubeinfer_server import tune_cli

        return tune_cli.command(command_parser, args)
    try:
        settings = serve_settings(args)
        loop_name, run_on_loop = eventloop.runner(settings.event_loop)
    except ValueError as exc:
        command_parser.error(str(exc))
    if args.workers < 1:
        command_parser.error("--workers must be at least 1")
    if args.workers > 1:
        return _serve_workers(command_parser, settings, args.workers, run_on_loop)
    from kubeinfer_server.server import run

    try:
        log.info("Event loop: %s", loop_name)
        run_on_loop(run(settings))
    except (ModelLoadError, TlsError, OSError) as exc:
        log.error("Could not start: %s", exc)
        return 1
    return 0


def _serve_workers(parser, settings, count: int, run_on_loop) -> int:
    from kubeinfer_server.workers import Supervisor

    try:
        supervisor = Supervisor(settings, count)
    except ValueError as exc:
        parser.error(str(exc))
    return run_on_loop(supervisor.run())


def _batch(parser, args, env: Mapping[str, str]) -> int:
    from kubeinfer_server.batchrun import (
        BatchFailed,
        BatchSettings,
        BatchUsageError,
        dated,
        run,
        write_termination_message,
    )

    summary, error = None, None
    try:
        shard = args.shard if args.shard is not None else int(env.get("JOB_COMPLETION_INDEX", "0"))
        date = args.date or dt.datetime.now(dt.UTC).date()
        settings = BatchSettings(
            model=args.model, input=dated(args.input, date), output=dated(args.output, date),
            input_format=args.input_format,
            output_format=args.output_format, input_columns=_input_columns(args.input_columns),
            id_column=args.id_column, batch_size=args.batch_size, shard=shard, shards=args.shards,
            max_failed_rows=args.max_failed_rows, overwrite=args.overwrite, providers=args.providers,
            intra_op_threads=args.intra_op_threads, sha256=args.sha256)
        summary = run(settings)
        return 0
    except (BatchUsageError, ValueError) as exc:
        error = str(exc)
        write_termination_message(None, error)
        parser.error(error)
    except BatchFailed as exc:
        error = str(exc)
        log.error("Batch failed: %s", exc)
        return 1
    finally:
        write_termination_message(summary, error)
    return 1


def _optimize(parser, args) -> int:
    from kubeinfer_server.optimize import OptimizeFailed, OptimizeUsageError
    from kubeinfer_server.optimize import write_termination_message as write
    from kubeinfer_server.optimize_report import error_message, table, termination_message

    log_path = {"path": args.termination_log} if args.termination_log else {}
    try:
        result = _optimize_run(args)
    except OptimizeUsageError as exc:
        write(error_message(f"usage: {exc}"), **log_path)
        parser.error(str(exc))
    except (OptimizeFailed, OSError) as exc:
        write(error_message(str(exc)), **log_path)
        log.error("Optimize failed: %s", exc)
        return 1
    write(termination_message(result), **log_path)
    sys.stdout.write(table(result))
    return 0 if result["written"] or args.exit_zero_on_reject else 3


def _optimize_run(args) -> dict[str, Any]:
    """The report of the run the parsed ``optimize`` command line asks for (written to --report too)."""
    import json

    from kubeinfer_server.optimize import run

    result = run(optimize_settings(args))
    if args.report:
        with open(args.report, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


def optimize_settings(args: argparse.Namespace):
    """The settings of a parsed ``optimize`` command line; OptimizeUsageError says what to fix."""
    from kubeinfer_server.optimize import OptimizeSettings, OptimizeUsageError

    try:
        columns = _input_columns(args.input_columns)
    except ValueError as exc:
        raise OptimizeUsageError(str(exc)) from None
    return OptimizeSettings(
        model_in=args.model_in, model_out=args.model_out, method=args.method, calibration=args.calibration,
        validation=args.validation, input_format=args.input_format,
        input_columns=columns, label_column=args.label_column, metric=args.metric,
        max_degradation=args.max_degradation, min_speedup=args.min_speedup, prune_sparsity=args.prune_sparsity,
        batch_size=args.batch_size, calibration_method=args.calibration_method,
        calibration_samples=args.calibration_samples, providers=args.providers,
        intra_op_threads=args.intra_op_threads, measure_seconds=args.measure_seconds, report=args.report,
        accept_unvalidated=args.accept_unvalidated, allow_cpu_float16=args.allow_cpu_float16,
        in_place=args.in_place)


def _iso_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--date takes YYYY-MM-DD, got {text!r}") from None


def _input_columns(values: list[str]) -> dict[str, tuple[str, ...]]:
    """``TENSOR=COL,COL`` (repeatable) as a dict; ValueError says what is wrong."""
    mapping: dict[str, tuple[str, ...]] = {}
    for value in values:
        name, sep, columns = value.partition("=")
        stacked = tuple(c.strip() for c in columns.split(",") if c.strip())
        if not sep or not name.strip() or not stacked:
            raise ValueError(f"--input-columns takes TENSOR=COL[,COL...], got {value!r}")
        if name.strip() in mapping:
            raise ValueError(f"--input-columns names {name.strip()!r} twice")
        mapping[name.strip()] = stacked
    return mapping


def _fetch(parser, args) -> int:
    from kubeinfer_server.fetch import FetchError, fetch

    if not args.uri or not args.dest:
        parser.error("fetch needs URI and DEST (or KUBEINFER_FETCH_URI and KUBEINFER_FETCH_DEST)")
    try:
        fetch(args.uri, args.dest, args.sha256, progress_every_s=args.progress_seconds)
    except FetchError as exc:
        log.error("Fetch failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
