"""The Indexed Job (or the CronJob that makes one per run) of an InferenceBatchJob (pure).

Each of ``parallelism`` pods fetches the model with the same init step as the
servers, then runs ``kubeinfer-server batch`` on its shard: the CLI reads
``JOB_COMPLETION_INDEX`` for ``--shard``, resumes from the parts already
committed (so a retried index loses and repeats nothing) and leaves its counts
in the termination message, where the status reads them. A usage error (exit
2: a column the model needs is missing, the output holds another run) fails the
whole Job at once; any other failure retries the index up to
``backoffLimitPerIndex`` times.
"""

from __future__ import annotations

from typing import Any

from kubeinfer_operator import naming
from kubeinfer_operator.batchspec import BatchSpec
from kubeinfer_operator.builders import podparts

CONTAINER = "batch"
USAGE_ERROR_EXIT_CODE = 2
HISTORY_LIMIT = 3


def model_path(spec: BatchSpec) -> str:
    return f"{podparts.model_dir(spec.model)}/model.onnx"


def build_batch_child(spec: BatchSpec, owner: dict[str, Any]) -> dict[str, Any]:
    """The Job, or with a schedule the CronJob, named after the InferenceBatchJob."""
    metadata = {"name": naming.batch_job_name(spec.name), "namespace": spec.namespace,
                "labels": naming.batch_labels(spec.name), "ownerReferences": [owner]}
    if spec.schedule is None:
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata,
                "spec": {**_job_spec(spec), "suspend": spec.suspend}}
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata,
        "spec": {
            "schedule": spec.schedule,
            "suspend": spec.suspend,
            # A run still going when the next is due: the next waits (two runs never share the output).
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": HISTORY_LIMIT,
            "failedJobsHistoryLimit": HISTORY_LIMIT,
            "jobTemplate": {"metadata": {"labels": naming.batch_labels(spec.name)}, "spec": _job_spec(spec)},
        },
    }


def _job_spec(spec: BatchSpec) -> dict[str, Any]:
    return {
        "completionMode": "Indexed",
        "completions": spec.parallelism,
        "parallelism": spec.parallelism,
        "backoffLimitPerIndex": spec.backoff_limit_per_index,
        "podFailurePolicy": {"rules": [
            {"action": "FailJob",
             "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [USAGE_ERROR_EXIT_CODE]}},
            # A pod evicted or preempted is not the shard's fault: it does not use up a retry.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]},
        "template": _pod_template(spec),
    }


def _pod_template(spec: BatchSpec) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": podparts.pod_security_context(),
        "initContainers": [podparts.fetch_container(spec.model, spec.runtime, spec.pod, model_path(spec))],
        "containers": [_batch_container(spec)],
        "volumes": [
            {"name": "model", "emptyDir": {}},
            # Scratch for the CLI; not in memory, so a large part being written does not count as RAM.
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    pod.update(podparts.scheduling_fields(spec.node_selector, spec.tolerations, spec.affinity, spec.gpu))
    pod.update(podparts.platform_fields(spec.pod, naming.batch_selector_labels(spec.name)))
    metadata: dict[str, Any] = {"labels": {**spec.pod.labels, **naming.batch_labels(spec.name)}}
    if spec.pod.annotations:  # the API server drops an empty map: applying one would never match (drift)
        metadata["annotations"] = dict(spec.pod.annotations)
    return {"metadata": metadata, "spec": pod}


def _batch_container(spec: BatchSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.runtime.image,
        "command": ["kubeinfer-server"],
        "args": batch_args(spec),
        "env": [{"name": "HOME", "value": "/tmp"}, *(dict(e) for e in spec.pod.env)],
        # spec.credentials.secretRef: the input and output store's keys.
        **podparts.secret_env(spec.data_credentials_secret),
        "resources": podparts.resources_with_gpu(spec.resources, spec.gpu),
        "securityContext": podparts.container_security(),
        # The CLI writes the shard's counts (or its error) to /dev/termination-log;
        # a crash before that leaves the log's tail instead.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "model", "mountPath": podparts.model_dir(spec.model), "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return podparts.with_pull_policy(container, spec.runtime)


def batch_args(spec: BatchSpec) -> list[str]:
    """``kubeinfer-server batch``'s arguments for every shard (the shard index comes from the Job)."""
    args = ["batch", "--model", model_path(spec), "--input", spec.input.uri, "--output", spec.output.uri,
            "--output-format", spec.output.format.lower(), "--shards", str(spec.parallelism),
            "--batch-size", str(spec.batch_size), "--max-failed-rows", str(spec.max_failed_rows),
            "--providers", ",".join(p.lower() for p in spec.runtime.execution_providers)]
    if spec.input.format:
        args += ["--input-format", spec.input.format.lower()]
    for tensor, columns in spec.input.columns.items():
        args += ["--input-columns", f"{tensor}={','.join(columns)}"]
    if spec.input.id_column:
        args += ["--id-column", spec.input.id_column]
    if spec.runtime.intra_op_threads is not None:
        args += ["--intra-op-threads", str(spec.runtime.intra_op_threads)]
    return args

