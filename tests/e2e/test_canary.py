"""End to end: canary rollouts judged from the servers' own metrics, with load through the Service the whole
time (issue 15). Real pods on the real node, the operator in its pod, a client of the headless Service
(``e2ekit.clients.Load``: round robin over the ready endpoints) that counts each answer's model_version.

One InferenceDeployment (``strategy: Canary``, one step at 50%, 5 s intervals) gets three new models in turn:
- ``batch_trap``: loads and warms up, then fails at run time on any batch of more than one row (the load
  mixes one-row and two-row requests): rolled back on its error rate within the failure limit; the
  stable side served throughout;
- ``slow_mlp``: answers right, several times slower: rolled back on the p99 ratio;
- the mlp with two layers: promoted through the step with no failed request, the canary's pods becoming
  the stable side; the answers' model_version shows both revisions served during the step and only the
  new one after. The share the canary really got during the step is printed (bench/RESULTS.md).
"""

from __future__ import annotations

import time

import pytest

from devkit.models import batch_trap, make_mlp, slow_mlp
from e2e.test_serving import apply, condition, infd
from e2ekit.clients import Load, get_json, write_secret

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

NAME = "canary"
ROLLOUT = {"strategy": "Canary", "steps": [{"weight": 50, "pauseSeconds": 10}],
           "analysis": {"intervalSeconds": 5, "minRequests": 10, "maxErrorRate": 0.01, "maxLatencyRatio": 2.0,
                        "failureLimit": 2}}


def rollout(cluster, namespace: str) -> dict:
    return get_json(cluster, "infd", NAME, "-n", namespace).get("status", {}).get("rollout", {})


def new_model(cluster, namespace: str, uri: str) -> None:
    cluster.kubectl("patch", "infd", NAME, "-n", namespace, "--type=merge",
                    "-p", f'{{"spec": {{"model": {{"uri": "{uri}"}}}}}}')


def wait_phase(cluster, namespace: str, phases: tuple[str, ...], timeout: float = 150) -> dict:
    seen: list[dict] = [{}]

    def reached():
        seen[0] = rollout(cluster, namespace)
        return seen[0].get("phase") in phases and seen[0]

    try:
        return cluster.wait_for(f"status.rollout.phase in {phases}", reached, timeout=timeout)
    except AssertionError as timed_out:  # what the rollout said last comes first, before the components' logs
        raise AssertionError(f"status.rollout was {seen[0]}\n{timed_out}") from None


def failures_since(load: Load, since: float) -> list:
    return [f for f in load.failures if f[0] >= since]


def test_canaries_are_judged_under_load(cluster, stack, installed, tmp_path):
    ns = installed.apps
    store = stack.store_dir
    batch_trap(store / "trap.onnx")
    slow_mlp(store / "slow.onnx", iterations=8000)  # ~150 ms a row: well past the stable p99 on a loaded node
    make_mlp(store / "mlp-2.onnx", layers=2)
    apply(cluster, infd(NAME, ns, stack.store.url("mlp.onnx"), replicas=2, rollout=ROLLOUT,
                        tls={"mode": "Mutual", "clients": [{"name": "load"}]}))
    try:
        cluster.wait_for("InferenceDeployment Ready", lambda: condition(cluster, ns, NAME).get("status") == "True",
                         timeout=180)
        first = wait_phase(cluster, ns, ("Stable",))["stableRevision"]
        certs = write_secret(cluster, ns, f"{NAME}-client-load", tmp_path / "load")
        # Mostly one-row requests, and some of two rows (what breaks the trap: a lone one-row request may
        # run on its own, in a batch of one).
        load = Load(cluster, ns, NAME, certs, workers=3, rows=1).start()
        pairs = Load(cluster, ns, NAME, certs, workers=1, rows=2).start()
        try:
            _rolled_back_on_errors(cluster, ns, stack, pairs, first)
            _rolled_back_on_latency(cluster, ns, stack, load, first)
            _promoted(cluster, ns, stack, load, pairs, first)
        finally:
            load.stop()
            pairs.stop()
    finally:  # the node is shared by the whole e2e session
        cluster.kubectl("delete", "infd", NAME, "-n", ns, "--wait=true", "--timeout=60s", check=False, timeout=90)


def _rolled_back_on_errors(cluster, ns, stack, pairs: Load, stable: str) -> None:
    new_model(cluster, ns, stack.store.url("trap.onnx"))
    trap = wait_phase(cluster, ns, ("Progressing",))["canaryRevision"]
    done = wait_phase(cluster, ns, ("RolledBack",))
    assert done["canaryRevision"] == trap and done["stableRevision"] == stable
    assert "error rate" in done["message"], done
    assert done["lastAnalysis"]["verdict"] == "Fail" and done["lastAnalysis"]["errorRate"] > 0.01
    cluster.wait_for("the canary's pods gone", lambda: not _pods(cluster, ns, trap), timeout=90)
    since = time.time()
    time.sleep(3)
    assert not failures_since(pairs, since), "the stable side serves everything again"
    print(f"\ncanary rollback on errors: {done['message']}")


def _rolled_back_on_latency(cluster, ns, stack, load: Load, stable: str) -> None:
    before = sum(1 for f in load.failures)
    new_model(cluster, ns, stack.store.url("slow.onnx"))
    slow = wait_phase(cluster, ns, ("Progressing",))["canaryRevision"]
    done = wait_phase(cluster, ns, ("RolledBack",))
    assert done["canaryRevision"] == slow and "p99" in done["message"], done
    figures = done["lastAnalysis"]
    assert figures["p99Ms"] > 2 * figures["stableP99Ms"], figures
    assert len(load.failures) == before, "a slow canary answers; no request failed"
    print(f"canary rollback on latency: {done['message']}")


def _promoted(cluster, ns, stack, load: Load, pairs: Load, stable: str) -> None:
    failed_before, seen_before, pairs_failed = len(load.failures), dict(load.versions), len(pairs.failures)
    new_model(cluster, ns, stack.store.url("mlp-2.onnx"))
    good = wait_phase(cluster, ns, ("Progressing",))["canaryRevision"]
    at_step = cluster.wait_for("answers from both revisions during the step", lambda: (
        v := _since(load, seen_before)).get(good, 0) >= 20 and v.get(stable, 0) >= 20 and v)
    done = wait_phase(cluster, ns, ("Promoted",), timeout=180)
    assert done["stableRevision"] == good and done["history"][-1]["outcome"] == "Promoted"
    assert len(load.failures) == failed_before, load.failures[failed_before:][:5]
    assert len(pairs.failures) == pairs_failed, pairs.failures[pairs_failed:][:5]
    cluster.wait_for("the old revision's pods gone", lambda: not _pods(cluster, ns, stable), timeout=120)
    seen = dict(load.versions)
    time.sleep(3)
    after = {v: n - seen.get(v, 0) for v, n in load.versions.items() if n - seen.get(v, 0)}
    assert set(after) == {good}, after
    share = at_step[good] / (at_step[good] + at_step[stable])
    print(f"canary promoted: {done['history'][-1]}; at the 50% step the canary answered {share:.0%} "
          f"({at_step[good]} of {at_step[good] + at_step[stable]})")


def _since(load: Load, before: dict) -> dict:
    return {v: n - before.get(v, 0) for v, n in load.versions.items()}


def _pods(cluster, ns: str, revision: str) -> list:
    return get_json(cluster, "pods", "-n", ns, "-l", f"kubeinfer.io/revision={revision}")["items"]
