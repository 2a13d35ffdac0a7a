"""End to end: what the real kubelet reports about a server that cannot run becomes the status.

  * an image that was never imported (there is no registry): ImagePullFailed;
  * a model file that is not ONNX, and one cut short: the server exits at start, and
    the status says InvalidModel with ONNX Runtime's words on the first exit, before
    the kubelet's crash-loop back-off;
  * an image without the ``kubeinfer-server`` command (the pause image): the runtime
    cannot start the container, ServerCrashLoop with the runtime's message;
  * a server container killed with SIGKILL: the kubelet restarts it, the
    InferenceDeployment says Degraded (ServerRestarted, exit code 137), then Ready
    and not Degraded once the restarted server serves again.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from e2e.test_serving import apply, condition, infd
from e2ekit.clients import get_json

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


def reason_is(cluster, ns: str, name: str, reason: str, kind: str = "Ready"):
    return lambda: (lambda c: c if c.get("reason") == reason else None)(condition(cluster, ns, name, kind))


def test_an_image_that_cannot_be_pulled_is_image_pull_failed(cluster, stack, installed):
    ns = installed.apps
    apply(cluster, infd("noimage", ns, stack.store.url("mlp.onnx"), replicas=1,
                        runtime={"image": "kubeinfer/server:not-built"}))
    cond = cluster.wait_for("Ready=False ImagePullFailed", reason_is(cluster, ns, "noimage", "ImagePullFailed"),
                            timeout=90)
    assert "kubeinfer/server:not-built" in cond["message"]
    assert condition(cluster, ns, "noimage", "Degraded")["reason"] == "ImagePullFailed"


def test_a_model_that_does_not_load_is_invalid_model_on_the_first_exit(cluster, stack, installed):
    ns = installed.apps
    (stack.store_dir / "broken.onnx").write_bytes(b"this is not an ONNX model")
    whole = (stack.store_dir / "mlp.onnx").read_bytes()
    (stack.store_dir / "truncated.onnx").write_bytes(whole[: len(whole) // 2])
    for name in ("broken", "truncated"):
        apply(cluster, infd(name, ns, stack.store.url(f"{name}.onnx"), replicas=1))
    for name in ("broken", "truncated"):
        cond = cluster.wait_for(f"{name}: Ready=False InvalidModel", reason_is(cluster, ns, name, "InvalidModel"),
                                timeout=120)
        assert f"{name}.onnx is not a valid ONNX model: " in cond["message"], cond
        assert "ONNXRuntimeError" in cond["message"] or "Protobuf" in cond["message"], cond
        pods = get_json(cluster, "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={name}")["items"]
        (server,) = pods[0]["status"]["containerStatuses"]
        assert server["restartCount"] <= 2, "said only after the back-off"
        assert condition(cluster, ns, name, "Degraded")["reason"] == "InvalidModel"


def test_an_image_without_the_command_is_server_crash_loop(cluster, stack, installed):
    from localcluster import node as real_node
    ns = installed.apps
    pause = real_node.image_named(real_node.built_images(), "pause")
    apply(cluster, infd("nocommand", ns, stack.store.url("mlp.onnx"), replicas=1, runtime={"image": pause}))
    cond = cluster.wait_for("Ready=False ServerCrashLoop", reason_is(cluster, ns, "nocommand", "ServerCrashLoop"),
                            timeout=120)
    assert "cannot start" in cond["message"] and "kubeinfer-server" in cond["message"], cond


def _server_pid(cluster, ns: str, pod: str) -> int:
    node = cluster.node
    ids = node.crictl("ps", "--name", "^server$", "--label", f"io.kubernetes.pod.name={pod}",
                      "--label", f"io.kubernetes.pod.namespace={ns}", "-q").stdout.split()
    assert len(ids) == 1, ids
    return json.loads(node.crictl("inspect", ids[0]).stdout)["info"]["pid"]


def test_a_sigkilled_server_is_restarted_and_the_deployment_recovers(cluster, stack, installed):
    ns, name = installed.apps, "killed"
    apply(cluster, infd(name, ns, stack.store.url("mlp.onnx"), replicas=1))
    cluster.wait_for("Ready", reason_is(cluster, ns, name, "Available"), timeout=120)
    pod = get_json(cluster, "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={name}")["items"][0]
    os.kill(_server_pid(cluster, ns, pod["metadata"]["name"]), signal.SIGKILL)
    t0 = time.monotonic()
    degraded = cluster.wait_for("Degraded=True ServerRestarted",
                                reason_is(cluster, ns, name, "ServerRestarted", "Degraded"), timeout=60, interval=0.2)
    assert degraded["status"] == "True" and "exit code 137, signal 9" in degraded["message"], degraded
    cluster.wait_for("Ready=True again", reason_is(cluster, ns, name, "Available"), timeout=90)
    assert condition(cluster, ns, name, "Degraded")["status"] == "False"
    restarted = get_json(cluster, "pod", pod["metadata"]["name"], "-n", ns)["status"]["containerStatuses"][0]
    assert restarted["restartCount"] == 1
    print(f"SIGKILL -> Available again in {time.monotonic() - t0:.1f}s")
