"""``kubeinfer-server``: ``serve`` models over OIP v2 gRPC, or ``fetch`` a model file.

Every ``serve`` flag also reads ``KUBEINFER_<FLAG>`` from the environment (the
flag wins), so the operator can configure pods through env vars.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kubeinfer_server import eventloop
from kubeinfer_server.batcher import BatchingConfig
from kubeinfer_server.config import ServeSettings, parse_int_list, parse_model, parse_providers
from kubeinfer_server.errors import ModelLoadError
from kubeinfer_server.model import ModelOptions
from kubeinfer_server.tls import TlsError, TlsFiles

log = logging.getLogger("kubeinfer_server")


def _env(name: str, default=None):
    return os.environ.get(f"KUBEINFER_{name}", default)


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve ONNX models over the Open Inference Protocol (gRPC)")
    env_models = [m for m in (_env("MODELS") or "").split(",") if m]
    p.add_argument("--model", action="append", default=None, metavar="NAME=PATH",
                   help="a model to serve (repeatable); env KUBEINFER_MODELS=a=/p/a.onnx,b=/p/b.onnx")
    p.set_defaults(env_models=env_models)
    p.add_argument("--host", default=_env("HOST", "0.0.0.0"))
    p.add_argument("--grpc-port", type=int, default=int(_env("GRPC_PORT", 8001)))
    p.add_argument("--metrics-port", type=int, default=int(_env("METRICS_PORT", 8002)))
    p.add_argument("--max-batch-size", type=int, default=int(_env("MAX_BATCH_SIZE", 32)))
    p.add_argument("--max-queue-delay-us", type=int, default=int(_env("MAX_QUEUE_DELAY_US", 2000)))
    p.add_argument("--preferred-batch-sizes", default=_env("PREFERRED_BATCH_SIZES", ""))
    p.add_argument("--max-queue-size", type=int, default=int(_env("MAX_QUEUE_SIZE", 1024)))
    p.add_argument("--instances", type=int, default=int(_env("INSTANCES", 1)))
    p.add_argument("--intra-op-threads", type=int, default=int(_env("INTRA_OP_THREADS", 0)),
                   help="ONNX Runtime intra-op threads per session (0: the container's CPU limit)")
    p.add_argument("--providers", default=_env("PROVIDERS", "cpu"), help="e.g. tensorrt,cuda,cpu")
    p.add_argument("--tls-cert", default=_env("TLS_CERT"))
    p.add_argument("--tls-key", default=_env("TLS_KEY"))
    p.add_argument("--tls-client-ca", default=_env("TLS_CLIENT_CA"))
    p.add_argument("--allowed-clients", default=_env("ALLOWED_CLIENTS", ""))
    p.add_argument("--access-log-sample-rate", type=float, default=float(_env("ACCESS_LOG_SAMPLE_RATE", 1.0)))
    p.add_argument("--grace-seconds", type=float, default=float(_env("GRACE_SECONDS", 30)))
    p.add_argument("--shutdown-delay-seconds", type=float, default=float(_env("SHUTDOWN_DELAY_SECONDS", 0)),
                   help="after SIGTERM, keep answering new calls this long (readiness already false) "
                        "while load balancers drop this replica; then drain")
    p.add_argument("--max-connection-age-seconds", type=float,
                   default=float(_env("MAX_CONNECTION_AGE_SECONDS", 0)))
    p.add_argument("--max-message-bytes", type=int, default=int(_env("MAX_MESSAGE_BYTES", 64 * 1024 * 1024)))
    p.add_argument("--workers", type=int, default=int(_env("WORKERS", 1)),
                   help="server processes sharing the gRPC port (needs a fixed --grpc-port)")
    p.add_argument("--event-loop", default=_env("EVENT_LOOP", "auto"), choices=eventloop.CHOICES,
                   help="auto: uvloop when installed, else asyncio's own loop")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))


def _fetch_parser(sub) -> None:
    p = sub.add_parser("fetch", help="download a model file and verify its checksum")
    p.add_argument("uri", nargs="?", default=_env("FETCH_URI"))
    p.add_argument("dest", nargs="?", default=_env("FETCH_DEST"))
    p.add_argument("--sha256", default=_env("FETCH_SHA256"))
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))


def settings_from_args(args) -> ServeSettings:
    tls = None
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca or None)
    return ServeSettings(
        models=tuple(parse_model(m) for m in (args.model or args.env_models)),
        host=args.host,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        batching=BatchingConfig(
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us,
            preferred_batch_sizes=parse_int_list(args.preferred_batch_sizes),
            max_queue_size=args.max_queue_size,
            instances=args.instances,
        ),
        model_options=ModelOptions(parse_providers(args.providers), args.intra_op_threads, args.instances),
        tls=tls,
        allowed_clients=frozenset(c.strip() for c in args.allowed_clients.split(",") if c.strip()),
        access_log_sample_rate=args.access_log_sample_rate,
        grace_seconds=args.grace_seconds,
        shutdown_delay_seconds=args.shutdown_delay_seconds,
        max_connection_age_seconds=args.max_connection_age_seconds,
        max_message_bytes=args.max_message_bytes,
        event_loop=args.event_loop,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubeinfer-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _fetch_parser(sub)
    args = parser.parse_args(argv)
    command_parser = sub.choices[args.command]
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "fetch":
        return _fetch(command_parser, args)
    try:
        settings = settings_from_args(args)
        loop_name, run_on_loop = eventloop.runner(settings.event_loop)
    except ValueError as exc:
        command_parser.error(str(exc))
    if args.workers < 1:
        command_parser.error("--workers must be at least 1")
    if args.workers > 1:
        return _serve_workers(command_parser, settings, args.workers, run_on_loop)
    from kubeinfer_server.app import run

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


def _fetch(parser, args) -> int:
    from kubeinfer_server.fetch import FetchError, fetch

    if not args.uri or not args.dest:
        parser.error("fetch needs URI and DEST (or KUBEINFER_FETCH_URI and KUBEINFER_FETCH_DEST)")
    try:
        fetch(args.uri, args.dest, args.sha256)
    except FetchError as exc:
        log.error("Fetch failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
