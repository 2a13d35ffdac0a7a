"""Status and conditions computed from observed children (pure).

Covers: Ready/Available when every desired replica is available; rollout in
progress (Progressing=True, RolloutInProgress) until the Deployment controller
caught up and old pods are gone; WaitingForGPU naming the missing product and
resource from the scheduler's message; Unschedulable without a GPU;
ModelFetchFailed quoting the fetch's termination message; InvalidModel on the
server's first exit with the model loader's words; LoadingModel while the fetch
runs or the server warms up; image pull and crash loop problems;
ProgressDeadlineExceeded; ScaledToZero; InvalidSpec; ClientCANotFound;
a status without a spec must name what blocks it; lastTransitionTime kept while
a status holds; status fields (endpoint, selector, readiness text, autoscaling
text, certificate expiry).
"""

from __future__ import annotations

import datetime as dt

import pytest

from kubeinfer_operator.conditions import (
    Condition,
    Observed,
    Problem,
    StatusInputs,
    compute_status,
    merge_conditions,
    pod_problem,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=5)


def _deployment(replicas=2, ready=2, available=2, updated=2, current=2, generation=3, observed=3, conditions=()):
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": observed, "replicas": current, "readyReplicas": ready,
                   "availableReplicas": available, "updatedReplicas": updated, "conditions": list(conditions)},
    }


def _by_type(status):
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def _status(spec, observed, previous=None, now=NOW, **kw):
    return compute_status(StatusInputs("fraud", "ml", 7, spec, observed, **kw), previous or {}, now)


def _unschedulable(message):
    return {"metadata": {"name": "p"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]}}


def test_available(make_spec):
    status = _status(make_spec(replicas=2), Observed(_deployment()),
                     certificate_not_after=dt.datetime(2026, 5, 30, tzinfo=dt.UTC))
    assert _by_type(status) == {
        "Ready": ("True", "Available", "2/2 replicas serving fraud"),
        "Progressing": ("False", "Available", "Rollout complete: 2/2 replicas serving fraud"),
        "Degraded": ("False", "AsExpected", "No problem observed"),
    }
    assert status["observedGeneration"] == 7
    assert status["endpoint"] == "fraud.ml.svc:8001"
    assert status["headlessEndpoint"] == "fraud-headless.ml.svc:8001"
    assert status["selector"] == "app.kubernetes.io/name=kubeinfer-server,app.kubernetes.io/instance=fraud"
    assert (status["replicas"], status["readyReplicas"], status["readiness"]) == (2, 2, "2/2")
    assert status["autoscaling"] == "Off" and status["model"] == "fraud"
    assert status["certificateNotAfter"] == "2026-05-30T00:00:00Z"
    assert all(c["observedGeneration"] == 7 for c in status["conditions"])


def test_rollout_in_progress_while_old_pods_serve(make_spec):
    observed = Observed(_deployment(updated=1, current=3, generation=4, observed=4))
    conditions = _by_type(_status(make_spec(replicas=2), observed))
    assert conditions["Ready"][0:2] == ("True", "Available")
    assert conditions["Progressing"] == ("True", "RolloutInProgress", "1/2 replicas updated, 2 available")


def test_controller_not_caught_up_is_progressing(make_spec):
    conditions = _by_type(_status(make_spec(replicas=2), Observed(_deployment(generation=5, observed=4))))
    assert conditions["Progressing"][0:2] == ("True", "RolloutInProgress")


def test_nothing_ready_yet(make_spec):
    observed = Observed(_deployment(ready=0, available=0, updated=0, current=0, observed=2))
    conditions = _by_type(_status(make_spec(replicas=2), observed))
    assert conditions["Ready"] == ("False", "RolloutInProgress", "0/2 replicas ready")
    assert _by_type(_status(make_spec(), Observed(None)))["Ready"][0:2] == ("False", "RolloutInProgress")


