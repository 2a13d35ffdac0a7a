"""``kubeinfer-operator``: runs the operator, in all namespaces or in the ones given."""

from __future__ import annotations

import argparse
import logging
import socket
import sys

import kopf

from kubeinfer_operator import handlers, kube, settings
from kubeinfer_operator.opmetrics import OperatorMetrics

log = logging.getLogger(__name__)
PREFIX = "kubeinfer.io"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kubeinfer-operator",
        description="Reconciles InferenceDeployments. "
                    "Every flag also reads from the environment variable named beside it.",
    )
    for flag in settings.FLAGS:
        parser.add_argument(f"--{flag.name}", dest=flag.field, type=str if flag.repeatable else flag.parse,
                            action="append" if flag.repeatable else "store",
                            metavar=flag.name.upper().replace("-", "_"), help=f"{flag.help} [{flag.env}]")
    parser.add_argument("--liveness", metavar="URL", help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser.parse_args(argv)


def flag_values(args: argparse.Namespace) -> dict[str, object]:
    """The settings given as flags (None: not given)."""
    values = {flag.field: getattr(args, flag.field) for flag in settings.FLAGS}
    return {field: tuple(v) if isinstance(v, list) else v for field, v in values.items()}


def operator_settings() -> kopf.OperatorSettings:
    """kopf's own bookkeeping goes into annotations, never into the strict status."""
    config = kopf.OperatorSettings()
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    config.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration")
    # No handler needs a finalizer (no timers, no deletion handlers); name kopf's after us anyway.
    config.persistence.finalizer = f"{PREFIX}/finalizer"
    config.execution.max_workers = 16
    config.watching.server_timeout = 300
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = settings.load(flag_values(args))
    except ValueError as exc:
        sys.exit(f"kubeinfer-operator: {exc}")
    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        # kopf logs every event handler's success; our own log says what changed.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    registry = kopf.OperatorRegistry()
    metrics = OperatorMetrics()
    try:
        metrics.serve(config.metrics_port)
    except OSError as exc:
        sys.exit(f"kubeinfer-operator: cannot serve metrics on port {config.metrics_port}: {exc}")
    api = kube.connect()
    api.on_write = metrics.api_write
    handlers.register(registry, handlers.Reconciler(api, config, metrics, handlers.SERVING),
                      handlers.Reconciler(api, config, metrics, handlers.BATCH))
    log.info("Started kubeinfer-operator in %s; metrics on port %s", ", ".join(config.namespaces) or "all namespaces",
             config.metrics_port or "none")
    kopf.run(
        registry=registry,
        settings=operator_settings(),
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=args.liveness,
        # Named here: kopf's default (user@host) looks the uid up in /etc/passwd, and the
        # image's numeric non-root user 65532 has no entry there.
        # kopf's Identity is a NewType of str it does not export.
        identity=f"kubeinfer-operator@{socket.gethostname()}",  # type: ignore[arg-type]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
