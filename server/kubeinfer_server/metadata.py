"""What the server says about itself and its models, once for both transports.

Pure builders of plain dicts in the shape of the REST API's JSON (Triton's
HTTP API: protobuf field names, enum names, numbers as numbers). The REST app
sends them as they are; the gRPC servicer parses them into the protocol's
messages (``google.protobuf.json_format.ParseDict``), so a field is written in
one place for both.
"""

from __future__ import annotations

from typing import Any

from kubeinfer_server import __version__
from kubeinfer_server.core import Repository, ServedModel

EXTENSIONS = ("model_configuration", "binary_tensor_data", "parameters", "statistics", "schedule_policy")
PLATFORM = "onnxruntime_onnx"
_STATS_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


def server_metadata(extensions: tuple[str, ...]) -> dict[str, Any]:
    return {"name": "kubeinfer", "version": __version__, "extensions": list(extensions)}


def model_metadata(served: ServedModel) -> dict[str, Any]:
    """OIP v2 model metadata; ``parameters`` are plain values (the REST form)."""
    model = served.model
    return {
        "name": served.name,
        "versions": [served.version],
        "platform": PLATFORM,
        "inputs": [_tensor(spec) for spec in model.inputs],
        "outputs": [_tensor(spec) for spec in model.outputs],
        "parameters": model_parameters(served),
    }


def model_parameters(served: ServedModel) -> dict[str, str]:
    """Which session and which file answer: the providers it got, the file's sha256 and how it was
    optimized (``none``: not by ``kubeinfer-server optimize``), in ModelMetadata and ModelConfig."""
    return {"execution_providers": ",".join(served.model.providers), "sha256": served.provenance.sha256,
            "optimization_method": served.provenance.optimization_method}


def model_config(served: ServedModel) -> dict[str, Any]:
    """Triton's model configuration (what perf_analyzer and tritonclient read)."""
    model, batched = served.model, served.max_batch_size > 0
    on_cpu = model.providers[0] == "CPUExecutionProvider"
    config: dict[str, Any] = {
        "name": served.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": served.max_batch_size,
        "input": [_config_tensor(spec, batched) for spec in model.inputs],
        "output": [_config_tensor(spec, batched) for spec in model.outputs],
        "instance_group": [{"name": served.name, "count": served.batching.instances,
                            "kind": "KIND_CPU" if on_cpu else "KIND_GPU"}],
        "parameters": {k: {"string_value": v} for k, v in model_parameters(served).items()},
    }
    if batched:
        config["dynamic_batching"] = {
            "preferred_batch_size": list(served.batching.preferred_batch_sizes),
            "max_queue_delay_microseconds": served.batching.max_queue_delay_us,
        }
    return config


def model_statistics(models: list[ServedModel]) -> dict[str, Any]:
    return {"model_stats": [_statistics(served) for served in models]}


def repository_index(repository: Repository) -> list[dict[str, str]]:
    state = "READY" if repository.reports_ready else "UNAVAILABLE"
    return [{"name": name, "version": served.version, "state": state}
            for name, served in sorted(repository.models.items())]


def _tensor(spec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype.name, "shape": list(spec.shape)}


def _config_tensor(spec, batched: bool) -> dict[str, Any]:
    name = "STRING" if spec.datatype.name == "BYTES" else spec.datatype.name
    return {"name": spec.name, "data_type": f"TYPE_{name}", "dims": list(spec.shape[1:] if batched else spec.shape)}


def _statistics(served: ServedModel) -> dict[str, Any]:
    stats = served.account.stats
    return {
        "name": served.name,
        "version": served.version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {field: _duration(getattr(stats, field)) for field in _STATS_DURATIONS},
        "batch_stats": [_batch_statistics(size, stats.batches[size]) for size in sorted(stats.batches)],
    }


def _batch_statistics(size: int, durations) -> dict[str, Any]:
    return {"batch_size": size, **{field: _duration(getattr(durations, field)) for field in _BATCH_DURATIONS}}


def _duration(duration) -> dict[str, int]:
    return {"count": duration.count, "ns": duration.ns}
