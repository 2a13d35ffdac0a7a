"""The InferenceBatchJob spec as typed, frozen values, validated at the edge.

``parse`` turns the API object's ``spec`` into a ``BatchSpec``. The model,
runtime, resources, GPU and pod settings are parsed as the InferenceDeployment's
are (``spec``'s section parsers); the rest is the job's own: the input and
output datasets, the shards, the bad-row budget, the retries, the schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from kubeinfer_operator.defaults import BATCH_DEFAULTS, BATCH_INTEGER_FIELDS
from kubeinfer_operator.settings import Settings
from kubeinfer_operator.spec import (
    Gpu,
    Model,
    PodSettings,
    Runtime,
    SpecError,
    get_int,
    get_list,
    get_object,
    parse_gpu,
    parse_model,
    parse_pod,
    parse_resources,
    parse_runtime,
)

INPUT_FORMATS = ("Parquet", "JSONL", "CSV")
OUTPUT_FORMATS = ("Parquet", "JSONL")
DATE_PLACEHOLDER = "{date}"


@dataclasses.dataclass(frozen=True)
class Input:
    uri: str
    format: str | None  # None: from the file names
    columns: Mapping[str, tuple[str, ...]]  # model input -> the scalar columns stacked into it
    id_column: str | None


@dataclasses.dataclass(frozen=True)
class Output:
    uri: str
    format: str


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """A validated InferenceBatchJob spec."""

    name: str
    namespace: str
    model: Model
    runtime: Runtime
    input: Input
    output: Output
    parallelism: int  # shards: the Indexed Job's completions
    batch_size: int  # 0: the size the model runs fastest at
    max_failed_rows: int
    backoff_limit_per_index: int
    schedule: str | None
    suspend: bool
    data_credentials_secret: str | None  # spec.credentials.secretRef.name: the input and output store's keys
    resources: Mapping[str, Mapping[str, str]]
    gpu: Gpu | None
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]
    affinity: Mapping[str, Any]
    pod: PodSettings = PodSettings()


def parse(name: str, namespace: str, spec: Mapping[str, Any], settings: Settings) -> BatchSpec:
    """The typed spec, or SpecError naming the first rule that does not hold."""
    if not isinstance(spec, Mapping):
        raise SpecError("spec must be an object")
    secret = get_object(get_object(spec, "credentials"), "secretRef").get("name")
    parsed = BatchSpec(
        name=name,
        namespace=namespace,
        model=parse_model(name, get_object(spec, "model")),
        runtime=parse_runtime(get_object(spec, "runtime"), settings),
        input=_input(get_object(spec, "input")),
        output=_output(get_object(spec, "output")),
        parallelism=_int(spec, "parallelism"),
        batch_size=_int(spec, "batchSize"),
        max_failed_rows=_int(spec, "maxFailedRows"),
        backoff_limit_per_index=_int(spec, "backoffLimitPerIndex"),
        schedule=str(spec["schedule"]) if spec.get("schedule") else None,
        suspend=bool(spec.get("suspend", BATCH_DEFAULTS["suspend"])),
        data_credentials_secret=str(secret) if secret else None,
        resources=parse_resources(spec.get("resources")),
        gpu=parse_gpu(spec.get("gpu")),
        node_selector={str(k): str(v) for k, v in get_object(spec, "nodeSelector").items()},
        tolerations=tuple(dict(t) for t in get_list(spec, "tolerations")),
        affinity=dict(get_object(spec, "affinity")),
        pod=parse_pod(spec),
    )
    if parsed.model.pvc is not None:
        raise SpecError("model.uri must be fetched (s3://, http(s)://, file://): pvc:// is for InferenceDeployments")
    if DATE_PLACEHOLDER in parsed.output.uri and parsed.schedule is None:
        raise SpecError("output.uri may use {date} only with a schedule (each run's date names its output)")
    return parsed


def _int(spec: Mapping[str, Any], path: str) -> int:
    return get_int(spec, path, fields=BATCH_INTEGER_FIELDS)


def _input(raw: Mapping[str, Any]) -> Input:
    uri = raw.get("uri")
    if not isinstance(uri, str) or not uri:
        raise SpecError("input.uri must name the dataset: a file, or a folder or prefix of files")
    fmt = raw.get("format")
    if fmt is not None and fmt not in INPUT_FORMATS:
        raise SpecError(f"input.format must be one of {', '.join(INPUT_FORMATS)}, not {fmt}")
    columns = {}
    for tensor, names in get_object(raw, "columns").items():
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise SpecError(f"input.columns.{tensor} must be a non-empty list of column names")
        columns[str(tensor)] = tuple(names)
    return Input(uri=uri, format=fmt, columns=columns, id_column=raw.get("idColumn") or None)


def _output(raw: Mapping[str, Any]) -> Output:
    uri = raw.get("uri")
    if not isinstance(uri, str) or not uri:
        raise SpecError("output.uri must name the folder or prefix the predictions go to")
    fmt = raw.get("format") or BATCH_DEFAULTS["output.format"]
    if fmt not in OUTPUT_FORMATS:
        raise SpecError(f"output.format must be one of {', '.join(OUTPUT_FORMATS)}, not {fmt}")
    return Output(uri=uri, format=str(fmt))
