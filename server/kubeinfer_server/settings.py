"""Typed, immutable settings for ``kubeinfer-server serve``, and the table of its flags.

``SERVE_FLAGS`` is the contract between the operator and the server: every
flag of ``serve``, the ``KUBEINFER_*`` environment variable that sets it when
the flag is not given (the operator configures pods through these), and its
default, which is read from the settings dataclasses below, the one place
each default is written. ``settings_from_values`` turns the parsed values into
a ``ServeSettings``, validated at the edge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubeinfer_server import eventloop
from kubeinfer_server.batcher import BatchingConfig
from kubeinfer_server.model import PROVIDER_NAMES, ModelOptions
from kubeinfer_server.tls import TlsFiles

ENV_PREFIX = "KUBEINFER_"


@dataclass(frozen=True, slots=True)
class ModelSource:
    name: str
    path: str


@dataclass(frozen=True, slots=True)
class ServeSettings:
    models: tuple[ModelSource, ...]
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    batching: BatchingConfig = BatchingConfig()
    model_options: ModelOptions = ModelOptions()
    tls: TlsFiles | None = None
    allowed_clients: frozenset[str] = frozenset()
    access_log_sample_rate: float = 1.0
    access_log_file: str | None = None
    access_log_max_bytes: int = 100 * 1024 * 1024
    access_log_backups: int = 5
    access_log_stderr: bool = True
    grace_seconds: float = 30.0
    shutdown_delay_seconds: float = 0.0
    max_connection_age_seconds: float = 0.0
    max_message_bytes: int = 64 * 1024 * 1024
    cpu_limit_poll_seconds: float = 5.0  # 0: the sessions keep the threads they were loaded with
    event_loop: str = "auto"  # eventloop.CHOICES
    model_version: str = "1"  # named in every answer; the operator sets its rollout revision

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("give at least one --model NAME=PATH")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if self.allowed_clients and (self.tls is None or self.tls.client_ca is None):
            raise ValueError("--allowed-clients needs --tls-client-ca (client identities come from certificates)")
        if min(self.grace_seconds, self.max_connection_age_seconds, self.shutdown_delay_seconds) < 0:
            raise ValueError("--grace-seconds, --shutdown-delay-seconds and --max-connection-age-seconds must be >= 0")
        if self.max_message_bytes < 1024:
            raise ValueError("--max-message-bytes must be at least 1024")
        if self.cpu_limit_poll_seconds < 0:
            raise ValueError("--cpu-limit-poll-seconds must be >= 0 (0 turns the watch off)")
        if not self.access_log_stderr and not self.access_log_file:
            raise ValueError("--access-log-stderr false needs --access-log-file "
                             "(--access-log-sample-rate 0 turns the access log off)")
        if not self.model_version.strip() or "/" in self.model_version:
            raise ValueError(f"--model-version must be a non-empty word without '/', got {self.model_version!r}")
        if self.access_log_max_bytes < 1024 or self.access_log_backups < 0:
            raise ValueError("--access-log-max-bytes must be at least 1024 and --access-log-backups at least 0")


@dataclass(frozen=True, slots=True)
class Flag:
    """One flag of ``serve``: ``--NAME``, or the environment variable ``KUBEINFER_<NAME>``."""

    name: str  # without the dashes, e.g. "max-batch-size"
    parse: Callable[[str], Any]
    default: Any
    help: str = ""
    variable: str = ""  # the environment variable, when it is not KUBEINFER_<NAME>
    choices: tuple[str, ...] | None = None

    @property
    def env(self) -> str:
        return self.variable or ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


def _default(settings: type, field: str) -> Any:
    return next(f.default for f in dataclasses.fields(settings) if f.name == field)


def parse_model(value: str) -> ModelSource:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--model takes NAME=PATH, got {value!r}")
    return ModelSource(name.strip(), path.strip())


def parse_providers(value: str) -> tuple[str, ...]:
    providers = tuple(p.strip().lower() for p in value.split(",") if p.strip())
    unknown = [p for p in providers if p not in PROVIDER_NAMES]
    if unknown or not providers:
        raise ValueError(f"--providers takes a list of {', '.join(PROVIDER_NAMES)}, got {value!r}")
    return providers


def parse_list(value: str) -> tuple[str, ...]:
    """A comma-separated list; blanks dropped."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"takes true or false, got {value!r}")


def parse_int_list(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in parse_list(value))
    except ValueError:
        raise ValueError(f"takes comma-separated whole numbers, got {value!r}") from None


_BATCHING, _OPTIONS = BatchingConfig(), ModelOptions()

