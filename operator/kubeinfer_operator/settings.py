"""Operator-wide settings: typed, frozen, read once from flags and the environment.

``FLAGS`` is the one table of them: each setting's flag and its ``KUBEINFER_*``
variable (the chart sets the variables); a flag wins over its variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

DAY = 86400


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the operator needs besides each InferenceDeployment's spec."""

    server_image: str = "kubeinfer/server:0.1.0"
    cluster_domain: str = "cluster.local"
    certificate_duration_seconds: int = 90 * DAY
    ca_duration_seconds: int = 10 * 365 * DAY
    resync_seconds: float = 60.0
    metrics_port: int = 8081  # the operator's own /metrics; 0: off
    namespaces: tuple[str, ...] = ()
    # spec.rightSizing reads the server containers' usage (cAdvisor's series) from this Prometheus; "": none.
    prometheus_url: str = ""
    usage_query_seconds: float = 300.0  # the least time between two reads of one InferenceDeployment's usage
    usage_step_seconds: float = 30.0  # one usage sample per container per step
    usage_history_seconds: float = DAY  # how far back the usage is read

    def __post_init__(self) -> None:
        if self.certificate_duration_seconds < 3600:
            raise ValueError("certificate duration must be at least 3600 seconds")
        if self.ca_duration_seconds < 3 * self.certificate_duration_seconds:
            raise ValueError("CA duration must be at least three certificate durations")
        if self.resync_seconds <= 0:
            raise ValueError("resync interval must be positive")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics port must be from 0 (off) to 65535")
        if self.prometheus_url and not self.prometheus_url.startswith(("http://", "https://")):
            raise ValueError("the Prometheus URL must start with http:// or https://")
        if min(self.usage_query_seconds, self.usage_step_seconds) <= 0 \
                or self.usage_history_seconds < self.usage_step_seconds:
            raise ValueError("usage query and step seconds must be positive, the history at least one step")


ENV_PREFIX = "KUBEINFER_"


def _names(value: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in value.split(",") if n.strip())


@dataclasses.dataclass(frozen=True)
class Flag:
    """One setting: the flag ``--NAME`` and the environment variable ``KUBEINFER_<FIELD>``
    (the scheme the server's flags follow too)."""

    field: str  # the Settings field it sets
    name: str  # the flag, without the dashes
    parse: Callable[[str], object]
    help: str
    repeatable: bool = False  # the flag may be given many times; the variable holds a comma-separated list

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()


FLAGS = (
    Flag("namespaces", "namespace", _names, "watch this namespace (repeatable); default: all", repeatable=True),
    Flag("server_image", "server-image", str, "default kubeinfer-server image"),
    Flag("cluster_domain", "cluster-domain", str, "cluster DNS domain for certificate SANs"),
    Flag("certificate_duration_seconds", "certificate-duration-seconds", int,
         "default lifetime of server and client certificates"),
    Flag("ca_duration_seconds", "ca-duration-seconds", int, "lifetime of each CA"),
    Flag("resync_seconds", "resync-seconds", float, "interval of the drift-repair and certificate-renewal resync"),
    Flag("metrics_port", "metrics-port", int, "port of the operator's own Prometheus /metrics; 0: off"),
    Flag("prometheus_url", "prometheus-url", str,
         "Prometheus with the kubelets' cAdvisor series, for spec.rightSizing; empty: no right-sizing data"),
    Flag("usage_query_seconds", "usage-query-seconds", float,
         "least seconds between two usage reads of one InferenceDeployment"),
    Flag("usage_step_seconds", "usage-step-seconds", float, "seconds between two usage samples of a container"),
    Flag("usage_history_seconds", "usage-history-seconds", float, "how many seconds of usage are read"),
)


def from_env(env: Mapping[str, str]) -> dict[str, object]:
    """The settings given in ``env``, typed, as keyword arguments for Settings."""
    return {flag.field: flag.parse(env[flag.env]) for flag in FLAGS if env.get(flag.env)}


def load(overrides: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment, with explicit overrides (flags) winning."""
    values = from_env(os.environ if env is None else env)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Settings(**values)  # type: ignore[arg-type]
