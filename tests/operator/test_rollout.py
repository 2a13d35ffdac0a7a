"""A canary rollout's decisions (pure ``rollout.plan``), and the Deployments they become.

Covers: Replace rolls the one Deployment; a new revision under Canary keeps the
stable side (rebuilt from its own spec) and adds ``NAME-REVISION`` at the first
step's share, with and without the HPA; a step advances only after its pause
and one passed interval, never on inconclusive ones; failed intervals up to
failureLimit roll back with the figures, and the same revision is not tried
again; a canary whose pods do not serve is rolled back at once; promote scales
the canary up and, once all of it is available, relabels it the stable side;
abort, pause and resume; a spec back at the stable revision drops the canary;
the two Deployments' selectors keep their pods apart, and the revision names
the pods and the server's model_version.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from kubeinfer_operator import canary, conditions, naming, rollout
from kubeinfer_operator.builders.deployment import Placement, build_deployment, revision
from kubeinfer_operator.rollout import Judged, Side

NOW = dt.datetime(2026, 12, 2, 12, 0, 0, tzinfo=dt.UTC)
OWNER = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceDeployment", "name": "fraud", "uid": "u1",
         "controller": True, "blockOwnerDeletion": True}
CANARY = {"strategy": "Canary", "steps": [{"weight": 10, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 60}],
          "analysis": {"minRequests": 100, "failureLimit": 2}}
STABLE = Side("fraud", "oldrev0001", '{"model":{"uri":"s3://models/fraud/3/model.onnx"}}', replicas=10, available=10)


def _spec(make_spec, **extra):
    fields = {"model": {"uri": "s3://models/fraud/4/model.onnx"}, "replicas": 10, "rollout": CANARY}
    return make_spec(**{**fields, **extra})


def _judged(outcome: str, requests: int = 500, errors: int = 0, p99: float = 10.0) -> Judged:
    return Judged(canary.Verdict(outcome, f"{outcome} figures"), canary.Window(requests, errors, p99),
                  canary.Window(5000, 0, 9.0))


def _later(status: dict, seconds: float) -> dt.datetime:
    started = dt.datetime.strptime(status["stepStartedAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return started + dt.timedelta(seconds=seconds)


def _start(spec):
    return rollout.plan(spec, revision(spec), STABLE, None, {"phase": "Stable", "stableRevision": STABLE.revision},
                        None, None, NOW)


def test_replace_is_one_rolling_update(make_spec):
    spec = _spec(make_spec, rollout={"strategy": "Replace"})
    plan = rollout.plan(spec, revision(spec), STABLE, None, None, None, None, NOW)
    assert plan.targets == (rollout.Target("fraud", naming.STABLE, 10, current_spec=True),)
    assert plan.status is None


def test_a_new_revision_starts_a_canary_beside_the_stable_side(make_spec):
    spec = _spec(make_spec)
    plan = _start(spec)
    stable, new = plan.targets
    assert stable == rollout.Target("fraud", naming.STABLE, 9, current_spec=False)
    assert new == rollout.Target(f"fraud-{revision(spec)}", naming.CANARY, 1, current_spec=True)
    assert plan.status["phase"] == "Progressing" and plan.status["step"] == 1 and plan.status["weight"] == 10
    assert plan.status["canaryRevision"] == revision(spec) and plan.status["stableRevision"] == STABLE.revision
    assert plan.events[0][1] == "RolloutStarted"
    assert 0 < plan.recheck_seconds <= 30


def test_with_the_hpa_the_canary_is_sized_beside_the_stable_count(make_spec):
    spec = _spec(make_spec, replicas=None, autoscaling={"minReplicas": 2, "maxReplicas": 20})
    stable, new = _start(spec).targets
    assert stable.replicas is None, "the HPA keeps the stable side's count"
    assert new.replicas == canary.canary_beside(STABLE.replicas, 10) == 1


def test_steps_advance_after_the_pause_and_a_pass_only(make_spec):
    spec = _spec(make_spec)
    status = _start(spec).status
    rev = revision(spec)

    def step(status, judged, seconds):
        return rollout.plan(spec, rev, STABLE, None, status, judged, None, _later(status, seconds))

    waiting = step(status, _judged(canary.INCONCLUSIVE, requests=3), 120)
    assert waiting.status["step"] == 1 and "waiting for an interval" in waiting.status["message"]
    assert waiting.recheck_seconds == 30  # the pause is over: the next look is at the next interval's verdict
    early = step(waiting.status, _judged(canary.PASS), 50)
    assert early.status["step"] == 1 and early.status["passes"] == 1
    assert early.recheck_seconds == 10  # the pause's end comes before the next interval
    second = step(early.status, None, 61)
    assert second.status["step"] == 2 and second.status["weight"] == 50
    assert [t.replicas for t in second.targets] == [5, 5]
    assert second.status["lastAnalysis"]["verdict"] == "Pass" and second.status["lastAnalysis"]["requests"] == 500


def test_failed_intervals_roll_back_at_the_failure_limit(make_spec):
    spec = _spec(make_spec)
    rev = revision(spec)
    first = rollout.plan(spec, rev, STABLE, None, _start(spec).status, _judged(canary.FAIL, errors=50), None, NOW)
    assert first.status["phase"] == "Progressing" and first.status["failures"] == 1
    assert first.events[-1][:2] == ("Warning", "AnalysisFailed")
    second = rollout.plan(spec, rev, STABLE, None, first.status, _judged(canary.FAIL, errors=60), None, NOW)
    assert second.status["phase"] == "RolledBack"
    assert second.targets == (rollout.Target("fraud", naming.STABLE, 10, current_spec=False),)
    assert second.status["lastAnalysis"]["errorRate"] == 0.12
    assert second.status["history"][-1]["outcome"] == "RolledBack"
    assert second.events[-1][:2] == ("Warning", "RolledBack") and "Fail figures" in second.events[-1][2]
    again = rollout.plan(spec, rev, STABLE, None, second.status, None, None, NOW)
    assert again.status == second.status and len(again.targets) == 1, "the same revision is not tried again"
    old = make_spec(**json.loads(STABLE.source), replicas=10, rollout=CANARY)
    reverted = rollout.plan(old, revision(old), Side("fraud", revision(old), STABLE.source, 10, 10), None,
                            second.status, None, None, NOW)
    assert reverted.status["phase"] == "Stable", "the spec is back at what serves: nothing rolled back any more"
    changed = _spec(make_spec, model={"uri": "s3://models/fraud/5/model.onnx"})
    assert rollout.plan(changed, revision(changed), STABLE, None, second.status, None, None, NOW).status[
        "phase"] == "Progressing"


def test_a_canary_whose_pods_do_not_serve_is_rolled_back_at_once(make_spec):
    spec = _spec(make_spec)
    plan = rollout.plan(spec, revision(spec), STABLE, None, _start(spec).status, None, None, NOW,
                        broken="InvalidModel: not ONNX")
    assert plan.status["phase"] == "RolledBack" and "InvalidModel" in plan.status["message"]


def test_promotion_scales_up_then_relabels_the_canary(make_spec):
    spec = _spec(make_spec)
    rev, name = revision(spec), f"fraud-{revision(spec)}"
    promoting = rollout.plan(spec, rev, STABLE, None, _start(spec).status, None, "promote", NOW)
    assert promoting.clear_command and promoting.status["weight"] == 100
    assert promoting.targets[1] == rollout.Target(name, naming.CANARY, 10, current_spec=True)
    assert promoting.targets[0].replicas == STABLE.replicas, "the stable side serves until the canary is all up"
    half = Side(name, rev, "{}", replicas=10, available=6, track=naming.CANARY)
    assert rollout.plan(spec, rev, STABLE, half, promoting.status, None, None, NOW).status["phase"] == "Progressing"
    full = Side(name, rev, "{}", replicas=10, available=10, track=naming.CANARY)
    done = rollout.plan(spec, rev, STABLE, full, promoting.status, None, None, NOW)
    assert done.targets == (rollout.Target(name, naming.STABLE, 10, current_spec=True),)
    assert done.status["phase"] == "Promoted" and done.status["stableRevision"] == rev
    assert done.status["history"][-1]["outcome"] == "Promoted"
    assert ("Normal", "Promoted") == done.events[-1][:2]
    settled = rollout.plan(spec, rev, Side(name, rev, "{}", 10, 10), None, done.status, None, None, NOW)
    assert settled.status["phase"] == "Promoted" and len(settled.targets) == 1


def test_abort_pause_and_resume(make_spec):
    spec = _spec(make_spec)
    rev, status = revision(spec), _start(spec).status
    paused = rollout.plan(spec, rev, STABLE, None, {**status, "passes": 1}, None, "pause", _later(status, 600))
    assert paused.status["phase"] == "Paused" and paused.status["step"] == 1, "no step while paused"
    resumed = rollout.plan(spec, rev, STABLE, None, paused.status, None, "resume", _later(status, 600))
    assert resumed.status["phase"] == "Progressing" and resumed.status["step"] == 2
    aborted = rollout.plan(spec, rev, STABLE, None, resumed.status, None, "abort", NOW)
    assert aborted.status["phase"] == "RolledBack" and aborted.clear_command
    assert "abort" in aborted.status["message"]


def test_a_spec_back_at_the_stable_revision_drops_the_canary(make_spec):
    spec = _spec(make_spec)
    status = _start(spec).status
    old = make_spec(**json.loads(STABLE.source), replicas=10, rollout=CANARY)
    back = rollout.plan(old, revision(old), Side("fraud", revision(old), STABLE.source, 9, 9), None, status, None,
                        None, NOW)
    assert back.status["phase"] == "Stable" and back.status["history"][-1]["outcome"] == "Superseded"
    assert len(back.targets) == 1


@pytest.mark.parametrize("deployments,expected", [
    ([{"metadata": {"name": "fraud"}}], ("fraud", None)),
    ([{"metadata": {"name": "fraud", "labels": {naming.TRACK_LABEL: "stable"}}},
      {"metadata": {"name": "fraud-abc", "labels": {naming.TRACK_LABEL: "canary"}}}], ("fraud", "fraud-abc")),
    ([{"metadata": {"name": "fraud-abc", "labels": {naming.TRACK_LABEL: "stable"}}}], ("fraud-abc", None)),
])
def test_sides_are_found_by_their_track(deployments, expected):
    stable, canary_side = rollout.sides(deployments, "fraud")
    assert (stable.name if stable else None, canary_side.name if canary_side else None) == expected


def test_the_two_deployments_keep_their_pods_apart(make_spec):
    spec = _spec(make_spec)
    first = build_deployment(spec, OWNER)
    second = build_deployment(spec, OWNER, Placement(f"fraud-{revision(spec)}", naming.CANARY, 1, "{}"))
    assert first["spec"]["selector"]["matchLabels"] == naming.selector_labels("fraud")
    chosen = second["spec"]["selector"]["matchLabels"]
    assert chosen[naming.DEPLOYMENT_LABEL] == f"fraud-{revision(spec)}"
    labels = second["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in chosen.items())
    assert labels[naming.REVISION_LABEL] == revision(spec)
    env = {e["name"]: e.get("value") for e in second["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBEINFER_MODEL_VERSION"] == revision(spec)
    assert second["metadata"]["labels"][naming.TRACK_LABEL] == naming.CANARY
    assert second["metadata"]["annotations"][naming.SPEC_ANNOTATION] == "{}"


def test_the_revision_follows_the_pod_template_only(make_spec):
    base = _spec(make_spec)
    assert revision(_spec(make_spec, replicas=3)) == revision(base), "replicas are not the template"
    assert revision(_spec(make_spec, model={"uri": "s3://models/fraud/5/model.onnx"})) != revision(base)


def test_conditions_speak_of_the_stable_side_and_the_rollout(make_spec):
    spec = _spec(make_spec)
    rev = revision(spec)
    deployment = {"metadata": {"name": "fraud", "generation": 1}, "spec": {"replicas": 1},
                  "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                             "updatedReplicas": 1}}
    crashing = {"metadata": {"name": "c", "labels": {naming.REVISION_LABEL: rev}}, "status": {"containerStatuses": [
        {"name": "server", "ready": False, "restartCount": 3,
         "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
         "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "boom"}}}]}}
    progressing = {"phase": "Progressing", "canaryRevision": rev, "message": "Step 1/2 at 10%: waiting"}
    by_type = {c.type: c for c in conditions.desired_conditions(
        spec, conditions.Observed(deployment, [crashing]), progressing)}
    assert by_type["Ready"].status == "True"
    assert by_type["Degraded"].status == "False", "a canary's crash is the rollout's problem, not the service's"
    assert (by_type["Progressing"].status, by_type["Progressing"].reason) == ("True", "CanaryInProgress")
    assert rev in by_type["Progressing"].message
    rolled_back = {"phase": "RolledBack", "canaryRevision": rev, "stableRevision": "oldrev0001",
                   "message": f"Canary {rev} rolled back: error rate 12.00%"}
    degraded = {c.type: c for c in conditions.desired_conditions(
        spec, conditions.Observed(deployment, []), rolled_back)}["Degraded"]
    assert (degraded.status, degraded.reason) == ("True", "RolledBack") and "12.00%" in degraded.message
