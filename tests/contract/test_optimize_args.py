"""The contract between the operator's optimize init step and ``kubeinfer-server optimize``.

Covers: the init container's arguments, fed to the server's real argument parser, give the
settings spec.optimization asks for (method, data, gates, onReject, the server's providers,
threads and batch size, in place on the file the server loads); the CLI's own defaults are
the operator's, and so the CRD's (tests/operator/test_defaults.py holds those equal).
"""

from __future__ import annotations

from typing import Any

import pytest

from kubeinfer_operator.builders.deployment import build_deployment, model_path
from kubeinfer_operator.defaults import DEFAULTS
from kubeinfer_operator.settings import Settings
from kubeinfer_operator.spec import parse
from kubeinfer_server.cli import build_parser, optimize_settings
from kubeinfer_server.optimize import OptimizeSettings

OWNER = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceDeployment", "name": "fraud", "uid": "u",
         "controller": True, "blockOwnerDeletion": True}
MODEL = {"uri": "s3://models/fraud/model.onnx"}
SPECS = {
    "dynamic": {"model": MODEL, "optimization": {"method": "Dynamic"}},
    "static, everything set": {
        "model": MODEL,
        "runtime": {"executionProviders": ["CPU"], "intraOpThreads": 3},
        "batching": {"maxBatchSize": 64},
        "optimization": {"method": "Static", "calibration": {"uri": "s3://data/calib.parquet", "samples": 128},
                         "validation": {"uri": "s3://data/valid.parquet", "labelColumn": "label", "metric": "Top1"},
                         "maxDegradation": 0.02, "minSpeedup": 1.25, "onReject": "Fail"},
    },
    "float16 on a GPU, no batching": {
        "model": MODEL, "runtime": {"executionProviders": ["CUDA", "CPU"]}, "gpu": {"count": 1},
        "batching": {"maxBatchSize": 0}, "optimization": {"method": "Float16"}},
}


def _settings(raw: dict[str, Any]) -> tuple[Any, OptimizeSettings, Any]:
    spec = parse("fraud", "ml", raw, Settings())
    pod = build_deployment(spec, OWNER)["spec"]["template"]["spec"]
    step = next(c for c in pod["initContainers"] if c["name"] == "optimize")
    args = build_parser({}).parse_args(step["args"])
    return spec, optimize_settings(args), args


@pytest.mark.parametrize("name", SPECS)
def test_the_init_step_runs_optimize_as_the_spec_says(name):
    spec, settings, args = _settings(SPECS[name])
    wanted = spec.optimization
    assert settings.model_in == settings.model_out == model_path(spec) and settings.in_place
    assert settings.method == wanted.method.lower()
    assert settings.providers == tuple(p.lower() for p in spec.runtime.execution_providers)
    assert settings.intra_op_threads == (spec.runtime.intra_op_threads or 0)
    assert settings.batch_size == max(1, spec.batching.max_batch_size)
    assert (settings.max_degradation, settings.min_speedup) == (wanted.max_degradation, wanted.min_speedup)
    assert settings.calibration == (wanted.calibration.uri if wanted.calibration else None)
    if wanted.calibration:
        assert settings.calibration_samples == wanted.calibration.samples
    validation = wanted.validation
    assert settings.validation == (validation.uri if validation else None)
    assert settings.accept_unvalidated == (validation is None)
    assert settings.label_column == (validation.label_column if validation else None)
    assert settings.metric == (validation.metric.lower() if validation and validation.metric else None)
    assert args.exit_zero_on_reject == (not wanted.fail_on_reject)
    assert args.termination_log is None  # the default: /dev/termination-log


def test_the_clis_defaults_are_the_crds():
    defaults = OptimizeSettings("in.onnx", "out.onnx", "dynamic")
    assert defaults.max_degradation == DEFAULTS["optimization.maxDegradation"]
    assert defaults.min_speedup == DEFAULTS["optimization.minSpeedup"]
    assert defaults.calibration_samples == DEFAULTS["optimization.calibration.samples"]
