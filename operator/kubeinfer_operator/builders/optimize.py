"""The optimize init step of a server pod: ``kubeinfer-server optimize`` on the fetched model (pure).

It runs after the fetch, on the file the server loads, and replaces it only
when the candidate is kept (``--in-place``), leaving a record beside it that
the server reports (the sha256 and the method). It gets the server
container's resources, providers, threads and batch size, so the speed it
measures is the speed the pod serves at. Its compact report is the
termination message the operator reads into ``status.optimization``.

``onReject: ServeOriginal`` exits 0 on a rejection (the fetched file stays);
``Fail`` lets it exit 3, so the pod never starts. Without validation data the
accuracy is not measured, and the spec asked for the method anyway: the
candidate is kept on its speed alone (``--accept-unvalidated``).
"""

from __future__ import annotations

from typing import Any

from kubeinfer_operator.builders import podparts
from kubeinfer_operator.spec import InferenceSpec, Optimization

OPTIMIZE_CONTAINER = "optimize"


def optimize_container(spec: InferenceSpec, path: str) -> dict[str, Any]:
    """The init container that optimizes the model at ``path`` in place."""
    assert spec.optimization is not None
    directory = podparts.model_dir(spec.model)
    container: dict[str, Any] = {
        "name": OPTIMIZE_CONTAINER,
        "image": spec.runtime.image,
        "command": ["kubeinfer-server"],
        "args": optimize_args(spec, spec.optimization, path),
        # Candidates and the quantizers' scratch files go beside the model (an emptyDir on disk),
        # not to the small in-memory /tmp.
        "env": [{"name": "TMPDIR", "value": directory}, *(dict(e) for e in spec.pod.env)],
        **podparts.store_credentials(spec.model),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": podparts.resources_with_gpu(spec.resources, spec.gpu),
        "securityContext": podparts.container_security(),
        "volumeMounts": [
            {"name": "model", "mountPath": directory},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return podparts.with_pull_policy(container, spec.runtime)


def optimize_args(spec: InferenceSpec, optimization: Optimization, path: str) -> list[str]:
    """``kubeinfer-server optimize`` as the spec asks, on the server's providers, threads and batch size."""
    args = ["optimize", path, path, "--in-place", "--method", optimization.method.lower(),
            "--providers", ",".join(p.lower() for p in spec.runtime.execution_providers),
            "--batch-size", str(max(1, spec.batching.max_batch_size)),
            "--max-degradation", repr(optimization.max_degradation),
            "--min-speedup", repr(optimization.min_speedup)]
    if spec.runtime.intra_op_threads is not None:
        args += ["--intra-op-threads", str(spec.runtime.intra_op_threads)]
    if optimization.calibration is not None:
        args += ["--calibration", optimization.calibration.uri,
                 "--calibration-samples", str(optimization.calibration.samples)]
    validation = optimization.validation
    if validation is None:
        args.append("--accept-unvalidated")
    else:
        args += ["--validation", validation.uri]
        if validation.label_column:
            args += ["--label-column", validation.label_column]
        if validation.metric:
            args += ["--metric", validation.metric.lower()]
    if not optimization.fail_on_reject:
        args.append("--exit-zero-on-reject")
    return args
