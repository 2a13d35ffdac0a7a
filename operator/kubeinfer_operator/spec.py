"""The InferenceDeployment spec as typed, frozen values, validated at the edge.

``parse`` turns the API object's ``spec`` (a plain mapping, schema defaults
already applied by the API server) into an ``InferenceSpec``. It re-applies the
schema's defaults and re-checks its cross-field rules, so a spec admitted under
an older CRD still fails here, loudly, as ``SpecError``. The defaults and
integer bounds it applies are in ``kubeinfer_operator.defaults``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from kubeinfer_operator.canary import Analysis
from kubeinfer_operator.defaults import (
    DEFAULT_ACCESS_LOG_SAMPLE_RATE,
    DEFAULT_CPU_MAX,
    DEFAULT_CPU_MIN,
    DEFAULT_CPU_PERCENTILE,
    DEFAULT_ENGINE,
    DEFAULT_EXECUTION_PROVIDERS,
    DEFAULT_GPU_RESOURCE_NAME,
    DEFAULT_MAX_DEGRADATION,
    DEFAULT_MAX_ERROR_RATE,
    DEFAULT_MAX_LATENCY_RATIO,
    DEFAULT_MEMORY_MAX,
    DEFAULT_MEMORY_MIN,
    DEFAULT_MEMORY_PERCENTILE,
    DEFAULT_MIN_SPEEDUP,
    DEFAULT_ON_REJECT,
    DEFAULT_REPLICAS,
    DEFAULT_RESOURCES,
    DEFAULT_RIGHT_SIZING_MARGIN,
    DEFAULT_RIGHT_SIZING_MODE,
    DEFAULT_ROLLOUT_STEPS,
    DEFAULT_ROLLOUT_STRATEGY,
    DEFAULT_TLS_MODE,
    INTEGER_FIELDS,
    IntegerField,
)
from kubeinfer_operator.drift import quantity
from kubeinfer_operator.naming import SELECTOR_LABEL_KEYS
from kubeinfer_operator.recommender import Policy
from kubeinfer_operator.settings import Settings

PROVIDERS = ("TensorRT", "CUDA", "CPU")
TLS_MODES = ("Mutual", "Server", "Disabled")
ENGINES = ("HPA",)
RESOURCE_KEYS = ("cpu", "memory", "ephemeral-storage")
PVC_SCHEME = "pvc://"
OPTIMIZATION_METHODS = ("Dynamic", "Static", "Float16", "Prune", "Auto")
VALIDATION_METRICS = ("Top1", "Agreement", "Mse", "Cosine")
ON_REJECT = ("ServeOriginal", "Fail")
GPU_PROVIDERS = ("TensorRT", "CUDA")
MAX_DEGRADATION_LIMIT, MIN_SPEEDUP_LIMIT = 1e6, 1000.0  # the CRD's maximums
ROLLOUT_STRATEGIES = ("Replace", "Canary")
MAX_LATENCY_RATIO_LIMIT = 100.0
RIGHT_SIZING_MODES = ("Off", "Recommend", "InPlace")
MIN_PERCENTILE = 0.5  # the CRD's minimum: a size below the median usage would throttle most of the time


class SpecError(ValueError):
    """The spec cannot be served as written; the message says what must hold."""


def parse_pvc_uri(uri: str) -> tuple[str, str] | None:
    """(claim, path) of a ``pvc://CLAIM/path`` URI; None for any other scheme."""
    if not uri.startswith(PVC_SCHEME):
        return None
    claim, slash, path = uri[len(PVC_SCHEME):].partition("/")
    if not claim or not slash:
        raise SpecError("a pvc:// model.uri must look like pvc://CLAIM/path/to/model.onnx")
    return claim, path


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    uri: str
    sha256: str | None
    pvc: tuple[str, str] | None  # (claim, path) of a pvc:// uri, parsed once
    credentials_secret: str | None = None  # model.credentials.secretRef.name

    @property
    def pvc_claim(self) -> str | None:
        """The claim of a ``pvc://CLAIM/path`` URI, else None."""
        return self.pvc[0] if self.pvc else None

    @property
    def pvc_path(self) -> str | None:
        """The path inside the claim of a ``pvc://CLAIM/path`` URI, else None."""
        return self.pvc[1] if self.pvc else None


