"""spec.rightSizing, status.recommendation and the in-place resizes (``spec``, ``rightsizing``, ``conditions``).

Covers: the parser's defaults, modes and clamps (min at most max, positive
quantities), InPlace refused without cpu and memory in resources, mapped onto
the recommender's policy in cores and bytes; the CRD's rules for the same;
quantities as Kubernetes writes them; a first recommendation is written with
its basis and an Event; a settled one stays to the byte (within the margin, or
beyond it but too soon), also through a JSON round trip and compute_status, so
a resync writes nothing; beyond the margin after the interval it is replaced,
the Event saying what it was; clamps that changed under it replace it at once;
too few samples, no usage source, or a failed read keep the current one and the
condition says why; the resizes: ready pods off by more than the margin get
requests at the recommendation and limits at their old ratio (the QoS class
stays), pods not ready, leaving, mid-resize, within the margin or resized too
recently are left alone; the reconcile's step: nothing when Off, the reason
without a Prometheus.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from kubeinfer_operator import conditions, rightsizer, rightsizing
from kubeinfer_operator.recommender import MIN_CHANGE_INTERVAL_SECONDS, Policy, Sample
from kubeinfer_operator.spec import SpecError

MIB = 2**20
NOW = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.UTC)
CRD = Path(__file__).resolve().parents[2] / "crds" / "kubeinfer.io_inferencedeployments.yaml"


def usage_of(cpu: float, memory: float, count: int = 240, seed: int = 0) -> rightsizing.Measured:
    rng = np.random.default_rng(seed)
    return rightsizing.Measured(samples=tuple(
        Sample(NOW.timestamp() - 30 * (count - i), cpu + rng.uniform(-0.01, 0.01), memory + rng.uniform(-1, 1) * MIB)
        for i in range(count)))


def round_trip(value):
    """What the API server gives back of a status written as JSON."""
    return json.loads(json.dumps(value))


# ---- spec.rightSizing ----

def test_off_by_default_and_mapped_onto_the_policy(make_spec):
    assert not make_spec().right_sizing.enabled
    sizing = make_spec(rightSizing={"mode": "Recommend", "cpu": {"min": "500m", "max": 4},
                                    "memory": {"percentile": 0.99, "max": "2Gi"}, "margin": 0.2,
                                    "minSamples": 50}).right_sizing
    assert sizing.enabled and not sizing.in_place
    assert sizing.policy == Policy(cpu_percentile=0.9, memory_percentile=0.99, cpu_min=0.5, cpu_max=4.0,
                                   memory_min=256 * MIB, memory_max=2 * 2**30, margin=0.2, min_samples=50)


@pytest.mark.parametrize("right_sizing, words", [
    ({"mode": "Auto"}, "rightSizing.mode must be one of Off, Recommend, InPlace"),
    ({"mode": False}, 'quote "Off"'),
    ({"cpu": {"min": "2", "max": "1"}}, "rightSizing.cpu.min must be at most rightSizing.cpu.max"),
    ({"memory": {"min": "0"}}, "rightSizing.memory.min must be a positive quantity"),
    ({"cpu": {"max": "eight"}}, "rightSizing.cpu.max must be a positive quantity"),
    ({"cpu": {"percentile": 0.3}}, "rightSizing.cpu.percentile must be a number from 0.5 to 1"),
    ({"margin": 1.5}, "rightSizing.margin must be a number from 0 to 1"),
    ({"minSamples": 0}, "minSamples must be an integer from 1"),
])
def test_bad_right_sizing_is_refused(make_spec, right_sizing, words):
    with pytest.raises(SpecError, match=words):
        make_spec(rightSizing=right_sizing)


def test_in_place_needs_cpu_and_memory_in_resources(make_spec):
    assert make_spec(rightSizing={"mode": "InPlace"}).right_sizing.in_place  # the default requests name both
    assert make_spec(rightSizing={"mode": "InPlace"}, resources={"limits": {"cpu": "1", "memory": "1Gi"}})
    with pytest.raises(SpecError, match="QoS class cannot change in place"):
        make_spec(rightSizing={"mode": "InPlace"}, resources={"requests": {"cpu": "1"}})


def test_the_crd_says_the_same():
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec, status = schema["properties"]["spec"], schema["properties"]["status"]["properties"]
    sizing = spec["properties"]["rightSizing"]["properties"]
    assert sizing["mode"]["enum"] == ["Off", "Recommend", "InPlace"] and sizing["mode"]["default"] == "Off"
    for what in ("cpu", "memory"):
        rules = [r["message"] for r in sizing[what]["x-kubernetes-validations"]]
        assert rules == [f"rightSizing.{what}.min must be at most rightSizing.{what}.max",
                         f"rightSizing.{what}.min must be more than 0"]
    assert any("InPlace" in r["rule"] and "QoS" in r["message"] for r in spec["x-kubernetes-validations"])
    basis = status["recommendation"]["properties"]["basis"]["properties"]
    assert set(status["recommendation"]["properties"]) == {"cpu", "memory", "intraOpThreads", "basis", "at"}
    assert set(basis) == {"samples", "windowSeconds", "cpuPercentile", "memoryPeak", "margin", "clampedBy"}


# ---- status.recommendation ----

@pytest.mark.parametrize("cores, text", [(1.5, "1500m"), (2.0, "2"), (0.0001, "1m"), (0.25, "250m")])
def test_cpu_as_a_quantity(cores, text):
    assert rightsizing.cpu_quantity(cores) == text


@pytest.mark.parametrize("size, text", [(900 * MIB, "900Mi"), (2 * 2**30, "2Gi"), (900 * MIB + 1, "901Mi")])
def test_memory_as_a_quantity(size, text):
    assert rightsizing.memory_quantity(size) == text


def test_a_first_recommendation_is_written_with_its_basis_and_an_event():
    decided = rightsizing.decide(Policy(), usage_of(1.3, 800 * MIB), None, NOW)
    found = decided.recommendation
    assert found is not None and found["at"] == "2026-12-02T10:00:00Z"
    assert found["cpu"].endswith("m") and found["memory"].endswith("Mi") and found["intraOpThreads"] == 2
    assert found["basis"]["samples"] == 240 and found["basis"]["windowSeconds"] == 239 * 30
    assert found["basis"]["margin"] == 0.15 and "clampedBy" not in found["basis"]  # only when a clamp decided
    assert decided.condition[:2] == ("True", rightsizing.RECOMMENDED)
    assert decided.event is not None and decided.event[1].startswith(f"Recommended cpu {found['cpu']}, memory")
    assert round_trip(found) == found


def test_a_settled_recommendation_stays_to_the_byte():
    first = round_trip(rightsizing.decide(Policy(), usage_of(1.3, 800 * MIB), None, NOW).recommendation)
    later = NOW + dt.timedelta(hours=1)
    close = rightsizing.decide(Policy(), usage_of(1.4, 850 * MIB, seed=1), first, later)  # within 15%
    assert close.recommendation == first and close.event is None
    too_soon = NOW + dt.timedelta(seconds=MIN_CHANGE_INTERVAL_SECONDS - 1)
    assert rightsizing.decide(Policy(), usage_of(3.0, 800 * MIB), first, too_soon).recommendation == first


def test_a_settled_status_is_computed_unchanged(make_spec):
    spec = make_spec(rightSizing={"mode": "Recommend"})
    decided = rightsizing.decide(Policy(), usage_of(1.3, 800 * MIB), None, NOW)

    def status(previous, sized, now):
        inputs = conditions.StatusInputs("fraud", "ml", 1, spec, recommendation=sized.recommendation,
                                         recommendation_condition=sized.condition)
        return conditions.compute_status(inputs, previous, now)

    written = round_trip(status({}, decided, NOW))
    assert written["recommendation"] == decided.recommendation
    assert {c["type"]: c["reason"] for c in written["conditions"]}["RecommendationProvided"] == "Recommended"
    later = NOW + dt.timedelta(hours=2)
    again = rightsizing.decide(Policy(), usage_of(1.3, 800 * MIB, seed=2), written["recommendation"], later)
    assert status(written, again, later) == written


def test_beyond_the_margin_after_the_interval_it_is_replaced():
    first = round_trip(rightsizing.decide(Policy(), usage_of(1.3, 800 * MIB), None, NOW).recommendation)
    later = NOW + dt.timedelta(seconds=MIN_CHANGE_INTERVAL_SECONDS)
    decided = rightsizing.decide(Policy(), usage_of(3.0, 800 * MIB), first, later)
    assert decided.recommendation is not None and decided.recommendation["at"] == "2026-12-02T10:10:00Z"
    assert decided.event is not None and f"was cpu {first['cpu']}, memory {first['memory']}" in decided.event[1]


def test_clamps_that_changed_under_it_replace_it_at_once():
    first = round_trip(rightsizing.decide(Policy(), usage_of(0.5, 800 * MIB), None, NOW).recommendation)
    raised = Policy(cpu_min=1.0)
    decided = rightsizing.decide(raised, usage_of(0.5, 800 * MIB), first, NOW + dt.timedelta(seconds=1))
    assert decided.recommendation is not None and decided.recommendation["cpu"] == "1"
    assert decided.recommendation["basis"]["clampedBy"] == ["cpu.min"]


def test_without_a_new_one_the_current_stays_and_the_condition_says_why():
    few = rightsizing.decide(Policy(min_samples=500), usage_of(1.3, 800 * MIB), None, NOW)
    assert few.recommendation is None and few.event is None
    assert few.condition[:2] == ("False", rightsizing.COLLECTING_USAGE) and "500" in few.condition[2]
    current = round_trip(rightsizing.decide(Policy(), usage_of(1.3, 800 * MIB), None, NOW).recommendation)
    failed = rightsizing.Measured(problem=(rightsizing.USAGE_UNAVAILABLE, "Prometheus at http://p: timed out"))
    kept = rightsizing.decide(Policy(), failed, current, NOW + dt.timedelta(hours=1))
    assert kept.recommendation == current and kept.condition[:2] == ("True", rightsizing.USAGE_UNAVAILABLE)
    assert "timed out; keeping the recommendation made at 2026-12-02T10:00:00Z" in kept.condition[2]
    none = rightsizing.Measured(problem=(rightsizing.NO_USAGE_SOURCE, "no Prometheus"))
    assert rightsizing.decide(Policy(), none, None, NOW).condition == ("False", rightsizing.NO_USAGE_SOURCE,
                                                                       "no Prometheus")


# ---- InPlace: the resizes ----

RECOMMENDED = {"cpu": "1500m", "memory": "900Mi", "intraOpThreads": 2}


def pod(name: str, requests: dict, limits: dict | None = None, ready: bool = True, **extra) -> dict:
    resources = {"requests": requests, **({"limits": limits} if limits else {})}
    pod_conditions = [{"type": "Ready", "status": "True" if ready else "False"}, *extra.pop("conditions", [])]
    return {"metadata": {"name": name, "uid": f"uid-{name}", **extra},
            "spec": {"containers": [{"name": "server", "resources": resources}]},
            "status": {"conditions": pod_conditions}}


def test_requests_follow_the_recommendation_and_limits_keep_their_ratio():
    burstable = pod("a", {"cpu": "1", "memory": "1Gi"}, {"cpu": "2", "memory": "1Gi"})
    guaranteed = pod("b", {"cpu": "1", "memory": "512Mi"}, {"cpu": "1", "memory": "512Mi"})
    found = {r.pod: r for r in rightsizing.resizes(RECOMMENDED, [burstable, guaranteed], 0.15, {}, NOW.timestamp())}
    assert found["a"].resources == {"requests": {"cpu": "1500m", "memory": "900Mi"},
                                    "limits": {"cpu": "3", "memory": "900Mi"}}
    assert found["b"].resources["limits"] == found["b"].resources["requests"]  # still Guaranteed
    assert found["a"].before == "cpu 1, memory 1Gi"
    plain = rightsizing.resizes(RECOMMENDED, [pod("c", {"cpu": "1", "memory": "1Gi"})], 0.15, {}, NOW.timestamp())
    assert plain[0].resources == {"requests": {"cpu": "1500m", "memory": "900Mi"}}


def test_pods_that_must_not_be_resized_now_are_left_alone():
    off = {"cpu": "1", "memory": "1Gi"}
    pods = [
        pod("loading", off, ready=False),
        pod("leaving", off, deletionTimestamp="2026-12-02T10:00:00Z"),
        pod("mid-resize", off, conditions=[{"type": "PodResizeInProgress", "status": "True"}]),
        pod("close-enough", {"cpu": "1400m", "memory": "950Mi"}),
        pod("resized-lately", off),
        pod("due", off),
    ]
    now = NOW.timestamp()
    lately = {"uid-resized-lately": now - MIN_CHANGE_INTERVAL_SECONDS + 1}
    assert [r.pod for r in rightsizing.resizes(RECOMMENDED, pods, 0.15, lately, now)] == ["due"]


def test_the_reconcile_step_does_nothing_when_off_and_says_why_without_prometheus(make_spec, settings):
    parent = {"metadata": {"name": "fraud", "namespace": "ml", "uid": "uid-step"}, "status": {}}
    events: list[tuple[str, str, str]] = []
    assert rightsizer.run(None, parent, make_spec(), [], settings, NOW, lambda *e: events.append(e)) is None
    spec = make_spec(rightSizing={"mode": "InPlace"})
    decided = rightsizer.run(None, parent, spec, [pod("a", {"cpu": "1", "memory": "1Gi"})], settings, NOW,
                             lambda *e: events.append(e))
    assert decided is not None and decided.recommendation is None and events == []
    assert decided.condition[:2] == ("False", rightsizing.NO_USAGE_SOURCE)
