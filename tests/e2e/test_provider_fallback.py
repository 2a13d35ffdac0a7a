"""End to end: a server that asked for CUDA and got CPU says so (issue 17).

The server image is the CPU build: its onnxruntime has no CUDA provider, so a
spec that asks for ``[CUDA, CPU]`` is served on CPU. The operator reads what the
ready pod's server reports (``kubeinfer_model_info{providers}`` on its metrics
port): the InferenceDeployment is Ready (it serves) and Degraded with
``ProviderFallback``, naming the pod and the provider it got, and a Warning
Event says the same.
"""

from __future__ import annotations

import pytest

from e2e.test_serving import apply, condition, infd
from e2ekit.clients import get_json

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


def test_asked_for_cuda_and_got_cpu(cluster, stack, installed):
    ns, name = installed.apps, "fallback"
    apply(cluster, infd(name, ns, stack.store.url("mlp.onnx"), replicas=1,
                        runtime={"executionProviders": ["CUDA", "CPU"]}))
    try:
        cluster.wait_for("Ready", lambda: condition(cluster, ns, name).get("status") == "True", timeout=120)
        degraded = cluster.wait_for("Degraded ProviderFallback", lambda: (
            found if (found := condition(cluster, ns, name, "Degraded")).get("reason") == "ProviderFallback"
            else None), timeout=60)
        assert degraded["status"] == "True"
        assert "Asked for CUDA first" in degraded["message"] and "CPUExecutionProvider" in degraded["message"]
        events = get_json(cluster, "events", "-n", ns, "--field-selector",
                          f"involvedObject.kind=InferenceDeployment,involvedObject.name={name}")["items"]
        assert any(e["type"] == "Warning" and e["reason"] == "ProviderFallback" for e in events), events
    finally:  # the node is shared by the whole e2e session: free its CPU and memory for the next tests
        cluster.kubectl("delete", "infd", name, "-n", ns, "--wait=true", "--timeout=60s", check=False, timeout=90)