def test_waiting_for_gpu_names_the_missing_product(make_spec):
    spec = make_spec(gpu={"count": 1, "product": "NVIDIA-B200"})
    pod = _unschedulable("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. "
                         "preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.")
    conditions = _by_type(_status(spec, Observed(_deployment(1, 0, 0, 1, 1), [pod])))
    status, reason, message = conditions["Ready"]
    assert (status, reason) == ("False", "WaitingForGPU")
    assert "no node matching nvidia.com/gpu.product=NVIDIA-B200" in message
    assert "didn't match Pod's node affinity/selector" in message
    assert conditions["Degraded"][0:2] == ("True", "WaitingForGPU")


def test_waiting_for_gpu_names_the_missing_resource(make_spec):
    spec = make_spec(gpu={"count": 8, "product": "NVIDIA-A10"})
    pod = _unschedulable("0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 2 node(s) didn't match "
                         "Pod's node affinity/selector.")
    problem = pod_problem(spec, [pod])
    assert problem.reason == "WaitingForGPU"
    assert "not enough free nvidia.com/gpu (8 per pod)" in problem.message


def test_unschedulable_without_gpu(make_spec):
    problem = pod_problem(make_spec(), [_unschedulable("0/3 nodes are available: 3 Insufficient cpu.")])
    assert problem.reason == "Unschedulable" and "Insufficient cpu" in problem.message


def test_model_fetch_failed_quotes_the_fetch(make_spec):
    pod = {"metadata": {"name": "p"}, "status": {"initContainerStatuses": [{
        "name": "fetch", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                     "message": "Traceback...\nfetch s3://models/fraud/3/model.onnx: not found\n"}}}]}}
    conditions = _by_type(_status(make_spec(), Observed(_deployment(1, 0, 0, 1, 1), [pod])))
    assert conditions["Ready"] == (
        "False", "ModelFetchFailed",
        "Fetching model s3://models/fraud/3/model.onnx failed: "
        "exit code 1: fetch s3://models/fraud/3/model.onnx: not found")
    assert conditions["Degraded"][1] == "ModelFetchFailed"


