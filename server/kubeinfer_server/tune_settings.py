"""The settings of ``kubeinfer-server tune``, validated at the edge, and what tune reads of the model.

``TuneSettings`` says what is wrong with its values (``TuneUsageError``, exit 2)
before anything starts; ``inspect_model`` reads the ONNX graph's inputs and
whether the server can batch it (every input and output with a dynamic
first dimension, as the server decides), so a file that is not ONNX is a
usage error too, said in one line.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeinfer_server.tune_client import CLIENTS

SWEPT_FLAGS = ("--intra-op-threads", "--instances", "--max-batch-size", "--model", "--host", "--grpc-port",
               "--http-port", "--metrics-port", "--workers", "--log-level")


class TuneUsageError(ValueError):
    """The arguments or the model do not fit: nothing was started (exit 2)."""


@dataclass(frozen=True)
class TuneSettings:
    model: str
    cpus: tuple[int, ...] = (1, 2, 4)
    threads: tuple[int, ...] = (1, 2, 4)
    instances: tuple[int, ...] = (1, 2)
    max_batch_sizes: tuple[int, ...] = (0, 8, 32)
    concurrencies: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    p99_ms: float = 50.0
    target_rps: float | None = None
    budget_seconds: float = 120.0
    point_seconds: float = 2.0
    memory_margin: float = 0.25
    client: str = "auto"
    compare_default: bool = True
    confirmations: int = 3
    serve_args: str = ""
    report: str | None = None

    def __post_init__(self) -> None:
        for problem in _problems(self):
            raise TuneUsageError(problem)


def _problems(s: TuneSettings) -> Iterator[str]:
    lists = {"--cpus": (s.cpus, 1), "--threads": (s.threads, 0), "--instances": (s.instances, 1),
             "--max-batch-size": (s.max_batch_sizes, 0), "--concurrency": (s.concurrencies, 1)}
    for flag, (values, least) in lists.items():
        if not values:
            yield f"{flag} needs at least one value (a comma-separated list)"
        bad = [v for v in values if v < least]
        if bad:
            yield f"{flag} values must be at least {least}, got {bad[0]}"
    numbers = {"--p99-ms": s.p99_ms, "--budget-seconds": s.budget_seconds, "--point-seconds": s.point_seconds}
    for flag, value in numbers.items():
        if not value > 0:
            yield f"{flag} must be above 0, got {value:g}"
    if s.target_rps is not None and not s.target_rps > 0:
        yield f"--target-rps must be above 0, got {s.target_rps:g}"
    if s.confirmations < 0:
        yield f"--confirmations must be at least 0, got {s.confirmations}"
    if not s.memory_margin >= 0:
        yield f"--memory-margin must be at least 0, got {s.memory_margin:g}"
    if s.client not in CLIENTS:
        yield f"--client takes {', '.join(CLIENTS)}"
    if s.report and not Path(s.report).parent.is_dir():
        yield f"--report {s.report}: its folder does not exist"
    names = [flag.split("=")[0] for flag in serve_args_list(s.serve_args) if flag.startswith("--")]
    clash = [swept for name in names for swept in SWEPT_FLAGS if swept.startswith(name)]  # argparse takes prefixes
    if clash:
        yield f"--serve-args may not set {clash[0]}: tune sets it"


def serve_args_list(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise TuneUsageError(f"--serve-args: {exc}") from None


@dataclass(frozen=True)
class ModelShape:
    inputs: dict[str, tuple[int, ...]]  # -1 for a dynamic dimension
    batchable: bool  # every input and output has a dynamic first dimension (as the server decides)


def inspect_model(path: str) -> ModelShape:
    """The model's inputs, read from the ONNX graph; TuneUsageError when it is not one."""
    import onnx

    if not Path(path).is_file():
        raise TuneUsageError(f"{path}: no such file (tune takes a local ONNX file)")
    try:
        model = onnx.load_model(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's and onnx's errors alike: not a model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneUsageError(f"{path} is not an ONNX model: {first}") from None
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    inputs = {i.name: _dims(i) for i in graph.input if i.name not in weights}
    if not inputs or not graph.node:
        raise TuneUsageError(f"{path} is not an ONNX model: it has no graph inputs or no nodes")
    outputs = [_dims(o) for o in graph.output]
    batchable = all(dims and dims[0] == -1 for dims in [*inputs.values(), *outputs])
    return ModelShape(inputs, batchable)


def _dims(value_info: Any) -> tuple[int, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims)


def perf_analyzer_shapes(shape: ModelShape, max_batch_size: int) -> dict[str, tuple[int, ...]]:
    """``--shape`` per input with a dynamic dimension, as perf_analyzer sees it (batch dimension
    dropped when the server batches), dynamic dimensions as 1."""
    batched = shape.batchable and max_batch_size > 0
    seen = {name: dims[1:] if batched else dims for name, dims in shape.inputs.items()}
    return {name: tuple(1 if d < 0 else d for d in dims) for name, dims in seen.items() if -1 in dims}


def served_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", Path(path).stem) or "model"
