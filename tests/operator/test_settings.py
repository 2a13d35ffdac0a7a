"""Operator settings and the CLI's flags.

Covers: defaults; values from KUBEINFER_* environment variables, typed;
flags win over the environment; invalid durations are refused; the CLI's
flags (built from the same table as the variables) parse into the settings it
runs with, over the environment's; the right-sizing settings (Prometheus URL,
usage step and intervals) and their checks.
"""

from __future__ import annotations

import kopf
import pytest

from kubeinfer_operator import cli, settings


def test_defaults():
    config = settings.load(env={})
    assert config.server_image == "kubeinfer/server:0.1.0"
    assert config.cluster_domain == "cluster.local"
    assert config.certificate_duration_seconds == 90 * 86400
    assert config.namespaces == ()


def test_environment_is_typed():
    config = settings.load(env={
        "KUBEINFER_SERVER_IMAGE": "reg/server:2",
        "KUBEINFER_CLUSTER_DOMAIN": "corp.local",
        "KUBEINFER_CERTIFICATE_DURATION_SECONDS": "7200",
        "KUBEINFER_RESYNC_SECONDS": "2.5",
        "KUBEINFER_NAMESPACES": "ml, serving",
    })
    assert config.server_image == "reg/server:2"
    assert config.cluster_domain == "corp.local"
    assert config.certificate_duration_seconds == 7200
    assert config.resync_seconds == 2.5
    assert config.namespaces == ("ml", "serving")


def test_flags_win_over_environment():
    config = settings.load({"server_image": "flag/image:1", "cluster_domain": None},
                           env={"KUBEINFER_SERVER_IMAGE": "env/image:1", "KUBEINFER_CLUSTER_DOMAIN": "env.local"})
    assert config.server_image == "flag/image:1"
    assert config.cluster_domain == "env.local"


@pytest.mark.parametrize("overrides", [
    {"certificate_duration_seconds": 60},
    {"certificate_duration_seconds": 86400, "ca_duration_seconds": 86400},
    {"resync_seconds": 0},
    {"prometheus_url": "prometheus:9090"},
    {"usage_step_seconds": 0},
    {"usage_step_seconds": 60, "usage_history_seconds": 30},
])
def test_invalid_settings_are_refused(overrides):
    with pytest.raises(ValueError):
        settings.load(overrides, env={})


def test_cli_flags():
    args = cli.parse_args(["--namespace", "a", "--namespace", "b", "--server-image", "x/y:1",
                           "--resync-seconds", "3", "--certificate-duration-seconds", "7200"])
    assert args.namespaces == ["a", "b"]
    assert args.server_image == "x/y:1"
    assert args.resync_seconds == 3.0
    assert args.certificate_duration_seconds == 7200
    config = settings.load(cli.flag_values(args), env={"KUBEINFER_NAMESPACES": "c", "KUBEINFER_CLUSTER_DOMAIN": "x.y"})
    assert config.namespaces == ("a", "b") and config.server_image == "x/y:1" and config.cluster_domain == "x.y"


def test_right_sizing_settings():
    config = settings.load(env={"KUBEINFER_PROMETHEUS_URL": "http://prometheus.monitoring:9090",
                                "KUBEINFER_USAGE_STEP_SECONDS": "15"})
    assert config.prometheus_url == "http://prometheus.monitoring:9090" and config.usage_step_seconds == 15.0
    assert settings.load(env={}).prometheus_url == ""  # no right-sizing data
    args = cli.parse_args(["--prometheus-url", "http://127.0.0.1:9090", "--usage-query-seconds", "10"])
    assert settings.load(cli.flag_values(args), env={}).usage_query_seconds == 10.0


def test_kopf_progress_lives_in_annotations():
    config = cli.operator_settings()
    assert isinstance(config.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(config.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert config.persistence.finalizer.startswith("kubeinfer.io/")