@dataclasses.dataclass(frozen=True)
class Runtime:
    image: str
    image_pull_policy: str | None
    execution_providers: tuple[str, ...]
    intra_op_threads: int | None
    instances: int
    drain_grace_seconds: int
    max_connection_age_seconds: int
    workers: int
    max_message_bytes: int
    access_log_sample_rate: float


@dataclasses.dataclass(frozen=True)
class Batching:
    max_batch_size: int
    max_queue_delay_microseconds: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int


@dataclasses.dataclass(frozen=True)
class Gpu:
    count: int
    resource_name: str
    product: str | None


@dataclasses.dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    target_queue_depth: int
    scale_up_stabilization_seconds: int
    scale_down_stabilization_seconds: int


@dataclasses.dataclass(frozen=True)
class Tls:
    mode: str
    clients: tuple[str, ...]
    allowed_clients: tuple[str, ...]
    client_ca_secret_name: str | None
    certificate_duration_seconds: int

    @property
    def enabled(self) -> bool:
        return self.mode != "Disabled"

    @property
    def mutual(self) -> bool:
        return self.mode == "Mutual"


@dataclasses.dataclass(frozen=True)
class PodSettings:
    """What a platform sets on every pod: registry and cloud identity, variables, labels, placement."""

    image_pull_secrets: tuple[str, ...] = ()
    service_account_name: str | None = None
    env: tuple[Mapping[str, Any], ...] = ()  # core/v1 EnvVar, as given
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    priority_class_name: str | None = None
    runtime_class_name: str | None = None
    topology_spread_constraints: tuple[Mapping[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Calibration:
    uri: str
    samples: int


@dataclasses.dataclass(frozen=True)
class Validation:
    uri: str
    label_column: str | None
    metric: str | None  # None: kubeinfer-server optimize's own (Top1 with a label column, else Agreement)


@dataclasses.dataclass(frozen=True)
class Optimization:
    """spec.optimization: what the pod's optimize init step makes of the fetched model, and its gates."""

    method: str
    calibration: Calibration | None
    validation: Validation | None
    max_degradation: float
    min_speedup: float
    on_reject: str

    @property
    def fail_on_reject(self) -> bool:
        return self.on_reject == "Fail"


@dataclasses.dataclass(frozen=True)
class RolloutStep:
    weight: int  # percent of the serving replicas that run the canary
    pause_seconds: int  # at least this long at this weight, and one passed analysis, before the next step


@dataclasses.dataclass(frozen=True)
class Rollout:
    """spec.rollout: how a change to the pods reaches them (``rollout``, ``canary``)."""

    strategy: str = DEFAULT_ROLLOUT_STRATEGY
    steps: tuple[RolloutStep, ...] = tuple(RolloutStep(w, p) for w, p in DEFAULT_ROLLOUT_STEPS)
    analysis: Analysis = Analysis()

    @property
    def canary(self) -> bool:
        return self.strategy == "Canary"


@dataclasses.dataclass(frozen=True)
class SizeBounds:
    """spec.rightSizing.cpu or .memory: the usage percentile to size by, and the clamps (quantities, as written)."""

    percentile: float
    min: str
    max: str

    @property
    def min_value(self) -> float:
        return float(quantity(self.min) or 0)

    @property
    def max_value(self) -> float:
        return float(quantity(self.max) or 0)


@dataclasses.dataclass(frozen=True)
class RightSizing:
    """spec.rightSizing: whether the server container's size is recommended (and applied in place), and how."""

    mode: str = DEFAULT_RIGHT_SIZING_MODE
    cpu: SizeBounds = SizeBounds(DEFAULT_CPU_PERCENTILE, DEFAULT_CPU_MIN, DEFAULT_CPU_MAX)
    memory: SizeBounds = SizeBounds(DEFAULT_MEMORY_PERCENTILE, DEFAULT_MEMORY_MIN, DEFAULT_MEMORY_MAX)
    margin: float = DEFAULT_RIGHT_SIZING_MARGIN
    min_samples: int = INTEGER_FIELDS["rightSizing.minSamples"].default or 0

    @property
    def enabled(self) -> bool:
        return self.mode != "Off"

    @property
    def in_place(self) -> bool:
        return self.mode == "InPlace"

    @property
    def policy(self) -> Policy:
        """The recommender's policy: cores and bytes."""
        return Policy(cpu_percentile=self.cpu.percentile, memory_percentile=self.memory.percentile,
                      cpu_min=self.cpu.min_value, cpu_max=self.cpu.max_value, memory_min=self.memory.min_value,
                      memory_max=self.memory.max_value, margin=self.margin, min_samples=self.min_samples)


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """Everything the builders need, for one InferenceDeployment."""

    name: str
    namespace: str
    model: Model
    runtime: Runtime
    batching: Batching
    resources: Mapping[str, Mapping[str, str]]
    gpu: Gpu | None
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]
    affinity: Mapping[str, Any]
    replicas: int | None
    autoscaling: Autoscaling | None
    tls: Tls
    pod: PodSettings = PodSettings()
    optimization: Optimization | None = None
    rollout: Rollout = Rollout()
    right_sizing: RightSizing = RightSizing()

    @property
    def desired_replicas(self) -> int:
        """``spec.replicas``, or its default when unset (with autoscaling, until the HPA decides)."""
        return self.replicas if self.replicas is not None else DEFAULT_REPLICAS

    @property
    def max_pods(self) -> int:
        """The most replicas this spec can run."""
        if self.autoscaling is not None:
            return self.autoscaling.max_replicas
        return self.desired_replicas


def parse(name: str, namespace: str, spec: Mapping[str, Any], settings: Settings) -> InferenceSpec:
    """The typed spec, or SpecError naming the first rule that does not hold."""
    if not isinstance(spec, Mapping):
        raise SpecError("spec must be an object")
    if spec.get("replicas") is not None and spec.get("autoscaling") is not None:
        raise SpecError("spec.replicas and spec.autoscaling must not both be set")
    model = parse_model(name, get_object(spec, "model"))
    runtime = parse_runtime(get_object(spec, "runtime"), settings)
    resources = parse_resources(spec.get("resources"))
    return InferenceSpec(
        name=name,
        namespace=namespace,
        model=model,
        runtime=runtime,
        batching=_batching(get_object(spec, "batching")),
        resources=resources,
        gpu=parse_gpu(spec.get("gpu")),
        node_selector={str(k): str(v) for k, v in get_object(spec, "nodeSelector").items()},
        tolerations=tuple(dict(t) for t in get_list(spec, "tolerations")),
        affinity=dict(get_object(spec, "affinity")),
        replicas=get_optional_int(spec, "replicas"),
        autoscaling=_autoscaling(spec.get("autoscaling")),
        tls=_tls(get_object(spec, "tls"), settings),
        pod=parse_pod(spec),
        optimization=parse_optimization(spec.get("optimization"), model, runtime),
        rollout=parse_rollout(spec.get("rollout")),
        right_sizing=parse_right_sizing(spec.get("rightSizing"), resources),
    )


def parse_model(default_name: str, raw: Mapping[str, Any]) -> Model:
    uri = raw.get("uri")
    if not isinstance(uri, str) or "://" not in uri:
        raise SpecError("model.uri must be a URI such as s3://bucket/model.onnx or pvc://CLAIM/path")
    secret = get_object(get_object(raw, "credentials"), "secretRef").get("name")
    model = Model(name=str(raw.get("name") or default_name), uri=uri, sha256=raw.get("sha256"),
                  pvc=parse_pvc_uri(uri), credentials_secret=str(secret) if secret else None)
    if model.pvc is not None and model.sha256:
        raise SpecError("model.sha256 must not be set for a pvc:// uri")
    if model.pvc is not None and model.credentials_secret:
        raise SpecError("model.credentials must not be set for a pvc:// uri (nothing is fetched)")
    return model


def parse_runtime(raw: Mapping[str, Any], settings: Settings) -> Runtime:
    providers = tuple(raw.get("executionProviders") or DEFAULT_EXECUTION_PROVIDERS)
    unknown = [p for p in providers if p not in PROVIDERS]
    if unknown:
        raise SpecError(f"runtime.executionProviders must be among {', '.join(PROVIDERS)}, not {unknown[0]}")
    return Runtime(
        image=str(raw.get("image") or settings.server_image),
        image_pull_policy=raw.get("imagePullPolicy"),
        execution_providers=providers,
        intra_op_threads=get_optional_int(raw, "runtime.intraOpThreads"),
        instances=get_int(raw, "runtime.instances"),
        drain_grace_seconds=get_int(raw, "runtime.drainGraceSeconds"),
        max_connection_age_seconds=get_int(raw, "runtime.maxConnectionAgeSeconds"),
        workers=get_int(raw, "runtime.workers"),
        max_message_bytes=get_int(raw, "runtime.maxMessageBytes"),
        access_log_sample_rate=_sample_rate(raw),
    )


def _sample_rate(raw: Mapping[str, Any]) -> float:
    value = raw.get("accessLogSampleRate", DEFAULT_ACCESS_LOG_SAMPLE_RATE)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise SpecError("runtime.accessLogSampleRate must be a number from 0 to 1")
    return float(value)


def parse_optimization(raw: Any, model: Model, runtime: Runtime) -> Optimization | None:
    """spec.optimization, checked against the model (fetched, not a claim) and the providers."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpecError("optimization must be an object")
    optimization = Optimization(
        method=_choice(raw, "optimization.method", OPTIMIZATION_METHODS, None),
        calibration=_calibration(raw.get("calibration")),
        validation=_validation(raw.get("validation")),
        max_degradation=_number(raw, "optimization.maxDegradation", DEFAULT_MAX_DEGRADATION, MAX_DEGRADATION_LIMIT),
        min_speedup=_number(raw, "optimization.minSpeedup", DEFAULT_MIN_SPEEDUP, MIN_SPEEDUP_LIMIT),
        on_reject=_choice(raw, "optimization.onReject", ON_REJECT, DEFAULT_ON_REJECT),
    )
    for problem in _optimization_problems(optimization, model, runtime):
        raise SpecError(problem)
    return optimization


def _optimization_problems(optimization: Optimization, model: Model, runtime: Runtime) -> list[str]:
    """The cross-field rules of spec.optimization (the CRD's CEL rules say the same)."""
    method, validation = optimization.method, optimization.validation
    checks = [
        (model.pvc is not None, "optimization needs a fetched model.uri, not pvc:// (the claim is mounted read-only)"),
        (method == "Static" and (optimization.calibration is None or validation is None),
         "optimization.method Static needs optimization.calibration and optimization.validation"),
        (method == "Prune" and validation is None, "optimization.method Prune needs optimization.validation"),
        (method == "Float16" and not set(GPU_PROVIDERS) & set(runtime.execution_providers),
         "optimization.method Float16 needs a GPU provider (CUDA or TensorRT) in runtime.executionProviders"),
        (validation is not None and validation.metric == "Top1" and not validation.label_column,
         "optimization.validation.metric Top1 needs optimization.validation.labelColumn"),
    ]
    return [message for failed, message in checks if failed]


def parse_rollout(raw: Any) -> Rollout:
    """spec.rollout: Replace (a rolling update) by default, or Canary with its steps and analysis."""
    if raw is None:
        return Rollout()
    if not isinstance(raw, Mapping):
        raise SpecError("rollout must be an object")
    steps = tuple(_rollout_step(step) for step in get_list(raw, "steps")) or Rollout().steps
    weights = [step.weight for step in steps]
    if weights != sorted(set(weights)):
        raise SpecError(f"rollout.steps weights must increase from step to step, got {weights}")
    analysis = get_object(raw, "analysis")
    return Rollout(
        strategy=_choice(raw, "rollout.strategy", ROLLOUT_STRATEGIES, DEFAULT_ROLLOUT_STRATEGY),
        steps=steps,
        analysis=Analysis(
            interval_seconds=get_int(analysis, "rollout.analysis.intervalSeconds"),
            min_requests=get_int(analysis, "rollout.analysis.minRequests"),
            max_error_rate=_number(analysis, "rollout.analysis.maxErrorRate", DEFAULT_MAX_ERROR_RATE, 1.0),
            max_latency_ratio=_number(analysis, "rollout.analysis.maxLatencyRatio", DEFAULT_MAX_LATENCY_RATIO,
                                      MAX_LATENCY_RATIO_LIMIT, low=1.0),
            failure_limit=get_int(analysis, "rollout.analysis.failureLimit"),
        ),
    )


def parse_right_sizing(raw: Any, resources: Mapping[str, Mapping[str, str]]) -> RightSizing:
    """spec.rightSizing: Off by default; InPlace needs the server's cpu and memory named in resources."""
    if raw is None:
        return RightSizing()
    if not isinstance(raw, Mapping):
        raise SpecError("rightSizing must be an object")
    if raw.get("mode", DEFAULT_RIGHT_SIZING_MODE) not in RIGHT_SIZING_MODES:
        raise SpecError("rightSizing.mode must be one of Off, Recommend, InPlace (quote \"Off\" in YAML)")
    sizing = RightSizing(
        mode=str(raw.get("mode", DEFAULT_RIGHT_SIZING_MODE)),
        cpu=_size_bounds(get_object(raw, "cpu"), "rightSizing.cpu", RightSizing().cpu),
        memory=_size_bounds(get_object(raw, "memory"), "rightSizing.memory", RightSizing().memory),
        margin=_number(raw, "rightSizing.margin", DEFAULT_RIGHT_SIZING_MARGIN, 1.0),
        min_samples=get_int(raw, "rightSizing.minSamples"),
    )
    named = set(resources.get("requests") or {}) | set(resources.get("limits") or {})
    if sizing.in_place and not {"cpu", "memory"} <= named:
        raise SpecError("rightSizing.mode InPlace needs cpu and memory in resources.requests (or limits): "
                        "a pod's QoS class cannot change in place")
    return sizing


def _size_bounds(raw: Mapping[str, Any], path: str, default: SizeBounds) -> SizeBounds:
    bounds = SizeBounds(
        percentile=_number(raw, f"{path}.percentile", default.percentile, 1.0, low=MIN_PERCENTILE),
        min=_quantity(raw, f"{path}.min", default.min),
        max=_quantity(raw, f"{path}.max", default.max),
    )
    if bounds.min_value > bounds.max_value:
        raise SpecError(f"{path}.min must be at most {path}.max")
    return bounds


def _quantity(raw: Mapping[str, Any], path: str, default: str) -> str:
    value = raw.get(path.rpartition(".")[2], default)
    parsed = quantity(str(value)) if isinstance(value, int | str) and not isinstance(value, bool) else None
    if parsed is None or parsed <= 0:
        raise SpecError(f"{path} must be a positive quantity such as {default}")
    return str(value)


def _rollout_step(raw: Any) -> RolloutStep:
    if not isinstance(raw, Mapping):
        raise SpecError("rollout.steps entries must be objects with weight and pauseSeconds")
    return RolloutStep(get_int(raw, "rollout.steps.weight"), get_int(raw, "rollout.steps.pauseSeconds"))


def _calibration(raw: Any) -> Calibration | None:
    if raw is None:
        return None
    return Calibration(uri=_data_uri(raw, "optimization.calibration"),
                       samples=get_int(raw, "optimization.calibration.samples"))


def _validation(raw: Any) -> Validation | None:
    if raw is None:
        return None
    return Validation(uri=_data_uri(raw, "optimization.validation"), label_column=raw.get("labelColumn") or None,
                      metric=_choice(raw, "optimization.validation.metric", VALIDATION_METRICS, None, required=False))


def _data_uri(raw: Any, path: str) -> str:
    uri = raw.get("uri") if isinstance(raw, Mapping) else None
    if not isinstance(uri, str) or "://" not in uri or uri.startswith(PVC_SCHEME):
        raise SpecError(f"{path}.uri must be a URI the optimize step reads, such as s3://bucket/rows.parquet")
    return uri


def _choice(raw: Mapping[str, Any], path: str, choices: tuple[str, ...], default: str | None,
            required: bool = True) -> Any:
    value = raw.get(path.rpartition(".")[2], default)
    if value is None and not required:
        return None
    if value not in choices:
        raise SpecError(f"{path} must be one of {', '.join(choices)}")
    return value


def _number(raw: Mapping[str, Any], path: str, default: float, high: float, low: float = 0.0) -> float:
    value = raw.get(path.rpartition(".")[2], default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise SpecError(f"{path} must be a number from {low:g} to {high:g}")
    return float(value)


def parse_pod(spec: Mapping[str, Any]) -> PodSettings:
    env = tuple(dict(e) for e in get_list(spec, "env"))
    reserved = [e.get("name") for e in env if str(e.get("name", "")).startswith("KUBEINFER_")]
    if reserved:
        raise SpecError(f"env {reserved[0]}: names starting with KUBEINFER_ are set by the operator from the spec")
    labels = {str(k): str(v) for k, v in get_object(spec, "podLabels").items()}
    taken = sorted(set(labels) & set(SELECTOR_LABEL_KEYS))
    if taken:
        raise SpecError(f"podLabels must not set {taken[0]}: the operator's labels select the pods")
    return PodSettings(
        image_pull_secrets=tuple(str(s["name"]) for s in get_list(spec, "imagePullSecrets")),
        service_account_name=spec.get("serviceAccountName") or None,
        env=env,
        labels=labels,
        annotations={str(k): str(v) for k, v in get_object(spec, "podAnnotations").items()},
        priority_class_name=spec.get("priorityClassName") or None,
        runtime_class_name=spec.get("runtimeClassName") or None,
        topology_spread_constraints=tuple(dict(c) for c in get_list(spec, "topologySpreadConstraints")),
    )


def _batching(raw: Mapping[str, Any]) -> Batching:
    batching = Batching(
        max_batch_size=get_int(raw, "batching.maxBatchSize"),
        max_queue_delay_microseconds=get_int(raw, "batching.maxQueueDelayMicroseconds"),
        preferred_batch_sizes=tuple(int(s) for s in get_list(raw, "preferredBatchSizes")),
        max_queue_size=get_int(raw, "batching.maxQueueSize"),
    )
    if any(s > batching.max_batch_size for s in batching.preferred_batch_sizes):
        raise SpecError("every batching.preferredBatchSizes entry must be at most batching.maxBatchSize")
    return batching


def parse_resources(raw: Any) -> Mapping[str, Mapping[str, str]]:
    if raw is None:
        raw = DEFAULT_RESOURCES
    parsed: dict[str, dict[str, str]] = {}
    for section in ("requests", "limits"):
        values = raw.get(section) or {}
        bad = [k for k in values if k not in RESOURCE_KEYS]
        if bad:
            raise SpecError(f"resources.{section} must name only cpu, memory and ephemeral-storage, not {bad[0]}")
        if values:
            parsed[section] = {k: str(v) for k, v in values.items()}
    return parsed


def parse_gpu(raw: Any) -> Gpu | None:
    if not raw:
        return None
    count = get_optional_int(raw, "gpu.count")
    if count is None:
        if raw.get("product"):
            raise SpecError("gpu.product needs gpu.count")
        return None
    resource_name = str(raw.get("resourceName") or DEFAULT_GPU_RESOURCE_NAME)
    return Gpu(count=count, resource_name=resource_name, product=raw.get("product"))


def _autoscaling(raw: Any) -> Autoscaling | None:
    if raw is None:
        return None
    scaling = Autoscaling(
        min_replicas=get_int(raw, "autoscaling.minReplicas"),
        max_replicas=get_int(raw, "autoscaling.maxReplicas"),
        target_queue_depth=get_int(raw, "autoscaling.targetQueueDepth"),
        scale_up_stabilization_seconds=get_int(raw, "autoscaling.scaleUpStabilizationSeconds"),
        scale_down_stabilization_seconds=get_int(raw, "autoscaling.scaleDownStabilizationSeconds"),
    )
    if scaling.min_replicas > scaling.max_replicas:
        raise SpecError("autoscaling.minReplicas must be at most autoscaling.maxReplicas")
    if raw.get("engine", DEFAULT_ENGINE) not in ENGINES:
        raise SpecError(f"autoscaling.engine must be {' or '.join(ENGINES)}")
    return scaling


def _tls(raw: Mapping[str, Any], settings: Settings) -> Tls:
    tls = Tls(
        mode=str(raw.get("mode") or DEFAULT_TLS_MODE),
        clients=tuple(str(c["name"]) for c in get_list(raw, "clients")),
        allowed_clients=tuple(str(c) for c in get_list(raw, "allowedClients")),
        client_ca_secret_name=raw.get("clientCASecretName"),
        certificate_duration_seconds=get_int(
            raw, "tls.certificateDurationSeconds", default=settings.certificate_duration_seconds),
    )
    if tls.mode not in TLS_MODES:
        raise SpecError(f"tls.mode must be one of {', '.join(TLS_MODES)}")
    if tls.mutual and not tls.clients and not tls.client_ca_secret_name:
        raise SpecError("tls.mode Mutual needs at least one entry in tls.clients, or tls.clientCASecretName")
    if tls.allowed_clients and not tls.mutual:
        raise SpecError("tls.allowedClients needs tls.mode Mutual")
    if tls.clients and not tls.enabled:
        raise SpecError("tls.clients must be empty when tls.mode is Disabled")
    return tls


def get_object(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{key} must be an object")
    return value


def get_list(raw: Mapping[str, Any], key: str) -> Sequence[Any]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(f"{key} must be a list")
    return value


def get_int(raw: Mapping[str, Any], path: str, default: int | None = None,
            fields: Mapping[str, IntegerField] = INTEGER_FIELDS) -> int:
    """The integer field ``path`` of ``raw`` (its object), or its default; bounds checked."""
    value = get_optional_int(raw, path, default, fields)
    if value is None:
        raise SpecError(f"{path} must be set")
    return value


def get_optional_int(raw: Mapping[str, Any], path: str, default: int | None = None,
                     fields: Mapping[str, IntegerField] = INTEGER_FIELDS) -> int | None:
    """Like ``get_int``, but None when the field is unset and has no default."""
    field = fields[path]
    value = raw.get(field.key)
    if value is None:
        value = field.default if default is None else default
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not field.low <= value <= field.high:
        raise SpecError(f"{field.key} must be an integer from {field.low} to {field.high}")
    return value
