"""``kubeinfer-operator``: runs the operator, in all namespaces or in the ones given."""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from kubeinfer_operator import handlers, kube, settings

log = logging.getLogger(__name__)
PREFIX = "kubeinfer.io"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kubeinfer-operator",
        description="Reconciles InferenceDeployments. "
                    "Every flag also reads from the environment variable named beside it.",
    )
    parser.add_argument("--namespace", action="append", dest="namespaces",
                        help="watch this namespace (repeatable); default: all [KUBEINFER_NAMESPACES, comma-separated]")
    parser.add_argument("--server-image", help="default kubeinfer-server image [KUBEINFER_SERVER_IMAGE]")
    parser.add_argument("--cluster-domain", help="cluster DNS domain for certificate SANs [KUBEINFER_CLUSTER_DOMAIN]")
    parser.add_argument("--certificate-duration-seconds", type=int,
                        help="default lifetime of server and client certificates "
                             "[KUBEINFER_CERTIFICATE_DURATION_SECONDS]")
    parser.add_argument("--ca-duration-seconds", type=int, help="lifetime of each CA [KUBEINFER_CA_DURATION_SECONDS]")
    parser.add_argument("--resync-seconds", type=float,
                        help="interval of the drift-repair and certificate-renewal resync [KUBEINFER_RESYNC_SECONDS]")
    parser.add_argument("--liveness", metavar="URL", help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser.parse_args(argv)


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
        config = settings.load({
            "server_image": args.server_image,
            "cluster_domain": args.cluster_domain,
            "certificate_duration_seconds": args.certificate_duration_seconds,
            "ca_duration_seconds": args.ca_duration_seconds,
            "resync_seconds": args.resync_seconds,
            "namespaces": tuple(args.namespaces) if args.namespaces else None,
        })
    except ValueError as exc:
        sys.exit(f"kubeinfer-operator: {exc}")
    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        # kopf logs every event handler's success; our own log says what changed.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, handlers.Reconciler(kube.connect(), config))
    log.info("Started kubeinfer-operator in %s", ", ".join(config.namespaces) or "all namespaces")
    kopf.run(
        registry=registry,
        settings=operator_settings(),
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
