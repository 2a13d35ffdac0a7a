"""Operator-wide settings: typed, frozen, read once from flags and the environment."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

DAY = 86400


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the operator needs besides each InferenceDeployment's spec."""

    server_image: str = "kubeinfer/server:0.1.0"
    cluster_domain: str = "cluster.local"
    certificate_duration_seconds: int = 90 * DAY
    ca_duration_seconds: int = 10 * 365 * DAY
    resync_seconds: float = 60.0
    namespaces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.certificate_duration_seconds < 3600:
            raise ValueError("certificate duration must be at least 3600 seconds")
        if self.ca_duration_seconds < 3 * self.certificate_duration_seconds:
            raise ValueError("CA duration must be at least three certificate durations")
        if self.resync_seconds <= 0:
            raise ValueError("resync interval must be positive")


ENV = {
    "server_image": "KUBEINFER_SERVER_IMAGE",
    "cluster_domain": "KUBEINFER_CLUSTER_DOMAIN",
    "certificate_duration_seconds": "KUBEINFER_CERTIFICATE_DURATION_SECONDS",
    "ca_duration_seconds": "KUBEINFER_CA_DURATION_SECONDS",
    "resync_seconds": "KUBEINFER_RESYNC_SECONDS",
    "namespaces": "KUBEINFER_NAMESPACES",
}


def from_env(env: Mapping[str, str]) -> dict[str, object]:
    """The settings given in ``env``, typed, as keyword arguments for Settings."""
    types = {f.name: f.type for f in dataclasses.fields(Settings)}
    found: dict[str, object] = {}
    for field, var in ENV.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        kind = types[field]
        if kind == "int":
            found[field] = int(raw)
        elif kind == "float":
            found[field] = float(raw)
        elif field == "namespaces":
            found[field] = tuple(n.strip() for n in raw.split(",") if n.strip())
        else:
            found[field] = raw
    return found


def load(overrides: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment, with explicit overrides (flags) winning."""
    values = from_env(os.environ if env is None else env)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Settings(**values)  # type: ignore[arg-type]