SERVE_FLAGS: tuple[Flag, ...] = (
    Flag("model", parse_list, (), "NAME=PATH of a model to serve (repeatable); env: a comma-separated list",
         variable="KUBEINFER_MODELS"),
    Flag("host", str, _default(ServeSettings, "host")),
    Flag("http-port", int, _default(ServeSettings, "http_port"), "OIP v2 REST (JSON and binary tensors)"),
    Flag("grpc-port", int, _default(ServeSettings, "grpc_port")),
    Flag("metrics-port", int, _default(ServeSettings, "metrics_port")),
    Flag("max-batch-size", int, _BATCHING.max_batch_size, "rows per batch; 0: no batching"),
    Flag("max-queue-delay-us", int, _BATCHING.max_queue_delay_us, "how long a request waits for company"),
    Flag("preferred-batch-sizes", parse_int_list, _BATCHING.preferred_batch_sizes, "e.g. 8,16,32"),
    Flag("max-queue-size", int, _BATCHING.max_queue_size, "requests waiting per model before QueueFull"),
    Flag("instances", int, _BATCHING.instances, "ONNX Runtime sessions per model, each on a thread of its own"),
    Flag("intra-op-threads", int, _OPTIONS.intra_op_threads,
         "ONNX Runtime intra-op threads per session (0: the container's CPU limit)"),
    Flag("cpu-limit-poll-seconds", float, _default(ServeSettings, "cpu_limit_poll_seconds"),
         "with --intra-op-threads 0: re-read the CPU limit this often, new sessions when it changed (0: never)"),
    Flag("providers", parse_providers, _OPTIONS.providers, "e.g. tensorrt,cuda,cpu"),
    Flag("tls-cert", str, None),
    Flag("tls-key", str, None),
    Flag("tls-client-ca", str, None, "set: client certificates are required and verified against it"),
    Flag("allowed-clients", parse_list, (), "client certificate CNs allowed to call (empty: any the CA signed)"),
    Flag("access-log-sample-rate", float, _default(ServeSettings, "access_log_sample_rate"),
         "share of calls logged (0 turns the access log off; --log-level does not)"),
    Flag("access-log-file", str, None, "also write the access log's JSON lines to this file, rotated by size"),
    Flag("access-log-max-bytes", int, _default(ServeSettings, "access_log_max_bytes"),
         "rotate the access log file when it would pass this size"),
    Flag("access-log-backups", int, _default(ServeSettings, "access_log_backups"),
         "rotated access log files kept (FILE.1 the newest)"),
    Flag("access-log-stderr", parse_bool, _default(ServeSettings, "access_log_stderr"),
         "write the access log to stderr too (false: the file only)"),
    Flag("grace-seconds", float, _default(ServeSettings, "grace_seconds"),
         "after SIGTERM, how long accepted requests have to finish"),
    Flag("shutdown-delay-seconds", float, _default(ServeSettings, "shutdown_delay_seconds"),
         "after SIGTERM, keep answering new calls this long (readiness already false) "
         "while load balancers drop this replica; then drain"),
    Flag("max-connection-age-seconds", float, _default(ServeSettings, "max_connection_age_seconds")),
    Flag("max-message-bytes", int, _default(ServeSettings, "max_message_bytes")),
    Flag("workers", int, 1, "server processes sharing the gRPC port (needs a fixed --grpc-port)"),
    Flag("event-loop", str, _default(ServeSettings, "event_loop"),
         "auto: uvloop when installed, else asyncio's own loop", choices=eventloop.CHOICES),
    Flag("model-version", str, _default(ServeSettings, "model_version"),
         "the version every answer names (model_version) and kubeinfer_model_info{revision}"),
    Flag("log-level", str, "INFO"),
)
SERVE_FLAGS_BY_ENV = {flag.env: flag for flag in SERVE_FLAGS}


def settings_from_values(values: Mapping[str, Any]) -> ServeSettings:
    """``ServeSettings`` from parsed flag values, by ``Flag.dest``; ValueError says what to fix."""
    tls = None
    if values["tls_cert"] or values["tls_key"] or values["tls_client_ca"]:
        if not (values["tls_cert"] and values["tls_key"]):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        tls = TlsFiles(values["tls_cert"], values["tls_key"], values["tls_client_ca"] or None)
    return ServeSettings(
        models=tuple(parse_model(m) for m in values["model"]),
        host=values["host"],
        http_port=values["http_port"],
        grpc_port=values["grpc_port"],
        metrics_port=values["metrics_port"],
        batching=BatchingConfig(
            max_batch_size=values["max_batch_size"],
            max_queue_delay_us=values["max_queue_delay_us"],
            preferred_batch_sizes=values["preferred_batch_sizes"],
            max_queue_size=values["max_queue_size"],
            instances=values["instances"],
        ),
        model_options=ModelOptions(values["providers"], values["intra_op_threads"], values["instances"]),
        tls=tls,
        allowed_clients=frozenset(values["allowed_clients"]),
        access_log_sample_rate=values["access_log_sample_rate"],
        access_log_file=values["access_log_file"] or None,
        access_log_max_bytes=values["access_log_max_bytes"],
        access_log_backups=values["access_log_backups"],
        access_log_stderr=values["access_log_stderr"],
        grace_seconds=values["grace_seconds"],
        shutdown_delay_seconds=values["shutdown_delay_seconds"],
        max_connection_age_seconds=values["max_connection_age_seconds"],
        max_message_bytes=values["max_message_bytes"],
        cpu_limit_poll_seconds=values["cpu_limit_poll_seconds"],
        event_loop=values["event_loop"],
        model_version=values["model_version"],
    )
