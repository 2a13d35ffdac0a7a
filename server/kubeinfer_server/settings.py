"""Typed, immutable settings for ``kubeinfer-server serve``, validated at the edge."""

from __future__ import annotations

from dataclasses import dataclass

from kubeinfer_server.batcher import BatchingConfig
from kubeinfer_server.model import PROVIDER_NAMES, ModelOptions
from kubeinfer_server.tls import TlsFiles


@dataclass(frozen=True, slots=True)
class ModelSource:
    name: str
    path: str


@dataclass(frozen=True, slots=True)
class ServeSettings:
    models: tuple[ModelSource, ...]
    host: str = "0.0.0.0"
    grpc_port: int = 8001
    metrics_port: int = 8002
    batching: BatchingConfig = BatchingConfig()
    model_options: ModelOptions = ModelOptions()
    tls: TlsFiles | None = None
    allowed_clients: frozenset[str] = frozenset()
    access_log_sample_rate: float = 1.0
    grace_seconds: float = 30.0
    shutdown_delay_seconds: float = 0.0
    max_connection_age_seconds: float = 0.0
    max_message_bytes: int = 64 * 1024 * 1024
    event_loop: str = "auto"  # eventloop.CHOICES

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


def parse_int_list(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in value.split(",") if v.strip())
