"""Fixtures for the chart tests (helpers live in chart/chartkit.py).

- ``helm``: runs the project's helm binary (built by ``make cluster-build``) with
  private cache/config dirs; tests that need it skip when it is not built
  (fail under CI=true, as the cluster fixture does).
- ``render(values=..., api_versions=...)``: ``helm template`` of the chart, as
  a list of objects.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
import yaml

import localcluster
from chart.chartkit import CHART, value_args
from support.reports import on_failure


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory):
    binary = localcluster.bin_dir() / "helm"
    if not binary.exists():
        msg = f"helm not built ({binary} missing): run make cluster-build"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}
    env.pop("KUBECONFIG", None)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    return run


@pytest.fixture(scope="session")
def render(helm):
    def run(values: dict[str, Any] | None = None, api_versions: tuple[str, ...] = (), release: str = "kubeinfer",
            namespace: str = "kubeinfer-system", crds: bool = False) -> list[dict[str, Any]]:
        args = ["template", release, str(CHART), "--namespace", namespace, *value_args(values)]
        args += [f"--api-versions={v}" for v in api_versions]
        if crds:
            args.append("--include-crds")
        return [o for o in yaml.safe_load_all(helm(*args).stdout) if o]

    return run


@on_failure("install")
def _operator_logs(install) -> list[tuple[str, str]]:
    """A failing test that ran the operator gets the operator's log in its report."""
    return [("kubeinfer-operator log (tail)", run.log()[-8000:]) for run in getattr(install, "runs", [])]