def test_fetch_failure_outranks_scheduling(make_spec):
    fetch = {"metadata": {"name": "a"}, "status": {"initContainerStatuses": [
        {"name": "fetch", "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}}
    problem = pod_problem(make_spec(), [_unschedulable("0/1 nodes are available"), fetch])
    assert problem.reason == "ModelFetchFailed" and "exit code 2: Error" in problem.message


def test_image_pull_and_crash_loop(make_spec):
    pull = {"metadata": {"name": "a"}, "status": {"containerStatuses": [
        {"name": "server", "image": "x/y:1", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}
    assert pod_problem(make_spec(), [pull]).reason == "ImagePullFailed"
    crash = {"metadata": {"name": "a"}, "status": {"containerStatuses": [
        {"name": "server", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
         "lastState": {"terminated": {"exitCode": 3, "message": "model is not ONNX"}}}]}}
    problem = pod_problem(make_spec(), [crash])
    assert problem.reason == "ServerCrashLoop" and "model is not ONNX" in problem.message


INVALID = ("2026-12-02 01:00:00,000 INFO kubeinfer_server: Event loop: uvloop\n"
           "2026-12-02 01:00:01,000 ERROR kubeinfer_server: Could not start: /models/fraud/model.onnx is not a "
           "loadable ONNX model: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model failed:Protobuf parsing "
           "failed.")


@pytest.mark.parametrize("state", ["state", "lastState"])
def test_invalid_model_on_the_first_exit(make_spec, state):
    server = {"name": "server", "ready": False, "restartCount": 1, "state": {"waiting": {"reason": "Error"}},
              state: {"terminated": {"exitCode": 1, "reason": "Error", "message": INVALID}}}
    problem = pod_problem(make_spec(), [{"metadata": {"name": "a"}, "status": {"containerStatuses": [server]}}])
    assert problem.reason == "InvalidModel"
    assert problem.message == ("The model s3://models/fraud/3/model.onnx is not a valid ONNX model: [ONNXRuntimeError]"
                               " : 7 : INVALID_PROTOBUF : Load model failed:Protobuf parsing failed.")
    crash = {**server, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": INVALID}}}
    assert pod_problem(make_spec(), [{"metadata": {"name": "a"}, "status": {"containerStatuses": [crash]}}]).reason \
        == "InvalidModel", "the model's fault outranks the crash loop it causes"


def test_loading_model_while_fetching_then_warming_up(make_spec):
    observed = _deployment(ready=0, available=0)
    fetching = {"metadata": {"name": "a"}, "status": {"initContainerStatuses": [
        {"name": "fetch", "state": {"running": {}}}], "containerStatuses": [
        {"name": "server", "ready": False, "state": {"waiting": {"reason": "PodInitializing"}}}]}}
    ready = _by_type(_status(make_spec(replicas=2), Observed(observed, [fetching])))["Ready"]
    assert ready == ("False", "LoadingModel", "Fetching the model from s3://models/fraud/3/model.onnx; "
                                              "0/2 replicas ready")
    with_figures = Observed(observed, [fetching], fetched={"a": "12.0 of 48.0 MiB (25%)"})
    ready = _by_type(_status(make_spec(replicas=2), with_figures))["Ready"]
    assert ready[2] == ("Fetching the model from s3://models/fraud/3/model.onnx: 12.0 of 48.0 MiB (25%); "
                        "0/2 replicas ready")
    warming = {"metadata": {"name": "a"}, "status": {"initContainerStatuses": [
        {"name": "fetch", "state": {"terminated": {"exitCode": 0}}}], "containerStatuses": [
        {"name": "server", "ready": False, "state": {"running": {}}}]}}
    ready = _by_type(_status(make_spec(replicas=2), Observed(observed, [warming])))["Ready"]
    assert ready[:2] == ("False", "LoadingModel") and "Loading and warming up the model fraud" in ready[2]


def test_a_container_the_runtime_cannot_start_is_server_crash_loop_not_a_fetch_failure(make_spec):
    # What the kubelet reports when the image lacks the command (here: the fetch init container).
    message = ('failed to create containerd task: failed to create shim task: OCI runtime create failed: '
               'exec: "kubeinfer-server": executable file not found in $PATH')
    fetch = {"name": "fetch", "image": "localhost/kubeinfer/pause:3.10", "restartCount": 1,
             "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 128, "reason": "StartError", "message": message}}}
    problem = pod_problem(make_spec(), [{"metadata": {"name": "a"}, "status": {"initContainerStatuses": [fetch]}}])
    assert problem.reason == "ServerCrashLoop"
    assert "fetch container of image localhost/kubeinfer/pause:3.10 cannot start" in problem.message
    assert "executable file not found" in problem.message


def test_a_restarted_server_not_ready_yet_is_degraded_until_it_serves(make_spec):
    restarting = {"name": "server", "ready": False, "restartCount": 1, "state": {"running": {}},
                  "lastState": {"terminated": {"exitCode": 137, "reason": "Error"}}}
    pod = {"metadata": {"name": "a"}, "status": {"containerStatuses": [restarting]}}
    problem = pod_problem(make_spec(), [pod])
    assert problem.reason == "ServerRestarted"
    assert "exit code 137, signal 9: Error" in problem.message and "1 restarts" in problem.message
    serving = {**restarting, "ready": True}
    assert pod_problem(make_spec(), [{"metadata": {"name": "a"}, "status": {"containerStatuses": [serving]}}]) is None


def test_terminating_pods_are_ignored(make_spec):
    pod = _unschedulable("0/3 nodes are available")
    pod["metadata"]["deletionTimestamp"] = "2026-03-01T12:00:00Z"
    assert pod_problem(make_spec(), [pod]) is None


def test_progress_deadline_exceeded_is_degraded(make_spec):
    deadline = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "fraud-1" has timed out progressing.'}
    observed = Observed(_deployment(ready=1, available=1, updated=1, conditions=[deadline]))
    conditions = _by_type(_status(make_spec(replicas=2), observed))
    assert conditions["Degraded"][0:2] == ("True", "ProgressDeadlineExceeded")
    assert conditions["Ready"][0:2] == ("False", "ProgressDeadlineExceeded")


def test_scaled_to_zero(make_spec):
    conditions = _by_type(_status(make_spec(replicas=0), Observed(_deployment(0, 0, 0, 0, 0))))
    assert conditions["Ready"][0:2] == ("False", "ScaledToZero")


def test_invalid_spec():
    blocked = Problem("InvalidSpec", "spec.replicas and spec.autoscaling must not both be set")
    status = compute_status(StatusInputs("fraud", "ml", 2, None, blocked=blocked), {}, NOW)
    conditions = _by_type(status)
    assert conditions["Ready"] == ("False", "InvalidSpec", "spec.replicas and spec.autoscaling must not both be set")
    assert conditions["Degraded"][0:2] == ("True", "InvalidSpec")
    assert "model" not in status


def test_autoscaling_text_and_live_replicas(make_spec):
    spec = make_spec(autoscaling={"minReplicas": 2, "maxReplicas": 10, "targetQueueDepth": 8})
    status = _status(spec, Observed(_deployment(replicas=4, ready=3, available=3, updated=4, current=4)))
    assert status["autoscaling"] == "2-10 @ queue 8"
    assert status["readiness"] == "3/4"


def test_transition_time_moves_only_with_status(make_spec):
    first = _status(make_spec(replicas=2), Observed(_deployment(ready=1, available=1)))
    second = _status(make_spec(replicas=2), Observed(_deployment(ready=1, available=1, updated=1)), first, LATER)
    assert first["conditions"] == [dict(c, lastTransitionTime=c["lastTransitionTime"]) for c in first["conditions"]]
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times["Ready"] == "2026-03-01T12:00:00Z"
    third = _status(make_spec(replicas=2), Observed(_deployment()), second, LATER)
    assert {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}["Ready"] == "2026-03-01T12:05:00Z"


def test_same_inputs_same_status(make_spec):
    spec = make_spec(replicas=2)
    first = _status(spec, Observed(_deployment()))
    assert _status(spec, Observed(_deployment()), first, LATER) == first


def test_merge_conditions_shapes_api_conditions():
    merged = merge_conditions([], [Condition("Ready", "True", "Available", "ok")], 3, NOW)
    assert merged == [{"type": "Ready", "status": "True", "reason": "Available", "message": "ok",
                       "observedGeneration": 3, "lastTransitionTime": "2026-03-01T12:00:00Z"}]


def test_missing_client_ca_blocks_with_its_own_reason(make_spec):
    spec = make_spec(tls={"mode": "Mutual", "clientCASecretName": "corp-ca"})
    blocked = Problem("ClientCANotFound", "Secret ml/corp-ca with a ca.crt key was not found")
    status = compute_status(StatusInputs("fraud", "ml", 1, spec, blocked=blocked), {}, NOW)
    conditions = _by_type(status)
    assert conditions["Ready"] == ("False", "ClientCANotFound", "Secret ml/corp-ca with a ca.crt key was not found")
    assert conditions["Degraded"][0:2] == ("True", "ClientCANotFound")
    assert status["model"] == "fraud"


def test_a_status_without_a_spec_must_say_what_blocks_it():
    with pytest.raises(ValueError, match="needs the problem that blocks it"):
        StatusInputs("fraud", "ml", 1, None)


def test_a_gpu_provider_asked_and_cpu_served_is_degraded_but_ready(make_spec):
    spec = make_spec(replicas=2, runtime={"executionProviders": ["CUDA", "CPU"]})
    served = {"fraud-a": "CUDAExecutionProvider,CPUExecutionProvider", "fraud-b": "CPUExecutionProvider"}
    conditions = _by_type(_status(spec, Observed(_deployment(), providers=served)))
    assert conditions["Ready"][:2] == ("True", "Available")
    status, reason, message = conditions["Degraded"]
    assert (status, reason) == ("True", "ProviderFallback")
    assert "Asked for CUDA first, but pod fraud-b runs the model on CPUExecutionProvider" in message
    on_gpu = {"fraud-a": "CUDAExecutionProvider,CPUExecutionProvider"}
    assert _by_type(_status(spec, Observed(_deployment(), providers=on_gpu)))["Degraded"][0] == "False"
