"""The contract between the operator and the server: the ``KUBEINFER_*`` variables.

The operator configures server pods through environment variables only; the
server reads them through its own table of flags (``settings.SERVE_FLAGS``).
Covers: the container env the operator builds, fed to the server's real
argument parser, gives the settings the spec asks for, and names no variable
the server would ignore; the server's own defaults equal the operator's, and
so the CRD's (a pod started without a variable behaves as the spec's default
says); the flag
table in docs/server-contract.md lists exactly the server's flags and
variables; the operator's names of the ONNX Runtime providers are the server's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from kubeinfer_operator.builders.deployment import server_env
from kubeinfer_operator.defaults import DEFAULTS
from kubeinfer_operator.naming import ORT_PROVIDERS
from kubeinfer_operator.settings import Settings
from kubeinfer_operator.spec import PROVIDERS, parse
from kubeinfer_server.batcher import BatchingConfig
from kubeinfer_server.cli import build_parser, serve_settings
from kubeinfer_server.model import PROVIDER_NAMES
from kubeinfer_server.settings import SERVE_FLAGS, SERVE_FLAGS_BY_ENV, ServeSettings

REPO = Path(__file__).resolve().parents[2]
CONTRACT_DOC = REPO / "docs" / "server-contract.md"

SPECS = {
    "defaults": {"model": {"uri": "s3://models/fraud/model.onnx"}},
    "everything set": {
        "model": {"name": "scorer", "uri": "https://models.example/fraud.onnx", "sha256": "a" * 64},
        "runtime": {"executionProviders": ["CUDA", "CPU"], "intraOpThreads": 3, "instances": 2,
                    "drainGraceSeconds": 45, "maxConnectionAgeSeconds": 600, "workers": 3,
                    "maxMessageBytes": 8388608, "accessLogSampleRate": 0.1},
        "batching": {"maxBatchSize": 64, "maxQueueDelayMicroseconds": 500, "preferredBatchSizes": [16, 64],
                     "maxQueueSize": 99},
        "tls": {"mode": "Mutual", "clients": [{"name": "checkout"}, {"name": "risk"}],
                "allowedClients": ["checkout"]},
    },
    "plaintext": {"model": {"uri": "pvc://models/fraud/3/model.onnx"}, "tls": {"mode": "Disabled"}},
}


def _pod_settings(raw_spec: dict[str, Any]) -> tuple[Any, dict[str, str], ServeSettings]:
    spec = parse("fraud", "ml", raw_spec, Settings())
    env = dict(server_env(spec))
    return spec, env, serve_settings(build_parser(env).parse_args(["serve"]))


@pytest.mark.parametrize("name", SPECS)
def test_the_operators_env_gives_the_server_the_specs_settings(name):
    spec, env, settings = _pod_settings(SPECS[name])
    workers = build_parser(env).parse_args(["serve"]).workers  # a process count, not a ServeSettings field
    assert set(env) <= set(SERVE_FLAGS_BY_ENV), "a variable the server does not read"
    (model,) = settings.models
    assert (model.name, model.path) == (spec.model.name, env["KUBEINFER_MODELS"].split("=", 1)[1])
    assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (8000, 8001, 8002)
    batching = settings.batching
    assert (batching.max_batch_size, batching.max_queue_delay_us, batching.preferred_batch_sizes,
            batching.max_queue_size, batching.instances) == (
        spec.batching.max_batch_size, spec.batching.max_queue_delay_microseconds,
        spec.batching.preferred_batch_sizes, spec.batching.max_queue_size, spec.runtime.instances)
    options = settings.model_options
    assert options.providers == tuple(p.lower() for p in spec.runtime.execution_providers)
    assert options.intra_op_threads == (spec.runtime.intra_op_threads or 0)
    assert options.instances == spec.runtime.instances
    assert settings.grace_seconds == spec.runtime.drain_grace_seconds
    assert settings.max_connection_age_seconds == spec.runtime.max_connection_age_seconds
    assert settings.max_message_bytes == spec.runtime.max_message_bytes
    assert settings.access_log_sample_rate == spec.runtime.access_log_sample_rate
    assert workers == spec.runtime.workers
    assert settings.shutdown_delay_seconds > 0
    assert (settings.tls is not None) == spec.tls.enabled
    if settings.tls is not None:
        assert (settings.tls.client_ca is not None) == spec.tls.mutual
    assert settings.allowed_clients == frozenset(spec.tls.allowed_clients)


def test_the_servers_defaults_are_the_crds():
    """The server's defaults, against the operator's, which tests/operator/test_defaults.py
    holds to the CRD's."""
    batching, flags = BatchingConfig(), {flag.name: flag.default for flag in SERVE_FLAGS}
    assert batching.max_batch_size == DEFAULTS["batching.maxBatchSize"]
    assert batching.max_queue_delay_us == DEFAULTS["batching.maxQueueDelayMicroseconds"]
    assert batching.max_queue_size == DEFAULTS["batching.maxQueueSize"]
    assert batching.instances == DEFAULTS["runtime.instances"]
    assert flags["providers"] == tuple(p.lower() for p in DEFAULTS["runtime.executionProviders"])
    assert flags["grace-seconds"] == DEFAULTS["runtime.drainGraceSeconds"]
    assert flags["max-connection-age-seconds"] == DEFAULTS["runtime.maxConnectionAgeSeconds"]
    assert flags["workers"] == DEFAULTS["runtime.workers"]
    assert flags["max-message-bytes"] == DEFAULTS["runtime.maxMessageBytes"]
    assert flags["access-log-sample-rate"] == DEFAULTS["runtime.accessLogSampleRate"]


def test_the_contract_doc_lists_every_flag_and_variable():
    rows = re.findall(r"^\| `--([a-z-]+)[^|]*\| `(KUBEINFER_[A-Z_]+)`", CONTRACT_DOC.read_text(), re.M)
    documented = dict(rows)
    assert documented == {flag.name: flag.env for flag in SERVE_FLAGS}


def test_the_operators_provider_names_are_the_servers():
    assert set(ORT_PROVIDERS) == set(PROVIDERS)
    assert {k.lower(): v for k, v in ORT_PROVIDERS.items()} == PROVIDER_NAMES
