"""The defaults of the InferenceDeployment and InferenceBatchJob specs and the bounds of their integers,
each written once (pure).

``spec.parse`` applies them (so a spec admitted under an older CRD gets them
too). ``DEFAULTS`` lists every default by its path under ``spec`` as the CRD
names it (``"batching.maxBatchSize"``): tests hold the CRD's ``default:``s, and
the server's own defaults, equal to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

DEFAULT_EXECUTION_PROVIDERS: tuple[str, ...] = ("CPU",)
DEFAULT_RESOURCES: Mapping[str, Mapping[str, str]] = {"requests": {"cpu": "1", "memory": "1Gi"}}
DEFAULT_GPU_RESOURCE_NAME = "nvidia.com/gpu"
DEFAULT_ENGINE = "HPA"
DEFAULT_TLS_MODE = "Server"
DEFAULT_ACCESS_LOG_SAMPLE_RATE = 1.0
# spec.optimization: the gates of kubeinfer-server optimize (its own defaults: a contract test holds them equal).
DEFAULT_MAX_DEGRADATION = 0.01
DEFAULT_MIN_SPEEDUP = 1.0
DEFAULT_ON_REJECT = "ServeOriginal"
# spec.rollout: a rolling update unless Canary is asked for; Canary's steps and the judge's bounds.
DEFAULT_ROLLOUT_STRATEGY = "Replace"
DEFAULT_ROLLOUT_STEPS: tuple[tuple[int, int], ...] = ((10, 120), (50, 300))  # (weight %, pauseSeconds)
DEFAULT_MAX_ERROR_RATE = 0.01
DEFAULT_MAX_LATENCY_RATIO = 1.5
# spec.rightSizing: off unless asked for; the recommender's percentiles, clamps (quantities, as the CRD writes
# them) and margin, as in recommender.Policy.
DEFAULT_RIGHT_SIZING_MODE = "Off"
DEFAULT_CPU_PERCENTILE = 0.9
DEFAULT_CPU_MIN, DEFAULT_CPU_MAX = "250m", "8"
DEFAULT_MEMORY_PERCENTILE = 0.95
DEFAULT_MEMORY_MIN, DEFAULT_MEMORY_MAX = "256Mi", "16Gi"
DEFAULT_RIGHT_SIZING_MARGIN = 0.15
# Not in the CRD: spec.replicas must stay unset there, or it would clash with spec.autoscaling.
DEFAULT_REPLICAS = 1


@dataclasses.dataclass(frozen=True)
class IntegerField:
    """An integer of the spec: its path under ``spec`` (as the CRD names it), its default, its bounds."""

    path: str
    default: int | None
    low: int
    high: int

    @property
    def key(self) -> str:
        """The field's name within its object."""
        return self.path.rpartition(".")[2]


INTEGER_FIELDS: Mapping[str, IntegerField] = MappingProxyType({f.path: f for f in (
    IntegerField("replicas", None, 0, 1000),
    IntegerField("runtime.intraOpThreads", None, 1, 256),
    IntegerField("runtime.instances", 1, 1, 64),
    IntegerField("runtime.drainGraceSeconds", 30, 0, 3600),
    IntegerField("runtime.maxConnectionAgeSeconds", 0, 0, 86400),
    IntegerField("runtime.workers", 1, 1, 64),
    IntegerField("runtime.maxMessageBytes", 64 * 1024 * 1024, 1024, 2**31 - 1),
    IntegerField("batching.maxBatchSize", 32, 0, 4096),
    IntegerField("batching.maxQueueDelayMicroseconds", 2000, 0, 10_000_000),
    IntegerField("batching.maxQueueSize", 1024, 1, 1_000_000),
    IntegerField("gpu.count", None, 1, 16),
    IntegerField("autoscaling.minReplicas", 1, 1, 1000),
    IntegerField("autoscaling.maxReplicas", None, 1, 1000),
    IntegerField("autoscaling.targetQueueDepth", 8, 1, 100_000),
    IntegerField("autoscaling.scaleUpStabilizationSeconds", 0, 0, 3600),
    IntegerField("autoscaling.scaleDownStabilizationSeconds", 300, 0, 3600),
    # No default here: the operator's settings give it (Settings.certificate_duration_seconds).
    IntegerField("tls.certificateDurationSeconds", None, 3600, 315_360_000),
    IntegerField("optimization.calibration.samples", 256, 1, 100_000),
    IntegerField("rollout.steps.weight", None, 1, 99),
    IntegerField("rollout.steps.pauseSeconds", 60, 0, 86_400),
    IntegerField("rollout.analysis.intervalSeconds", 30, 5, 3600),
    IntegerField("rollout.analysis.minRequests", 200, 0, 1_000_000_000),
    IntegerField("rollout.analysis.failureLimit", 2, 1, 100),
    IntegerField("rightSizing.minSamples", 100, 1, 1_000_000),
)})

# The InferenceBatchJob's integers, by their path under its spec.
BATCH_INTEGER_FIELDS: Mapping[str, IntegerField] = MappingProxyType({f.path: f for f in (
    IntegerField("parallelism", 1, 1, 1000),
    IntegerField("batchSize", 0, 0, 1_000_000),
    IntegerField("maxFailedRows", 0, 0, 1_000_000_000),
    IntegerField("backoffLimitPerIndex", 2, 0, 100),
)})
BATCH_DEFAULTS: Mapping[str, object] = MappingProxyType({
    "runtime.executionProviders": DEFAULT_EXECUTION_PROVIDERS,
    "resources": DEFAULT_RESOURCES,
    "gpu.resourceName": DEFAULT_GPU_RESOURCE_NAME,
    "output.format": "Parquet",
    "suspend": False,
    **{path: f.default for path, f in BATCH_INTEGER_FIELDS.items()},
})

DEFAULTS: Mapping[str, object] = MappingProxyType({
    "replicas": DEFAULT_REPLICAS,
    "runtime.executionProviders": DEFAULT_EXECUTION_PROVIDERS,
    "resources": DEFAULT_RESOURCES,
    "gpu.resourceName": DEFAULT_GPU_RESOURCE_NAME,
    "autoscaling.engine": DEFAULT_ENGINE,
    "tls.mode": DEFAULT_TLS_MODE,
    "runtime.accessLogSampleRate": DEFAULT_ACCESS_LOG_SAMPLE_RATE,
    "optimization.maxDegradation": DEFAULT_MAX_DEGRADATION,
    "optimization.minSpeedup": DEFAULT_MIN_SPEEDUP,
    "optimization.onReject": DEFAULT_ON_REJECT,
    "rollout.strategy": DEFAULT_ROLLOUT_STRATEGY,
    "rollout.analysis.maxErrorRate": DEFAULT_MAX_ERROR_RATE,
    "rollout.analysis.maxLatencyRatio": DEFAULT_MAX_LATENCY_RATIO,
    "rightSizing.mode": DEFAULT_RIGHT_SIZING_MODE,
    "rightSizing.cpu.percentile": DEFAULT_CPU_PERCENTILE,
    "rightSizing.cpu.min": DEFAULT_CPU_MIN,
    "rightSizing.cpu.max": DEFAULT_CPU_MAX,
    "rightSizing.memory.percentile": DEFAULT_MEMORY_PERCENTILE,
    "rightSizing.memory.min": DEFAULT_MEMORY_MIN,
    "rightSizing.memory.max": DEFAULT_MEMORY_MAX,
    "rightSizing.margin": DEFAULT_RIGHT_SIZING_MARGIN,
    **{path: f.default for path, f in INTEGER_FIELDS.items() if f.default is not None},
})
